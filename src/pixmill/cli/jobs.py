"""`pixmill submit` and `pixmill status`: queue a job and show it, from a shell.

With `--server URL` both talk to a running service through its API (pixmill.client); without it,
to the store of a data dir (or the database and bucket of the settings) directly.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from ..config import load_settings
from ..errors import PixmillError
from ..imaging.pipeline import Pipeline
from ..imaging.process import Output
from ..limits import read_limited
from . import options

if TYPE_CHECKING:
    from ..client import Client
    from ..store import JobView, Store

__all__ = ["submit", "status"]

T = TypeVar("T")


@click.command()
@options.images("sources")
@options.pipeline
@options.output_format
@options.quality
@options.color
@options.data_dir
@options.database_url
@options.blob_url
@options.server
@options.token
@click.option("--wait", "wait_", is_flag=True, help="Wait until every task has ended, then print the status.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="With --wait: give up after this many seconds.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Wait, then write the results into this directory.")
@click.option("--webhook", "webhook_url", metavar="URL", default=None,
              help="With --server: the service POSTs the job to this URL when it ends (signed).")
def submit(sources: list[Path], pipeline: Pipeline, fmt: str, quality: int, color_mode: str, data_dir: Path | None,
           database_url: str | None, blob_url: str | None, server: str | None, token: str | None, wait_: bool,
           timeout: float | None, out_dir: Path | None, webhook_url: str | None) -> None:
    """Queue a job of image files (or directories of them) for the workers; print its id."""
    from ..imaging import codec
    from ..store import JobState, NewTask, Store  # the store is loaded by the commands that use it

    if server is not None:
        _submit_remote(server, token, sources, pipeline, Output(fmt, quality, color_mode), wait_ or out_dir is not None,
                       timeout, out_dir, webhook_url)
        return
    if webhook_url:
        raise click.UsageError("--webhook needs --server: the service sends webhooks, with its own URLs in them")
    wait_ = wait_ or out_dir is not None
    settings = load_settings(data_dir=data_dir, database_url=database_url, blob_url=blob_url)
    if len(sources) > settings.max_files:
        raise click.UsageError(f"{len(sources)} images, over the limit of {settings.max_files} per job")
    with Store.open(settings) as store:
        tasks, problems = [], []
        try:
            for source in sources:
                try:
                    data = read_limited(source, settings.max_file_bytes)
                    info = codec.probe(data, max_pixels=settings.max_pixels)
                except (OSError, PixmillError) as exc:
                    problems.append(f"{source.name}: {getattr(exc, 'message', None) or exc}")
                    continue
                tasks.append(NewTask(source.name, pipeline, store.put_blob(data), info.format))
            if problems:
                raise click.UsageError("refused, nothing was queued:\n  " + "\n  ".join(problems))
            job = store.create_job(tasks, Output(fmt, quality, color_mode))
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
            if job.state is not JobState.DONE or any(t.error for t in job.tasks):
                sys.exit(1)


@click.command()
@click.argument("job_id")
@options.data_dir
@options.database_url
@options.blob_url
@options.server
@options.token
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def status(job_id: str, data_dir: Path | None, database_url: str | None, blob_url: str | None, server: str | None,
           token: str | None, as_json: bool) -> None:
    """Show a job's state and each of its tasks."""
    from ..web.present import job_json  # the API's own shape; imported here as Flask is slow to load

    if server is not None:
        with _remote(server, token) as client:
            job = _api(lambda: client.job(job_id))
        click.echo(json.dumps(job.data, indent=2) if as_json else _status_lines(job.data))
        return
    from ..store import Store

    with Store.open(load_settings(data_dir=data_dir, database_url=database_url, blob_url=blob_url)) as store:
        try:
            job = store.get_job(job_id)
        except PixmillError as exc:
            raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(job_json(job, links=False), indent=2))
    else:
        _print_status(job)


def _wait_for(store: Store, job_id: str, timeout: float | None) -> JobView:
    from ..store import JOB_ENDED

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = store.get_job(job_id)
        if job.state in JOB_ENDED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            _print_status(job)
            raise click.ClickException(f"job {job_id} did not end within {timeout:g} s")
        time.sleep(0.2)


def _print_status(job: JobView) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in job.counts().items() if n)
    click.echo(f"job {job.id}: {job.state} ({counts})")
    for task in job.tasks:
        size = f" {task.width}x{task.height} {task.result_format}" if task.result_blob else ""
        tries = f" after {task.attempts} attempts" if task.attempts > 1 else ""
        error = f": {task.error}" if task.error else ""
        click.echo(f"  {task.n:>4} {task.name}: {task.state.value}{size}{tries}{error}")


def _write_results(store: Store, job: JobView, out_dir: Path) -> None:
    from ..imaging.codec import EXTENSIONS

    out_dir.mkdir(parents=True, exist_ok=True)
    for task in job.tasks:
        if task.result_blob:
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(task.name).stem)[:80]  # display text, made file-safe
            target = out_dir / f"{task.n:04d}-{stem}.{EXTENSIONS[task.result_format]}"
            target.write_bytes(store.read_blob(task.result_blob))
    click.echo(f"results written to {out_dir}", err=True)


def _remote(server: str, token: str | None) -> Client:
    from ..client import Client

    return Client(server, token=token)


def _api(call: Callable[[], T]) -> T:
    """call(), with the API's errors (and an unreachable server) as the command's error."""
    import httpx

    from ..client import ApiError, Timeout

    try:
        return call()
    except (ApiError, Timeout) as exc:
        raise click.ClickException(str(exc)) from None
    except httpx.HTTPError as exc:
        raise click.ClickException(f"the server does not answer: {exc}") from None


def _submit_remote(server: str, token: str | None, sources: list[Path], pipeline: Pipeline, output: Output,
                   wait_: bool, timeout: float | None, out_dir: Path | None, webhook_url: str | None) -> None:
    from tqdm import tqdm

    with _remote(server, token) as client:
        job = _api(lambda: client.submit(sources, pipeline=pipeline.text(), format=output.format,
                                         quality=output.quality, color=output.color, webhook_url=webhook_url))
        click.echo(job.id)
        click.echo(f"queued {len(sources)} images as job {job.id} on {server}", err=True)
        if not wait_:
            return
        with tqdm(total=len(job.tasks), unit="image", file=sys.stderr, disable=None) as bar:
            def follow() -> None:
                for seen in job.progress(timeout):
                    bar.update(seen.data["ended"] - bar.n)
            _api(follow)
        click.echo(_status_lines(job.data))
        if out_dir is not None:
            written = _api(lambda: job.download(out_dir))
            click.echo(f"{len(written)} results written to {out_dir}", err=True)
        failed = job.failed
        if failed:
            click.echo(f"{len(failed)} of {len(job.tasks)} images failed:", err=True)
            for task in failed:
                click.echo(f"  {task['name']}: {task['error']}", err=True)
        if job.state != "done" or failed:
            sys.exit(1)


def _status_lines(job: dict) -> str:
    """A job's JSON from the API as the lines _print_status prints for a local one."""
    counts = ", ".join(f"{n} {state}" for state, n in job["counts"].items() if n)
    lines = [f"job {job['id']}: {job['state']} ({counts})"]
    for task in job["tasks"]:
        size = f" {task['width']}x{task['height']} {task['result_format']}" if task["state"] == "done" else ""
        tries = f" after {task['attempts']} attempts" if task["attempts"] > 1 else ""
        error = f": {task['error']}" if task["error"] else ""
        lines.append(f"  {task['n']:>4} {task['name']}: {task['state']}{size}{tries}{error}")
    return "\n".join(lines)
