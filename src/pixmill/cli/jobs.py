"""`pixmill worker`, `pixmill submit` and `pixmill status`: the dispatcher and the store from a shell."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import click

from ..config import Settings, load_settings
from ..errors import PixmillError
from ..imaging.pipeline import parse_pipeline
from ..imaging.process import OUTPUT_FORMATS, Output

__all__ = ["worker", "submit", "status"]

DATA_DIR_HELP = "Folder of the store: database and images (default ./pixmill-data, or PIXMILL_DATA_DIR)."


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--engine", type=click.Choice(["mpi", "local"]), default=None,
              help="mpi: MPI workers (default); local: a process pool. Ignored in a static MPI pool.")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per core). A static MPI pool uses every rank but 0.")
@click.option("--task-timeout", type=click.FloatRange(min=0.1), default=None,
              help="Seconds one image may take before it fails (default 60).")
def worker(data_dir: Path | None, engine: str | None, workers: int | None, task_timeout: float | None) -> None:
    """Process queued tasks of the store on a pool of workers, until Ctrl-C or SIGTERM.

    Run alone it spawns its MPI workers (or local processes) and restarts the pool if a worker dies.
    Under `mpiexec -n N python -m mpi4py.futures -m pixmill worker` rank 0 dispatches to the
    other N-1 ranks, which may be on other machines.
    """
    import logging

    from ..worker.staticpool import in_static_pool, run_static

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(data_dir=data_dir, engine=engine, workers=workers, task_timeout=task_timeout)
    if in_static_pool():
        sys.exit(run_static(settings))
    if "PMI_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        raise click.UsageError("under mpiexec, run the workers as a static pool: "
                               "mpiexec -genv MPIR_CVAR_NOLOCAL 1 -n N python -m mpi4py.futures -m pixmill worker ...")
    run_supervised(settings)


def run_supervised(settings: Settings, *, task: str | None = None) -> None:
    """Run a supervised dispatcher until SIGTERM or SIGINT, then stop it cleanly (task: see Supervisor)."""
    from ..worker.supervisor import Supervisor

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor = Supervisor(settings, task=task)
    try:
        supervisor.start()
        click.echo(f"pixmill worker: {settings.worker_count()} {settings.engine} workers on "
                   f"{settings.data_dir.resolve()}; Ctrl-C stops", err=True)
        while not stop.wait(1.0):
            pass
    finally:
        click.echo("pixmill worker: stopping", err=True)
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-p", "--pipeline", "spec", required=True,
              help="Operations to apply, e.g. 'grayscale | blur(ksize=7)' or a JSON list of steps.")
@click.option("-f", "--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="auto", show_default=True,
              help="Output format; auto keeps JPEG as JPEG, WebP as WebP, and writes PNG otherwise.")
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="Quality of JPEG and WebP outputs.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--wait", "wait_", is_flag=True, help="Wait until every task has ended, then print the status.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="With --wait: give up after this many seconds.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --wait: write the results into this directory.")
def submit(images: tuple[Path, ...], spec: str, fmt: str, quality: int, data_dir: Path | None, wait_: bool,
           timeout: float | None, out_dir: Path | None) -> None:
    """Queue a job of image files (or directories of them) for the workers; print its id."""
    from ..imaging import codec
    from ..store import NewTask, Store
    from ..worker.batch import collect_inputs

    settings = load_settings(data_dir=data_dir)
    try:
        pipeline = parse_pipeline(spec)
    except PixmillError as exc:
        raise click.BadParameter(exc.message, param_hint="--pipeline") from None
    sources = collect_inputs(images)
    if not sources:
        raise click.UsageError("no image files found in the inputs given")
    if len(sources) > settings.max_files:
        raise click.UsageError(f"{len(sources)} images, over the limit of {settings.max_files} per job")
    with Store.open(settings) as store:
        tasks, problems = [], []
        try:
            for source in sources:
                try:
                    data = _read(source, settings.max_file_bytes)
                    info = codec.probe(data, max_pixels=settings.max_pixels)
                except (OSError, PixmillError) as exc:
                    problems.append(f"{source.name}: {getattr(exc, 'message', None) or exc}")
                    continue
                tasks.append(NewTask(source.name, pipeline, store.put_blob(data), info.format))
            if problems:
                raise click.UsageError("refused, nothing was queued:\n  " + "\n  ".join(problems))
            job = store.create_job(tasks, Output(fmt, quality))
        except BaseException:
            store.delete_blobs(t.blob for t in tasks)
            raise
        click.echo(job.id)
        click.echo(f"queued {len(tasks)} images as job {job.id}", err=True)
        if wait_:
            job = _wait_for(store, job.id, timeout)
            _print_status(job)
            if out_dir is not None:
                _write_results(store, job, out_dir)
            if job.state != "done" or any(t.error for t in job.tasks):
                sys.exit(1)


@click.command()
@click.argument("job_id")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def status(job_id: str, data_dir: Path | None, as_json: bool) -> None:
    """Show a job's state and each of its tasks."""
    from ..store import Store

    with Store.open(load_settings(data_dir=data_dir)) as store:
        try:
            job = store.get_job(job_id)
        except PixmillError as exc:
            raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(_job_json(job), indent=2))
    else:
        _print_status(job)


def _read(path: Path, max_bytes: int) -> bytes:
    from ..errors import ImageTooLarge

    size = path.stat().st_size
    if size > max_bytes:
        raise ImageTooLarge(f"the file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit")
    return path.read_bytes()


def _wait_for(store, job_id: str, timeout: float | None):
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = store.get_job(job_id)
        if job.state in ("done", "cancelled"):
            return job
        if deadline is not None and time.monotonic() > deadline:
            _print_status(job)
            raise click.ClickException(f"job {job_id} did not end within {timeout:g} s")
        time.sleep(0.2)


def _print_status(job) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in job.counts().items() if n)
    click.echo(f"job {job.id}: {job.state} ({counts})")
    for task in job.tasks:
        size = f" {task.width}x{task.height} {task.result_format}" if task.result_blob else ""
        tries = f" after {task.attempts} attempts" if task.attempts > 1 else ""
        error = f": {task.error}" if task.error else ""
        click.echo(f"  {task.n:>4} {task.name}: {task.state.value}{size}{tries}{error}")


def _write_results(store, job, out_dir: Path) -> None:
    from ..imaging.codec import EXTENSIONS

    out_dir.mkdir(parents=True, exist_ok=True)
    for task in job.tasks:
        if task.result_blob:
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(task.name).stem)[:80]  # display text, made file-safe
            target = out_dir / f"{task.n:04d}-{stem}.{EXTENSIONS[task.result_format]}"
            target.write_bytes(store.read_blob(task.result_blob))
    click.echo(f"results written to {out_dir}", err=True)


def _job_json(job) -> dict:
    tasks = [{**{k: getattr(t, k) for k in t.__dataclass_fields__}, "state": t.state.value, "notes": list(t.notes)}
             for t in job.tasks]
    return {"id": job.id, "state": job.state, "created_at": job.created_at, "counts": job.counts(),
            "output": {"format": job.output.format, "quality": job.output.quality}, "tasks": tasks}
