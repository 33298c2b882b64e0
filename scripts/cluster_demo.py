"""`make cluster-demo`: pixmill as a cluster, on this machine. PostgreSQL (Debian's, in a throwaway
cluster), an S3 endpoint (moto's server), two web replicas and two dispatcher nodes, each process with a
data dir of its own; one job goes in through the first replica and comes out through the second.

The parts are started by the same code as the tests' (tests/support), so what this shows is tested.
Ctrl-C stops everything; --once stops after the job (the test runs it that way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402

from support.cluster import running_cluster  # noqa: E402
from support.postgres import running_postgres  # noqa: E402
from support.s3 import running_s3  # noqa: E402

SAMPLES = ROOT / "src" / "pixmill" / "samples"
PIPELINE = "grayscale | blur(ksize=7)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the sample job")
    parser.add_argument("--out", type=Path, default=Path("cluster-demo-out"), help="where the results go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pixmill-cluster-") as scratch, running_postgres() as postgres, \
            running_s3(Path(scratch)) as s3:
        url = postgres.create_database("pixmill")
        bucket = s3.create_bucket("pixmill")
        env = {**s3.environment(), "PIXMILL_DATABASE_URL": url, "PIXMILL_BLOB_URL": f"s3://{bucket}/images"}
        print(f"PostgreSQL at {url}\nS3 endpoint at {s3.endpoint_url}, bucket {bucket}", flush=True)
        with running_cluster(Path(scratch), env, engine="mpi") as cluster:
            a, b = cluster.replicas
            print(f"replicas: {a.url} and {b.url} (put a load balancer in front of them)")
            for node in cluster.live_nodes():
                print(f"node {node['id']}: {node['workers']} {node['engine']} workers")
            files = [("files", (p.name, p.read_bytes())) for p in sorted(SAMPLES.iterdir()) if p.suffix != ".md"]
            job = a.post("/api/v1/jobs", files=files, data={"pipeline": PIPELINE}).json()
            print(f"job {job['id']}: {len(files)} images submitted through {a.url}")
            while (done := b.get(f"/api/v1/jobs/{job['id']}", headers={"Prefer": "wait=10"}).json())["state"] \
                    not in ("done", "cancelled"):
                pass
            args.out.mkdir(parents=True, exist_ok=True)
            for task in done["tasks"]:
                answer = requests.get(task["result_url"].replace(a.url, b.url), timeout=30)
                target = args.out / f"{task['n']:03d}-{Path(task['name']).stem}.{task['result_format']}"
                target.write_bytes(answer.content)
                print(f"  {task['name']}: {task['state']} → {target} (fetched through {b.url})")
            print(f"job {job['id']} {done['state']}: {done['counts']}")
            if done["counts"]["done"] != len(files):
                return 1
            if not args.once:
                print("the cluster keeps running; Ctrl-C stops it", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
