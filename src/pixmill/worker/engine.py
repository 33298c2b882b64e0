"""Executors for the work: MPI (mpi4py.futures) or local processes, behind one interface."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

from .backoff import DEFAULT_BACKOFF, Backoff, quick_backoff_after_handoff

__all__ = ["ENGINES", "init_worker", "make_executor", "threads_per_worker"]

ENGINES = ("mpi", "local")


def threads_per_worker(workers: int) -> int:
    """OpenCV threads for each worker, so the workers together use the cores and no more."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# glibc returns freed blocks over a threshold to the kernel, so each image's buffers would be paged
# in afresh; a worker keeps up to this much freed memory for the next image instead.
KEEP_FREED_BYTES = 512 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def init_worker(threads: int, backoff: Backoff = DEFAULT_BACKOFF) -> None:
    """Set up a worker process: memory reuse, OpenCV's thread count, the catalogue imported once, and in
    an MPI worker the polling caps of `backoff`."""
    from pixmill.imaging import codec

    if "mpi4py.futures._core" in sys.modules:  # an MPI worker (never import MPI in a local one)
        quick_backoff_after_handoff(backoff)
    keep_freed_memory(KEEP_FREED_BYTES)
    codec.set_threads(threads)
    import pixmill.imaging.process  # noqa: F401  (imports the operation registry before the first task)


def keep_freed_memory(limit: int) -> bool:
    """Ask glibc's malloc to keep up to limit bytes of freed memory; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit))


def make_executor(kind: str, workers: int, *, backoff: Backoff = DEFAULT_BACKOFF) -> Executor:
    """An Executor running `workers` worker processes: MPI ranks ("mpi") or local processes ("local").

    An MPI pool polls with the caps of `backoff` (Backoff.from_settings(settings)); local pools do not poll."""
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {kind!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    threads = threads_per_worker(workers)
    if kind == "local":
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(threads,))
    _prepare_mpi_environment(backoff)
    from mpi4py.futures import MPIPoolExecutor

    quick_backoff_after_handoff(backoff, wake_on_submit=True)
    # Not MPIPoolExecutor's backoff option: that one is sent to the workers too, which have a cap of their own.
    return MPIPoolExecutor(max_workers=workers, initializer=init_worker, initargs=(threads, backoff),
                           env={"MPI4PY_FUTURES_BACKOFF": str(backoff.worker)})


def _prepare_mpi_environment(backoff: Backoff) -> None:
    # Spawning needs the mpiexec of the mpich wheel, which lives beside this interpreter;
    # without it on PATH, MPICH's singleton start hangs instead of failing.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path
    os.environ["MPI4PY_FUTURES_BACKOFF"] = str(backoff.manager)  # read by the manager thread as it starts
