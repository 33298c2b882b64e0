"""W1: `pixmill run` against a plain single-process OpenCV loop, on photo-like 1920×1080 JPEGs, blur.

Parallel efficiency at W workers = pixmill's throughput ÷ (W × the loop's throughput), with W = 1
up to the number of cores (target >= 0.9 at W = cores).  The loop runs the same OpenCV calls
(imread, GaussianBlur, imwrite) one image after another, with 1 OpenCV thread (one core: the
usual baseline of parallel efficiency) and with OpenCV's default threads.  Two figures per W:
- steady: the batch on a started pool (what `pixmill run` reports as images/s);
- end-to-end: the whole `pixmill run` command, interpreter and pool start-up included.
Usage: python benchmarks/bench_run.py [--images 40] [--engine mpi|local] [--rounds 5]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, opencv_threads, timed, write_photos  # noqa: E402
from pixmill.config import load_settings  # noqa: E402
from pixmill.imaging.pipeline import parse_pipeline  # noqa: E402
from pixmill.imaging.process import Output  # noqa: E402
from pixmill.worker.backoff import Backoff  # noqa: E402
from pixmill.worker.batch import run_batch  # noqa: E402
from pixmill.worker.engine import make_executor  # noqa: E402


def baseline(paths: list[Path], out: Path) -> None:
    """The plain loop: the same OpenCV calls, one image after another in this process."""
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        cv2.imwrite(str(out / path.name), cv2.GaussianBlur(image, (5, 5), 0), [cv2.IMWRITE_JPEG_QUALITY, 90])


def _loop_in_child(paths: list[Path], out: Path, barrier) -> float:
    cv2.setNumThreads(1)
    barrier.wait()
    return timed(lambda: baseline(paths, out))


def concurrent_loops(paths: list[Path], tmp: Path, copies: int, *, split: bool = False) -> float:
    """Seconds for `copies` one-thread loops in as many processes, all at once: the machine's ceiling.
    Each loop goes over every path, or (split) over its share of them."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(copies, mp_context=ctx) as pool:
        barrier = manager.Barrier(copies)
        list(pool.map(abs, range(copies)))  # the processes are up
        futures = [pool.submit(_loop_in_child, paths[i::copies] if split else paths, tmp / f"par{i}", barrier)
                   for i in range(copies)]
        return max(f.result(timeout=600) for f in futures)


def _command_cpu(cmd: list[str]) -> tuple[float, dict[str, float]]:
    """Run cmd; its wall seconds, and the CPU seconds of the command's own process and of its MPI workers
    (sampled every 20 ms while it runs, so the last moments of each process are missed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment())
    seen: dict[int, tuple[str, float]] = {}
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            for p in [root, *root.children(recursive=True)]:
                role = ("command" if p.pid == proc.pid else
                        "workers" if "mpi4py.futures.server" in " ".join(p.cmdline()) else "mpiexec")
                seen[p.pid] = (role, sum(p.cpu_times()[:2]))
        except psutil.Error:
            pass
        time.sleep(0.02)
    _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {err.decode()[-2000:]}")
    cpu: dict[str, float] = collections.Counter()
    for role, used in seen.values():
        cpu[role] += used
    return seconds, dict(cpu)


def whole_command(paths: list[Path], tmp: Path, workers: int, *, rounds: int = 3) -> dict:
    """The whole `pixmill run` command (interpreter, MPI spawn and all) over paths on `workers` MPI workers,
    against `workers` one-thread loops at once, each over its share: best of interleaved rounds."""
    cmd = [sys.executable, "-m", "pixmill", "run", str(paths[0].parent), "-p", "blur", "-o", str(tmp / "whole"),
           "--engine", "mpi", "-w", str(workers)]
    best = {"command": float("inf"), "ceiling": float("inf")}
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        best["ceiling"] = min(best["ceiling"], concurrent_loops(paths, tmp, workers, split=True))
        seconds, used = _command_cpu(cmd)
        if seconds < best["command"]:
            best["command"], cpu = seconds, used
    n = len(paths)
    return {"images": n, "workers": workers, "rounds": rounds, "command_seconds": best["command"],
            "ceiling_seconds": best["ceiling"], "ratio": best["ceiling"] / best["command"],
            "cpu_ms_per_image": {k: 1000 * v / n for k, v in cpu.items()}}


def measure(paths: list[Path], tmp: Path, counts: list[int], *, rounds: int = 5, engine: str = "mpi",
            cli: bool = True) -> dict:
    """Best seconds of each variant over interleaved rounds, and throughputs and efficiencies from them."""
    pipeline = parse_pipeline("blur")
    folder = paths[0].parent
    backoff = Backoff.from_settings(load_settings())  # PIXMILL_*_BACKOFF tune the pools as they tune the service
    pools = {w: make_executor(engine, w, backoff=backoff) for w in counts}
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, seconds), seconds)

    try:
        for w, pool in pools.items():
            list(pool.map(abs, range(w * 4)))  # every worker is up and has answered
        # Rounds interleave the baseline and every variant, so a slow phase of the shared
        # machine hits them alike; the best of each is kept.
        for _ in range(rounds):
            keep("loop", timed(lambda: baseline(paths, tmp / "base")))
            with opencv_threads(1):
                keep("loop1", timed(lambda: baseline(paths, tmp / "base1")))
            for w in counts[1:]:
                keep(f"loops{w}", concurrent_loops(paths, tmp, w))
            for w, pool in pools.items():
                keep(f"steady{w}", timed(lambda: run_batch(
                    paths, pipeline, Output(), tmp / f"s{w}", pool, workers=w,  # noqa: B023 (run in this iteration)
                    max_pixels=100_000_000, max_file_bytes=50 << 20)))
                if cli:
                    cmd = [sys.executable, "-m", "pixmill", "run", str(folder), "-p", "blur",
                           "-o", str(tmp / f"c{w}"), "--engine", engine, "-w", str(w)]
                    keep(f"cli{w}", timed(lambda: subprocess.run(cmd, check=True, capture_output=True,  # noqa: B023 (run in this iteration)
                                                                 timeout=600, env=environment())))
    finally:
        for pool in pools.values():
            pool.shutdown()
    n = len(paths)
    out = {"images": n, "rounds": rounds, "engine": engine, "opencv_default_threads": cv2.getNumThreads(),
           "loop_images_per_s": n / best["loop"], "loop1_images_per_s": n / best["loop1"], "workers": {}}
    for w in counts:
        steady = n / best[f"steady{w}"]
        row = {"images_per_s": steady,
               "efficiency_vs_1thread_loop": steady / (w * out["loop1_images_per_s"]),
               "efficiency_vs_default_loop": steady / (w * out["loop_images_per_s"])}
        if w > 1:  # W one-thread loops at once: what W cores of this machine give, at best
            row["concurrent_loops_images_per_s"] = w * n / best[f"loops{w}"]
            row["machine_scaling"] = row["concurrent_loops_images_per_s"] / (w * out["loop1_images_per_s"])
            row["efficiency_vs_concurrent_loops"] = steady / row["concurrent_loops_images_per_s"]
        if cli:
            row["cli_images_per_s"] = n / best[f"cli{w}"]
            row["cli_seconds"] = best[f"cli{w}"]
        out["workers"][w] = row
    return out


def report(result: dict) -> list[str]:
    """Lines that print the figures of measure()."""
    lines = [f"W1 plain loop: {result['loop1_images_per_s']:.1f} images/s with 1 OpenCV thread, "
             f"{result['loop_images_per_s']:.1f} with the default {result['opencv_default_threads']} "
             f"(best of {result['rounds']} interleaved rounds, {result['images']} images)"]
    for w, row in result["workers"].items():
        line = (f"W1 workers={w}: {row['images_per_s']:.1f} images/s on a started pool; efficiency "
                f"{row['efficiency_vs_1thread_loop']:.2f} vs W x the 1-thread loop, "
                f"{row['efficiency_vs_default_loop']:.2f} vs W x the default-thread loop")
        if "machine_scaling" in row:
            line += (f"; {w} one-thread loops at once reach {row['machine_scaling']:.2f} of W x one loop "
                     f"(pixmill = {row['efficiency_vs_concurrent_loops']:.2f} of that)")
        if "cli_images_per_s" in row:
            line += f"; whole `pixmill run` command {row['cli_images_per_s']:.1f} images/s ({row['cli_seconds']:.2f} s)"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--engine", default="mpi", choices=["mpi", "local"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp) / "in", args.images)
        result = measure(paths, Path(tmp), list(range(1, (os.cpu_count() or 1) + 1)),
                         rounds=args.rounds, engine=args.engine)
    print(f"machine: {os.cpu_count()} cores")
    print("\n".join(report(result)))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
