"""The `pixmill` command: one group, shared options, and a module per command family."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
