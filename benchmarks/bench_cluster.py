"""Tiny images through the service on both store backends, and throughput against dispatcher nodes.

The control-plane figure of issue 13: 1,000 64×64 PNGs (`flip`) in 20 jobs of 50 from 4 clients through
`POST /api/v1/jobs`, each job waited for with `Prefer: wait`; tasks/s end to end ÷ (`process()` alone in
one process × cores). Measured in this one run, on:
- SQLite + the blob folder: `pixmill serve` with its MPI workers (the default);
- PostgreSQL + S3 (Debian's PostgreSQL and moto's S3 server, started here as the tests start them):
  the same `pixmill serve`, then one web replica with 1 and with 2 `pixmill worker` nodes.
Beside each: the CPU per task of every process (web, dispatcher, workers, PostgreSQL, S3, clients).
Usage: python benchmarks/bench_cluster.py [--tasks 1000] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from common import LeanClient, cpu_seconds, family, machine, roles, self_cpu_seconds  # noqa: E402
from pixmill.imaging.pipeline import parse_pipeline  # noqa: E402
from pixmill.imaging.process import process  # noqa: E402
from support.cluster import running_cluster  # noqa: E402
from support.postgres import running_postgres  # noqa: E402
from support.s3 import running_s3  # noqa: E402
from support.servers import running_server  # noqa: E402

PIPELINE = "flip"
JOB = 50
CLIENTS = 4


def tiny_pngs(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def process_alone(images: list[bytes], seconds: float = 3.0) -> float:
    """Tasks per second of process() in this one process, back to back."""
    pipeline = parse_pipeline(PIPELINE)
    for data in images[:50]:
        process(data, pipeline)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        process(images[done % len(images)], pipeline)
        done += 1
    return done / (time.perf_counter() - start)


def through_api(url: str, images: list[bytes]) -> float:
    """Seconds for every image to be done, in jobs of JOB from CLIENTS threads, each job long-polled."""
    client = LeanClient(url)
    jobs = [images[i:i + JOB] for i in range(0, len(images), JOB)]
    lock, errors = threading.Lock(), []

    def work() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                files = jobs.pop()
            try:
                status, body = client.post_form("/api/v1/jobs", {"pipeline": PIPELINE},
                                                [("files", f"t{i}.png", d) for i, d in enumerate(files)])
                if status != 202:
                    raise RuntimeError(f"POST answered {status}: {body[:200]!r}")
                job = client.wait_job(json.loads(body)["id"], timeout=600)
                if job["counts"]["done"] != len(files):
                    raise RuntimeError(f"job ended with {job['counts']}")
            except Exception as exc:  # reported after the run
                errors.append(exc)
                return
    threads = [threading.Thread(target=work) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def groups_of(replicas: list[int], nodes: list[int], extra: dict[str, list[int]]) -> dict[str, list[psutil.Process]]:
    """Every process by role: web, dispatcher (a node's supervisor included), workers, other, and extras."""
    out: dict[str, list[psutil.Process]] = {"web": [], "dispatcher": [], "workers": [], "other": []}
    for pid in replicas:
        for role, procs in roles(pid).items():
            out[role] += procs
    for pid in nodes:
        for role, procs in roles(pid).items():
            out["dispatcher" if role == "web" else role] += procs
    for name, pids in extra.items():
        out[name] = [p for pid in pids for p in family(pid)]
    return out


def measure(url: str, images: list[bytes], groups: dict[str, list[psutil.Process]], ceiling: float) -> dict:
    through_api(url, images[:100])                               # warm: pools started, connections open
    before = {k: cpu_seconds(v) for k, v in groups.items()} | {"clients": self_cpu_seconds()}
    seconds = through_api(url, images)
    after = {k: cpu_seconds(v) for k, v in groups.items()} | {"clients": self_cpu_seconds()}
    rate = len(images) / seconds
    cpu = {k: round(1000 * (after[k] - before[k]) / len(images), 3) for k in after}
    return {"tasks_per_s": round(rate, 1), "ratio": round(rate / ceiling, 3), "cpu_ms_per_task": cpu}


def postmaster(server) -> list[int]:
    pid = server.postmaster_pid()
    return [pid] if pid else []


def run(tasks: int = 1000, workers: int = 2) -> dict:
    """Every figure of this module, printed as it comes; the results as a dict."""
    images = tiny_pngs(tasks)
    cores = os.cpu_count() or 1
    alone = process_alone(images)
    ceiling = alone * cores
    results: dict = {"process_alone_per_s": round(alone, 1), "cores": cores, "ceiling_per_s": round(ceiling, 1)}
    print(f"process() alone: {alone:.0f} tasks/s in one process; ceiling {ceiling:.0f} tasks/s on {cores} cores")
    with tempfile.TemporaryDirectory(prefix="pixmill-bench-cluster-") as scratch:
        root = Path(scratch)
        with running_server(root / "sqlite", engine="mpi", workers=workers) as server:
            results["sqlite"] = measure(server.url, images, groups_of([server.proc.pid], [], {}), ceiling)
        show("SQLite + folder, pixmill serve", results["sqlite"])
        with running_postgres() as pg, running_s3(root) as s3:
            def env(name: str) -> dict[str, str]:
                bucket = s3.create_bucket(name.replace("_", "-"))
                return {**s3.environment(), "PIXMILL_DATABASE_URL": pg.create_database(name),
                        "PIXMILL_BLOB_URL": f"s3://{bucket}/px"}
            extra = {"postgres": postmaster(pg), "s3": [s3.proc.pid]}
            with running_server(root / "pg", engine="mpi", workers=workers, env=env("serve")) as server:
                results["postgres"] = measure(server.url, images, groups_of([server.proc.pid], [], extra), ceiling)
            show("PostgreSQL + S3, pixmill serve", results["postgres"])
            for nodes in (1, 2):
                name = f"nodes{nodes}"
                with running_cluster(root / name, env(name), replicas=1, nodes=nodes, workers=1,
                                     engine="mpi") as cluster:
                    groups = groups_of([cluster.replicas[0].proc.pid], [n.proc.pid for n in cluster.nodes], extra)
                    results[name] = measure(cluster.replicas[0].url, images, groups, ceiling)
                show(f"PostgreSQL + S3, 1 replica, {nodes} node(s) of 1 MPI worker", results[name])
    scaling = results["nodes2"]["tasks_per_s"] / results["nodes1"]["tasks_per_s"]
    results["nodes_2_vs_1"] = round(scaling, 2)
    print(f"2 nodes vs 1: {scaling:.2f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()), flush=True)
    results = run(args.tasks, args.workers)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), **results}, indent=2))


def show(title: str, r: dict) -> None:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_task"].items() if v)
    print(f"{title}: {r['tasks_per_s']:.0f} tasks/s, {r['ratio']:.3f} of the ceiling; CPU ms per task: {cpu}",
          flush=True)


if __name__ == "__main__":
    main()
