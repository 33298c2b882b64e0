"""`pixmill worker` as rank 0 of a static MPI pool: `mpiexec -n N python -m mpi4py.futures -m pixmill worker`.

mpi4py.futures runs the command on rank 0 only; the other ranks, on this machine or others named
in a hostfile, serve its MPIPoolExecutor. There is no supervisor: when a rank dies, MPI ends the
whole job, and the next start (by systemd, a batch system or a shell loop) requeues the tasks the
dead dispatcher held, at once on the same host or when their leases run out elsewhere.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import Executor

from ..config import Settings
from .backoff import Backoff
from .dispatcher import EXIT_RESTART, run_dispatcher

__all__ = ["in_static_pool", "run_static", "static_pool_size", "init_static_worker"]


def in_static_pool() -> bool:
    """Whether this process is rank 0 of `mpiexec -n N python -m mpi4py.futures ...`."""
    core = sys.modules.get("mpi4py.futures._core")
    return getattr(core, "SharedPool", None) is not None


def run_static(settings: Settings) -> int:
    """Dispatch to the other ranks until SIGTERM/SIGINT; if the pool must be ended, end the whole MPI job."""
    workers = static_pool_size()
    backoff = Backoff.from_settings(settings)
    status = run_dispatcher(settings, engine="mpi", workers=workers, make_pool=lambda: _executor(backoff))
    if status == EXIT_RESTART:
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(EXIT_RESTART)  # a runaway rank can only be stopped with the job
    return status


def static_pool_size() -> int:
    """Workers of the static pool: every rank but 0 (with one rank, a thread of rank 0)."""
    from mpi4py import MPI

    return max(1, MPI.COMM_WORLD.Get_size() - 1)


def init_static_worker(backoff: Backoff) -> None:
    """Set up a rank of the pool: OpenCV threads to share its machine's cores with the ranks beside it,
    the polling caps of `backoff`; SIGTERM and SIGINT ignored, since mpiexec passes them to every rank but
    only rank 0 acts on them (it finishes or releases its tasks, then ends the job cleanly)."""
    from .engine import init_worker

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ranks_here = int(os.environ.get("MPI_LOCALNRANKS", "1"))  # set by MPICH's mpiexec
    init_worker(max(1, (os.cpu_count() or 1) // max(1, ranks_here)), backoff)


def _executor(backoff: Backoff) -> Executor:
    from mpi4py.futures import MPIPoolExecutor

    # Under `-m mpi4py.futures` every MPIPoolExecutor uses the ranks already there: nothing is spawned.
    return MPIPoolExecutor(initializer=init_static_worker, initargs=(backoff,))
