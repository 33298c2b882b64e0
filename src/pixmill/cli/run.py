"""`pixmill run` and `pixmill ops`: a batch of files on a pool of workers, and the catalogue of operations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config import load_settings
from ..imaging.ops import catalogue, operations
from ..imaging.pipeline import Pipeline
from ..imaging.process import Output
from ..limits import DEFAULT_MAX_PIXELS
from . import options

__all__ = ["run", "ops"]


@click.command()
@options.images("sources")
@options.pipeline
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the results, written as name.<ops>.<ext>.")
@options.engine()
@options.workers()
@options.output_format
@options.quality
@options.color
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help=f"Refuse images with more pixels (default {DEFAULT_MAX_PIXELS // 1_000_000} MP).")
def run(sources: list[Path], pipeline: Pipeline, out_dir: Path, engine: str | None, workers: int | None,
        fmt: str, quality: int, color_mode: str, max_pixels: int | None) -> None:
    """Process image files and directories in parallel with one pipeline.

    A TIFF over the pixel limit (and within PIXMILL_MAX_TILED_PIXELS) is split across every worker and
    written as a tiled BigTIFF."""
    from tqdm import tqdm

    from ..worker.backoff import Backoff
    from ..worker.batch import run_batch
    from ..worker.engine import make_executor
    from ..worker.split import is_huge

    settings = load_settings(engine=engine, workers=workers, max_pixels=max_pixels)
    # One worker per file at most, unless a huge image is split across all of them.
    huge = any(is_huge(source, settings.max_pixels) for source in sources)
    count = settings.worker_count() if huge else min(settings.worker_count(), len(sources))
    output = Output(fmt, quality, color_mode)
    with tqdm(total=len(sources), unit="img", file=sys.stderr, disable=None) as bar, \
            make_executor(settings.engine, count, backoff=Backoff.from_settings(settings)) as executor:
        report = run_batch(sources, pipeline, output, out_dir, executor, workers=count,
                           max_pixels=settings.max_pixels, max_file_bytes=settings.max_file_bytes,
                           max_tiled_pixels=settings.max_tiled_pixels,
                           max_tiled_file_bytes=settings.max_tiled_file_bytes, on_done=lambda outcome: bar.update(1))
    ok, failed = report.succeeded, report.failed
    rate = len(sources) / report.seconds if report.seconds else 0.0
    click.echo(f"{len(ok)} of {len(sources)} images processed in {report.seconds:.2f} s "
               f"({rate:.1f} images/s, {count} {settings.engine} workers) -> {out_dir}")
    noted = [o for o in ok if o.notes]
    for outcome in noted:
        click.echo(f"  note {outcome.source.name}: {'; '.join(outcome.notes)}")
    if failed:
        click.echo(f"{len(failed)} failed:")
        for outcome in failed:
            click.echo(f"  {outcome.source.name}: {outcome.error}")
        sys.exit(1)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON (as the API serves it).")
def ops(as_json: bool) -> None:
    """List the operations and their parameters."""
    if as_json:
        click.echo(json.dumps(catalogue(), indent=2))
        return
    for op in operations():
        click.echo(f"{op.name:<20} {op.description}")
        for p in op.params:
            default = "auto" if p.default is None else p.default
            click.echo(f"    {p.name:<16} {p.allowed()}; default {default}. {p.description}")
