"""Executors for the work: MPI (mpi4py.futures) or local processes, behind one interface."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

__all__ = ["ENGINES", "make_executor", "threads_per_worker"]

ENGINES = ("mpi", "local")
# mpi4py.futures polls with a back-off that doubles, from a thousandth of its cap, while nothing
# arrives.  Every wake of an idle process costs ~0.05-0.1 ms of CPU on the 2-core VM, so the caps
# set what an idle pool costs, and how late a task that arrives after a quiet spell is noticed
# (about twice a worker's cap: a no-op round trip took 19 ms with a 10 ms cap, 41 ms with 20 ms).
# So the back-off stops growing at FAST_BACKOFF for FAST_SECONDS after each hand-off (no-op 2-3 ms,
# a 512×512 blur 5-8 ms, back to back), then, in a worker, at WARM_BACKOFF for WARM_SECONDS more (a
# task a second after the last one: no-op 5-6 ms), and only then grows to the caps.  A submit wakes
# the manager at once (quick_backoff_after_handoff), so its cap only bounds how late the result of a
# task longer than the spells is seen, and the worker that finished last takes the next task.  Idle
# dispatcher with 3 workers (tests/test_jobs_mpi.py): with caps 5 ms / 10 ms and no warm spell
# 4.2-4.6% of a core; with 20 ms / 20 ms and the spells 2.9-3.8% (3.0-3.2% with the spells after
# the start waited out; each rank wakes 50-65 times a second).  A pool of two in the 5 s after a
# burst (tests/test_engine.py): 4.2-5.0%, ~300 wakeups/s a rank; 6.2-6.4% when the manager had a
# warm spell too.
MANAGER_BACKOFF = os.environ.get("PIXMILL_MANAGER_BACKOFF", "0.02")
WORKER_BACKOFF = os.environ.get("PIXMILL_WORKER_BACKOFF", "0.02")
FAST_BACKOFF = float(os.environ.get("PIXMILL_FAST_BACKOFF", "0.0005"))
FAST_SECONDS = 0.3
WARM_BACKOFF = float(os.environ.get("PIXMILL_WARM_BACKOFF", "0.002"))
WARM_SECONDS = float(os.environ.get("PIXMILL_WARM_SECONDS", "2"))


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

    if "mpi4py.futures._core" in sys.modules:  # an MPI worker (never import MPI in a local one)
        quick_backoff_after_handoff()
    keep_freed_memory(KEEP_FREED_BYTES)
    cv2.setNumThreads(threads)
    import pixmill.imaging.process  # noqa: F401  (imports the operation registry before the first task)


def keep_freed_memory(limit: int) -> bool:
    """Ask glibc's malloc to keep up to limit bytes of freed memory; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit))


def quick_backoff_after_handoff(fast: float = FAST_BACKOFF, hold: float = FAST_SECONDS, *,
                                wake_on_submit: bool = False) -> bool:
    """Cap mpi4py.futures' polling back-off at `fast` s for `hold` s after each hand-off, then (in workers)
    at WARM_BACKOFF for WARM_SECONDS more. With wake_on_submit, in the pool's own process, a submit ends
    the manager's sleep at once and the worker that finished last takes the next task. False if not possible."""
    core = sys.modules.get("mpi4py.futures._core")
    backoff, pool = getattr(core, "Backoff", None), getattr(core, "Pool", None)
    if backoff is None or not callable(getattr(backoff, "sleep", None)) or not callable(getattr(pool, "push", None)):
        return False
    if getattr(backoff, "pixmill_patched", False):
        return True
    # The manager sleeps by acquiring a lock that is always held; a submit releases it.  A timed
    # acquire costs what time.sleep does (an Event's wait cost an idle pool 0.5% of a core more).
    gate = threading.Lock()
    gate.acquire()
    pause = gate.acquire if wake_on_submit else None
    warm = 0.0 if wake_on_submit else WARM_SECONDS  # a submit wakes the manager: it needs no warm spell

    def sleep(self) -> None:  # mpi4py's own, plus the caps while a hand-off is recent
        if self.tval == 0.0:  # reset() at a hand-off sets tval to 0
            self.quick_until = time.monotonic() + hold
            self.warm_until = self.quick_until + warm
        if pause is None or self.tval == 0.0:
            time.sleep(self.tval)
        else:
            pause(timeout=self.tval)
        cap, now = self.tmax, time.monotonic()
        if cap > fast and now < getattr(self, "quick_until", 0.0):
            cap = fast
        elif cap > WARM_BACKOFF and now < getattr(self, "warm_until", 0.0):
            cap = WARM_BACKOFF
        self.tval = min(cap, max(self.tmin, self.tval * 2))

    push = pool.push

    def push_and_wake(self, item) -> None:
        push(self, item)
        try:
            gate.release()
        except RuntimeError:  # already released by another submit, not yet taken
            pass

    backoff.sleep, backoff.pixmill_patched = sleep, True
    if wake_on_submit:
        pool.push = push_and_wake
        # mpi4py hands a task to the worker that has waited longest (a FIFO); the one that finished
        # last is still in its fast or warm spell, so a job now and then goes to it, and the others
        # stay cold and cheap.  Busy pools are unaffected: every worker gets the next task it can.
        workers = getattr(core, "WorkerSet", None)
        if workers is not None and issubclass(workers, collections.deque):
            workers.pop = collections.deque.pop
    return True


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

    quick_backoff_after_handoff(wake_on_submit=True)
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
