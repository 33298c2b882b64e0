"""`pixmill worker`: the dispatcher of a store's queue on a pool of workers, supervised or as a static MPI pool."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import click

from ..config import Settings, load_settings
from ..logs import setup_logging
from . import options

__all__ = ["worker", "run_supervised"]


@click.command()
@options.data_dir
@options.database_url
@options.blob_url
@options.engine("Ignored in a static MPI pool.")
@options.workers("A static MPI pool uses every rank but 0.")
@click.option("--task-timeout", type=click.FloatRange(min=0.1), default=None,
              help="Seconds one image may take before it fails (default 60).")
def worker(data_dir: Path | None, database_url: str | None, blob_url: str | None, engine: str | None,
           workers: int | None, task_timeout: float | None) -> None:
    """Process queued tasks of the store on a pool of workers, until Ctrl-C or SIGTERM.

    Run alone it spawns its MPI workers (or local processes) and restarts the pool if a worker dies.
    Under `mpiexec -n N python -m mpi4py.futures -m pixmill worker` rank 0 dispatches to the
    other N-1 ranks, which may be on other machines.
    """
    from ..worker.staticpool import in_static_pool, run_static

    setup_logging()
    settings = load_settings(data_dir=data_dir, database_url=database_url, blob_url=blob_url, engine=engine,
                             workers=workers, task_timeout=task_timeout)
    if in_static_pool():
        sys.exit(run_static(settings))
    if "PMI_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        raise click.UsageError("under mpiexec, run the workers as a static pool: "
                               "mpiexec -genv MPIR_CVAR_NOLOCAL 1 -n N python -m mpi4py.futures -m pixmill worker ...")
    run_supervised(settings)


def run_supervised(settings: Settings, *, task: str | None = None) -> None:
    """Run a supervised dispatcher until SIGTERM or SIGINT, then stop it cleanly (task: see Supervisor)."""
    from ..store import describe_store
    from ..worker.supervisor import Supervisor

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor = Supervisor(settings, task=task)
    try:
        supervisor.start()
        click.echo(f"pixmill worker: {settings.worker_count()} {settings.engine} workers; "
                   f"{describe_store(settings)}; Ctrl-C stops", err=True)
        while not stop.wait(1.0):
            pass
    finally:
        click.echo("pixmill worker: stopping", err=True)
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
