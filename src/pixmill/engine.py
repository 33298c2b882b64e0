"""Executors for the work: MPI (mpi4py.futures) or local processes, behind one interface."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

__all__ = ["ENGINES", "make_executor", "threads_per_worker"]

ENGINES = ("mpi", "local")
# mpi4py.futures polls with a back-off that doubles up to this many seconds when idle: long
# enough that an idle pool uses almost no CPU, short enough to add little latency to a new task.
DEFAULT_BACKOFF = "0.005"


def threads_per_worker(workers: int) -> int:
    """OpenCV threads for each worker, so the workers together use the cores and no more."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def init_worker(threads: int) -> None:
    """Set up a worker process: OpenCV's thread count, and the catalogue imported once."""
    import cv2

    cv2.setNumThreads(threads)
    import pixmill.process  # noqa: F401  (imports the operation registry before the first task)


def make_executor(kind: str, workers: int) -> Executor:
    """An Executor running `workers` worker processes: MPI ranks ("mpi") or local processes ("local")."""
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {kind!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    threads = threads_per_worker(workers)
    if kind == "local":
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(threads,))
    _prepare_mpi_environment()
    from mpi4py.futures import MPIPoolExecutor

    return MPIPoolExecutor(max_workers=workers, initializer=init_worker, initargs=(threads,))


def _prepare_mpi_environment() -> None:
    # Spawning needs the mpiexec of the mpich wheel, which lives beside this interpreter;
    # without it on PATH, MPICH's singleton start hangs instead of failing.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path
    os.environ.setdefault("MPI4PY_FUTURES_BACKOFF", DEFAULT_BACKOFF)
