"""`pixmill run` against a plain single-process OpenCV loop, on 40 photo-like 1920×1080 JPEGs, blur.

Prints throughput ratios measured in this run (targets on 2 cores: >= 0.95 with 1 worker,
>= 1.8 with 2 workers).  Two figures per worker count:
- steady: the batch on a started pool (what `pixmill run` reports as images/s), vs the loop;
- end-to-end: the whole `pixmill run` command, interpreter and pool start-up included.
Usage: python benchmarks/bench_run.py [--images 40] [--engine mpi] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, write_photos  # noqa: E402

from pixmill.batch import run_batch  # noqa: E402
from pixmill.engine import make_executor  # noqa: E402
from pixmill.pipeline import parse_pipeline  # noqa: E402
from pixmill.process import Output  # noqa: E402


def baseline(paths: list[Path], out: Path) -> None:
    """The plain loop: the same OpenCV calls, one image after another in this process."""
    out.mkdir(exist_ok=True)
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        cv2.imwrite(str(out / path.name), cv2.GaussianBlur(image, (5, 5), 0), [cv2.IMWRITE_JPEG_QUALITY, 90])


def steady(paths: list[Path], out: Path, engine: str, workers: int, repeat: int) -> float:
    """Best time of the batch on a pool that has already started."""
    pipeline = parse_pipeline("blur")
    with make_executor(engine, workers) as executor:
        list(executor.map(abs, range(workers * 4)))  # the pool is up and every worker has answered
        return best_of(repeat, lambda: run_batch(paths, pipeline, Output(), out, executor, workers=workers,
                                                 max_pixels=100_000_000, max_file_bytes=50 << 20))


def end_to_end(folder: Path, out: Path, engine: str, workers: int, repeat: int) -> float:
    """Best wall time of the whole `pixmill run` command."""
    cmd = [sys.executable, "-m", "pixmill", "run", str(folder), "-p", "blur", "-o", str(out),
           "--engine", engine, "-w", str(workers)]
    return best_of(repeat, lambda: subprocess.run(cmd, check=True, capture_output=True, timeout=600))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--engine", default="mpi", choices=["mpi", "local"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        paths = write_photos(folder, args.images)
        base = best_of(args.repeat, lambda: baseline(paths, Path(tmp) / "base"))
        n = len(paths)
        print(f"machine: {os.cpu_count()} cores; {n} photo-like 1920x1080 JPEGs, blur, engine {args.engine}")
        print(f"plain loop: {n / base:.1f} images/s (cv2 threads {cv2.getNumThreads()})")
        for workers in (1, 2):
            t_steady = steady(paths, Path(tmp) / f"s{workers}", args.engine, workers, args.repeat)
            t_cli = end_to_end(folder, Path(tmp) / f"c{workers}", args.engine, workers, args.repeat)
            print(f"workers={workers}: steady {n / t_steady:.1f} images/s, ratio {base / t_steady:.2f}; "
                  f"end-to-end `pixmill run` ratio {base / t_cli:.2f} ({t_cli:.2f} s vs {base:.2f} s)")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
