"""The web service over HTTP: overhead against `pixmill run`, warm latency, per-job mpiexec, W2, idle CPU.

- overhead: POST the W1 images (blur) until every result is recorded, against `pixmill run` on the
  same images and workers (target <= 1.10), in interleaved rounds;
- W2: the dev corpus (tests/data/real), a different original operation per file, through HTTP,
  against a loop of process() in one process;
- warm latency: one small job (W3, a 512×512 JPEG, blur) from submit until its result is fetched,
  back to back and after idle spells (targets p50 <= 25 ms, p99 <= 100 ms), and the same through
  a server that starts mpiexec for every job, as the original application did; beside it, the same
  image's process() alone in this process, back to back and after the same pause, which shows what
  a pause costs this machine's caches apart from anything pixmill does;
- idle: CPU of the web process, its dispatcher and workers over 10 s, as a share of one core.
"""

from __future__ import annotations

import collections
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    LeanClient,
    Server,
    cpu_seconds,
    environment,
    family,
    free_port,
    one_image_job,
    opencv_threads,
    per_image_ms,
    photo_like,
    roles,
    timed,
    wait_for,
    with_cpu,
)
from pixmill.config import load_settings  # noqa: E402
from pixmill.errors import PixmillError  # noqa: E402
from pixmill.imaging.pipeline import parse_pipeline  # noqa: E402
from pixmill.imaging.process import Output, process  # noqa: E402
from pixmill.worker.backoff import Backoff  # noqa: E402
from pixmill.worker.batch import run_batch  # noqa: E402
from pixmill.worker.engine import make_executor  # noqa: E402

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "real"
ORIGINAL_OPS = ["edge_detection", "color_inversion", "grayscale", "blur", "threshold", "resize"]


def submit(server: Server, files: list[tuple[str, bytes]], pipeline: str | None = None,
           operations: list[str] | None = None) -> str:
    """POST one job; return its id."""
    data = {"pipeline": pipeline} if pipeline else {"operations": operations}
    answer = server.post("/api/v1/jobs", files=[("files", f) for f in files], data=data)
    if answer.status_code != 202:
        raise RuntimeError(f"POST /api/v1/jobs answered {answer.status_code}: {answer.text[:300]}")
    return answer.json()["id"]


def through_service(server: Server, files: list[tuple[str, bytes]], *, allow_failed: int = 0, **kw) -> float:
    """Seconds from the POST until every task of the job has ended (at most allow_failed may fail); the job
    is deleted afterwards."""
    seconds, job_id = run_job(server, files, allow_failed=allow_failed, **kw)
    delete_job(server, job_id)
    return seconds


def run_job(server: Server, files: list[tuple[str, bytes]], *, allow_failed: int = 0, **kw) -> tuple[float, str]:
    """POST one job and wait until every task has ended; (seconds, the job's id). RuntimeError if more than
    allow_failed tasks did not succeed."""
    start = time.perf_counter()
    job = server.wait_job(submit(server, files, **kw))
    seconds = time.perf_counter() - start
    failed = [t for t in job["tasks"] if t["state"] != "done"]
    if len(failed) > allow_failed:
        raise RuntimeError(f"{len(failed)} tasks did not succeed, e.g. {failed[0]['error']}")
    return seconds, job["id"]


def delete_job(server: Server, job_id: str) -> None:
    """Delete a job and its images."""
    server.http.delete(server.url + f"api/v1/jobs/{job_id}", timeout=60)


def overhead(server: Server, paths: list[Path], tmp: Path, workers: int, rounds: int = 3) -> dict:
    """Service vs `pixmill run` (whole command and on a started pool), same images and workers."""
    files = [(p.name, p.read_bytes()) for p in paths]
    pipeline = parse_pipeline("blur")
    pool = make_executor("mpi", workers, backoff=Backoff.from_settings(load_settings()))
    best: dict[str, float] = {}
    spent: dict[str, collections.Counter] = {"service": collections.Counter(), "pool": collections.Counter()}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, seconds), seconds)

    def service() -> float:
        (seconds, job_id), used = with_cpu(service_roles, lambda: run_job(server, files, pipeline="blur"))
        spent["service"].update(used)
        delete_job(server, job_id)  # after the count: deleting is not part of the figure
        return seconds

    def on_pool(out: Path) -> float:
        seconds, used = with_cpu(pool_workers, lambda: timed(lambda: run_batch(
            paths, pipeline, Output(), out, pool, workers=workers, max_pixels=100_000_000, max_file_bytes=50 << 20)))
        spent["pool"].update(used)
        return seconds
    try:
        list(pool.map(abs, range(workers * 4)))
        through_service(server, files[:workers * 2], pipeline="blur")  # warm the service's workers
        service_roles = roles(server.proc.pid)
        served = {proc.pid for proc in family(server.proc.pid)}
        # this process runs the pool (its "client" CPU): its workers are those of its descendants not served
        pool_workers = {"workers": [proc for proc in roles(os.getpid())["workers"] if proc.pid not in served]}
        for i in range(rounds):
            keep("service", service())
            keep("pool", on_pool(tmp / f"pool{i}"))
            cmd = [sys.executable, "-m", "pixmill", "run", str(paths[0].parent), "-p", "blur",
                   "-o", str(tmp / f"cli{i}"), "-w", str(workers)]
            keep("cli", timed(lambda: subprocess.run(cmd, check=True, capture_output=True, timeout=600,  # noqa: B023 (run in this iteration)
                                                     env=environment())))
    finally:
        pool.shutdown()
    n = len(paths)
    return {"images": n, "workers": workers, "rounds": rounds, "service_seconds": best["service"],
            "pool_seconds": best["pool"], "cli_seconds": best["cli"],
            "service_images_per_s": n / best["service"],
            "ratio_vs_cli": best["service"] / best["cli"], "ratio_vs_started_pool": best["service"] / best["pool"],
            # CPU milliseconds per image by process, averaged over the rounds ("client": this process,
            # which on the started pool is the pool's own: its manager thread and run_batch)
            "cpu_ms_per_image": {name: per_image_ms(used, rounds * n) for name, used in spent.items()}}


def corpus_w2(server: Server, rounds: int = 3) -> dict:
    """W2: the dev corpus with mixed operations, through HTTP vs a loop of process() in this process.

    Files that pixmill refuses by design (a TIFF layout it cannot read) are left out: the web
    refuses them at the upload, before any work."""
    paths = sorted(p for p in CORPUS.iterdir() if p.is_file())
    files, ops, refused = [], [], []
    for i, path in enumerate(paths):
        op, data = ORIGINAL_OPS[i % len(ORIGINAL_OPS)], path.read_bytes()
        try:
            process(data, parse_pipeline(op), Output())
        except PixmillError:
            refused.append(path.name)
            continue
        files.append((path.name, data))
        ops.append(op)
    pipelines = [parse_pipeline(op) for op in ops]

    def loop() -> None:
        for (_, data), pipeline in zip(files, pipelines):
            process(data, pipeline, Output())
    best_loop = best_service = float("inf")
    for _ in range(rounds):
        best_loop = min(best_loop, timed(loop))
        best_service = min(best_service, through_service(server, files, operations=ops))
    n = len(files)
    return {"images": n, "refused": refused, "loop_images_per_s": n / best_loop,
            "service_images_per_s": n / best_service, "speedup": best_loop / best_service}


def percentiles(samples: list[float]) -> dict:
    """p50, p99 and max of samples (seconds), in milliseconds."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=100, method="inclusive")
    return {"n": len(s), "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "max_ms": 1000 * s[-1]}


def one_job(client: LeanClient, image: bytes) -> float:
    """Seconds from submitting one small job until its result has been fetched."""
    start = time.perf_counter()
    one_image_job(client, "w3.jpg", image, "blur", timeout=60)
    return time.perf_counter() - start


def warm_latency(server: Server, image: bytes, jobs: int = 200, spaced: int = 20, gap: float = 1.0,
                 long_gap: float = 4.0, long_spaced: int = 8) -> dict:
    """Latency of one small job: back to back, each after `gap` seconds of idleness, and each after
    `long_gap` seconds (past the pool's warm spell, Settings.warm_seconds, when its back-off is at the caps)."""
    client = LeanClient(server.url)
    for _ in range(10):
        one_job(client, image)
    back = [one_job(client, image) for _ in range(jobs)]
    spells = {}
    for name, pause, count in (("after_idle", gap, spaced), ("after_long_idle", long_gap, long_spaced)):
        samples = []
        for _ in range(count):
            time.sleep(pause)
            samples.append(one_job(client, image))
        spells[name] = {**percentiles(samples), "idle_seconds": pause}
    return {"back_to_back": percentiles(back), **spells, "work_alone": work_alone(image, gap)}


def work_alone(image: bytes, gap: float, jobs: int = 40, spaced: int = 20) -> dict:
    """W3's process() in this process with one OpenCV thread (a worker's), back to back and each after
    `gap` seconds of sleep: p50 ms of each, and the difference, which no back-off or hand-off is part of."""
    pipeline = parse_pipeline("blur")

    def once() -> float:
        start = time.perf_counter()
        process(image, pipeline)
        return time.perf_counter() - start
    with opencv_threads(1):
        for _ in range(10):
            once()
        back = percentiles([once() for _ in range(jobs)])["p50_ms"]
        after = []
        for _ in range(spaced):
            time.sleep(gap)
            after.append(once())
    idle = percentiles(after)["p50_ms"]
    return {"back_to_back_p50_ms": back, "after_idle_p50_ms": idle, "idle_seconds": gap, "penalty_ms": idle - back}


PER_JOB_TASK = Path(__file__).with_name("perjob_task.py")


class _PerJobHandler(http.server.BaseHTTPRequestHandler):
    """The original design: each upload starts `mpiexec -n W python perjob_task.py` and waits for it."""

    workers = 2

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "in.jpg", Path(tmp) / "out.jpg"
            source.write_bytes(body)
            subprocess.run(["mpiexec", "-n", str(self.workers), sys.executable, str(PER_JOB_TASK), str(source),
                            str(target), "blur"], check=True, capture_output=True, timeout=120, env=environment())
            result = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(result)))
        self.end_headers()
        self.wfile.write(result)

    def log_message(self, *args) -> None:
        pass


def per_job_mpiexec(image: bytes, workers: int, jobs: int = 20) -> dict:
    """Latency of one small job through a server that starts mpiexec for each job."""
    import requests

    handler = type("Handler", (_PerJobHandler,), {"workers": workers})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        samples = []
        for i in range(jobs + 2):
            start = time.perf_counter()
            answer = requests.post(url, data=image, timeout=120)
            answer.raise_for_status()
            if i >= 2:
                samples.append(time.perf_counter() - start)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    return percentiles(samples)


def idle_cpu(server: Server, seconds: float = 10.0, settle: float = 5.0) -> dict:
    """CPU used by the whole idle service (web, dispatcher, workers) over `seconds`, as % of one core."""
    time.sleep(settle)
    procs = family(server.proc.pid)
    before, start = cpu_seconds(procs), time.perf_counter()
    time.sleep(seconds)
    used, wall = cpu_seconds(procs) - before, time.perf_counter() - start
    return {"seconds": wall, "processes": len(procs), "cpu_seconds": used, "percent_of_one_core": 100 * used / wall}


def w3_image() -> bytes:
    """W3: one photo-like 512×512 JPEG."""
    ok, data = cv2.imencode(".jpg", photo_like(512, 512, 7), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return data.tobytes()


__all__ = ["overhead", "corpus_w2", "warm_latency", "work_alone", "per_job_mpiexec", "idle_cpu", "w3_image", "submit",
           "through_service", "run_job", "delete_job", "wait_for"]
