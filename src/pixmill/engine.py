"""Executors for the work: MPI (mpi4py.futures) or local processes, behind one interface."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

__all__ = ["ENGINES", "make_executor", "threads_per_worker"]

ENGINES = ("mpi", "local")
# mpi4py.futures polls with a back-off that doubles up to a cap while nothing arrives.  The pool's
# manager (in this process) notices a finished task within its cap, so its cap is short.  A
# worker's back-off restarts from microseconds at each hand-off, so its cap only delays the first
# task after an idle spell, and a long one makes idle workers cheap.  Measured on 2 cores: 5 ms
# for both cost 40% of one worker's throughput on 1920×1080 blurs; 1 ms for both took an idle
# dispatcher with 3 workers over 5% of a core; 1 ms and 10 ms: 0.88 of a plain loop, ~4% idle.
MANAGER_BACKOFF = os.environ.get("PIXMILL_MANAGER_BACKOFF", "0.001")
WORKER_BACKOFF = os.environ.get("PIXMILL_WORKER_BACKOFF", "0.01")


def threads_per_worker(workers: int) -> int:
    """OpenCV threads for each worker, so the workers together use the cores and no more."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# glibc returns freed blocks over a threshold to the kernel, so each image's buffers are paged
# in afresh: about 1,000 page faults and a third of the time of a 1920×1080 blur.  A worker keeps
# up to this much freed memory for the next image instead.
KEEP_FREED_BYTES = 512 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def init_worker(threads: int) -> None:
    """Set up a worker process: memory reuse, OpenCV's thread count, the catalogue imported once."""
    import cv2

    keep_freed_memory(KEEP_FREED_BYTES)
    cv2.setNumThreads(threads)
    import pixmill.process  # noqa: F401  (imports the operation registry before the first task)


def keep_freed_memory(limit: int) -> bool:
    """Ask glibc's malloc to keep up to limit bytes of freed memory; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit))


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

    return MPIPoolExecutor(max_workers=workers, initializer=init_worker, initargs=(threads,),
                           env={"MPI4PY_FUTURES_BACKOFF": WORKER_BACKOFF})


def _prepare_mpi_environment() -> None:
    # Spawning needs the mpiexec of the mpich wheel, which lives beside this interpreter;
    # without it on PATH, MPICH's singleton start hangs instead of failing.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path
    os.environ["MPI4PY_FUTURES_BACKOFF"] = MANAGER_BACKOFF
