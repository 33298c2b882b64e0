"""The `pixmill` group: each command family lives in a module of its own, and is added here."""

from __future__ import annotations

import click

from .jobs import status, submit
from .run import ops, run
from .serve import serve
from .worker import worker

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pixmill")
def main() -> None:
    """pixmill: image processing at scale, on MPI workers."""


for command in (run, ops, serve, worker, submit, status):
    main.add_command(command)
