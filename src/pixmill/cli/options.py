"""The options several `pixmill` commands share, each declared once so that their names, types and help agree.

Most are click decorators to apply as they are; `engine` and `workers` are called, with a note that
one command adds to the help (the static MPI pool of `pixmill worker`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import PixmillError
from ..imaging.pipeline import Pipeline, parse_pipeline
from ..imaging.process import COLOR_MODES, OUTPUT_FORMATS
from ..worker.engine import ENGINES

__all__ = ["data_dir", "database_url", "blob_url", "server", "token", "engine", "workers", "images", "pipeline",
           "output_format", "quality", "color"]

F = TypeVar("F", bound=Callable[..., Any])

data_dir = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder of the store: database and images (default ./pixmill-data, or PIXMILL_DATA_DIR).")

database_url = click.option(
    "--database-url", default=None, metavar="postgresql://USER@HOST:PORT/DB",
    help="Keep jobs and tasks in this PostgreSQL database instead of the data dir's SQLite file "
         "(or PIXMILL_DATABASE_URL).")

blob_url = click.option(
    "--blob-url", default=None, metavar="s3://BUCKET/PREFIX",
    help="Keep images in this S3 bucket (boto3: AWS_* variables, AWS_ENDPOINT_URL) instead of the data dir "
         "(or PIXMILL_BLOB_URL).")


server = click.option(
    "--server", default=None, metavar="URL",
    help="Talk to this running service (http://host:port) through its API instead of a store.")

token = click.option(
    "--token", default=None, envvar="PIXMILL_TOKEN", show_envvar=True,
    help="With --server: the API token, if the service needs one.")


def _parse_pipeline(ctx: click.Context, param: click.Parameter, spec: str) -> Pipeline:
    try:
        return parse_pipeline(spec)
    except PixmillError as exc:
        raise click.BadParameter(exc.message) from None


def _collect_images(ctx: click.Context, param: click.Parameter, paths: tuple[Path, ...]) -> list[Path]:
    from ..worker.batch import collect_inputs

    sources = collect_inputs(paths)
    if not sources:
        raise click.UsageError("no image files found in the inputs given")
    return sources


pipeline = click.option(
    "-p", "--pipeline", "pipeline", required=True, callback=_parse_pipeline,
    help="Operations to apply, e.g. 'grayscale | blur(ksize=7)' or a JSON list of steps.")


def images(name: str) -> Callable[[F], F]:
    """The image files and directories a command takes, as the list of image files they name (never empty)."""
    return click.argument(name, nargs=-1, required=True, type=click.Path(exists=True, path_type=Path),
                          metavar="IMAGES...", callback=_collect_images)


output_format = click.option(
    "-f", "--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="auto", show_default=True,
    help="Output format; auto keeps JPEG, AVIF and lossy WebP as they are, writes HEIC as JPEG and the rest as PNG.")

quality = click.option(
    "-q", "--quality", type=click.IntRange(1, 100), default=90, show_default=True,
    help="Quality of JPEG, WebP and AVIF outputs.")

color = click.option(
    "--color", "color_mode", type=click.Choice(COLOR_MODES), default="srgb", show_default=True,
    help="srgb: convert an embedded ICC profile to sRGB; keep: process in the source's colours and embed its profile.")


def engine(note: str = "") -> Callable[[F], F]:
    """The --engine option, with an optional sentence appended to its help."""
    return click.option("--engine", type=click.Choice(ENGINES), default=None,
                        help=_joined("mpi: MPI workers (default); local: a process pool.", note))


def workers(note: str = "") -> Callable[[F], F]:
    """The -w/--workers option, with an optional sentence appended to its help."""
    return click.option("-w", "--workers", type=click.IntRange(min=1), default=None,
                        help=_joined("Worker processes (default: one per core, or PIXMILL_WORKERS).", note))


def _joined(text: str, note: str) -> str:
    return f"{text} {note}" if note else text
