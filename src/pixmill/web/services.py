"""What the web app is given to work with: settings, the store and a few tuning values."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..config import Settings
from ..store import Store

__all__ = ["Services", "services"]


@dataclass
class Services:
    """The app's dependencies, kept in app.extensions['pixmill']."""

    settings: Settings
    store: Store
    sse_poll: float = 0.5           # seconds between store polls of an event stream
    sse_max_seconds: float = 300.0  # an event stream closes after this; the browser reconnects


def services() -> Services:
    """The current app's dependencies."""
    return current_app.extensions["pixmill"]
