"""One logging setup for every pixmill process: the server, the dispatcher and the worker command."""

from __future__ import annotations

import logging

__all__ = ["setup_logging"]

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Log pixmill's messages to stderr with a time stamp, once per process."""
    logging.basicConfig(level=level, format=FORMAT)
