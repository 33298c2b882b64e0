"""Durable jobs against `pixmill run`: 200 tasks through the store and `pixmill worker`, same images and workers.

Prints throughput ratios measured in this run (target >= 0.95): the wall time of the whole
`pixmill run` command on a folder of the images, divided by the time the job system takes:
- running worker, from queued: `pixmill worker` is up; from the job's creation in the store (its
  inputs already stored as blobs) until every task is recorded done, results stored as blobs;
- running worker, from submit: the same, plus writing the 200 inputs into the store first;
- cold worker: the job is queued, then `pixmill worker` starts (its interpreter, its dispatcher's
  interpreter and the MPI pool start-up included) until every task is done;
- processing alone: `pixmill run`'s own timing vs the store's first task start to last finish.
Usage: python benchmarks/bench_jobs.py [--images 200] [--workers 2] [--engine mpi] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_photos  # noqa: E402
from pixmill.config import Settings  # noqa: E402
from pixmill.imaging.pipeline import parse_pipeline  # noqa: E402
from pixmill.imaging.process import Output  # noqa: E402
from pixmill.store import NewTask, Store  # noqa: E402

PIPELINE = "blur"


def environment() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # mpiexec of the mpich wheel
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def time_run(folder: Path, out: Path, engine: str, workers: int) -> tuple[float, float]:
    """Wall time of the whole `pixmill run` command, and the processing time it reports."""
    cmd = [sys.executable, "-m", "pixmill", "run", str(folder), "-p", PIPELINE, "-o", str(out),
           "--engine", engine, "-w", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, env=environment())
    wall = time.perf_counter() - start
    reported = re.search(r"processed in ([0-9.]+) s", done.stdout)
    return wall, float(reported.group(1)) if reported else wall


def queue_job(store: Store, paths: list[Path]) -> str:
    """Submit one job of the images to the store, as `pixmill submit` does; return its id."""
    pipeline = parse_pipeline(PIPELINE)
    tasks = [NewTask(p.name, pipeline, store.put_blob(p.read_bytes()), "jpeg") for p in paths]
    return store.create_job(tasks, Output()).id


def wait_done(store: Store, job_id: str, worker: subprocess.Popen, start: float) -> float:
    """Seconds from start until every task of the job has ended."""
    while store.get_job(job_id).state != "done":
        if time.perf_counter() - start > 900 or worker.poll() is not None:
            raise RuntimeError("the worker did not finish the job")
        time.sleep(0.02)
    return time.perf_counter() - start


def processing_seconds(store: Store, job_id: str) -> float:
    """From the first task's start to the last one's end, as the store recorded them."""
    job = store.get_job(job_id)
    failed = [t for t in job.tasks if t.error]
    if failed:
        raise RuntimeError(f"{len(failed)} tasks failed, e.g. {failed[0].error}")
    return max(t.finished_at for t in job.tasks) - min(t.started_at for t in job.tasks)


def time_worker(paths: list[Path], data_dir: Path, engine: str, workers: int) -> tuple[float, ...]:
    """Cold: queue a job, start `pixmill worker`, time until done. Warm: with the worker running, time
    submitting another job until it is done. Returns seconds: cold, warm, warm after the submit, processing."""
    settings = Settings(data_dir=data_dir, engine=engine, workers=workers)
    with Store.open(settings) as store:
        cold_job = queue_job(store, paths)
        cmd = [sys.executable, "-m", "pixmill", "worker", "--data-dir", str(data_dir),
               "--engine", engine, "-w", str(workers)]
        start = time.perf_counter()
        worker = subprocess.Popen(cmd, env=environment(), start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cold = wait_done(store, cold_job, worker, start)
            start = time.perf_counter()
            warm_job = queue_job(store, paths)
            queued = time.perf_counter()
            warm = wait_done(store, warm_job, worker, start)
            after_submit = time.perf_counter() - queued
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        processing_seconds(store, cold_job)
        return cold, warm, after_submit, processing_seconds(store, warm_job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine", default="mpi", choices=["mpi", "local"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="1280x720", help="image size, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        paths = write_photos(folder, args.images, width, height)
        n = len(paths)
        print(f"machine: {os.cpu_count()} cores; {n} photo-like {width}x{height} JPEGs, '{PIPELINE}', "
              f"{args.workers} {args.engine} workers; best of {args.repeat}, runs interleaved")
        runs, jobs = [], []
        for i in range(args.repeat):  # interleaved, so a busy spell on the shared machine hits both
            runs.append(time_run(folder, Path(tmp) / f"out{i}", args.engine, args.workers))
            jobs.append(time_worker(paths, Path(tmp) / f"data{i}", args.engine, args.workers))
        run_wall, run_busy = min(r[0] for r in runs), min(r[1] for r in runs)
        cold, warm, queued, busy = (min(j[k] for j in jobs) for k in range(4))
        print(f"pixmill run:                  {run_wall:6.2f} s ({n / run_wall:5.1f} images/s) end to end; "
              f"its own timing {run_busy:6.2f} s")
        print(f"worker running, from submit:  {warm:6.2f} s ({n / warm:5.1f} images/s) "
              f"(of which {warm - queued:.2f} s storing the inputs)")
        print(f"worker running, from queued:  {queued:6.2f} s ({n / queued:5.1f} images/s); "
              f"first start to last finish {busy:6.2f} s")
        print(f"worker started after submit:  {cold:6.2f} s ({n / cold:5.1f} images/s) until all done")
        print(f"throughput ratio worker/run (target >= 0.95): running worker {run_wall / queued:.2f} from queued, "
              f"{run_wall / warm:.2f} from submit; cold worker {run_wall / cold:.2f}; "
              f"processing alone {run_busy / busy:.2f}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
