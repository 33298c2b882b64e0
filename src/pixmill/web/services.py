"""What the web app is given to work with: settings, the store and a few tuning values."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app

from ..config import Settings
from ..store import Store
from .waiting import Waits

__all__ = ["Services", "services"]


@dataclass
class Services:
    """The app's dependencies, kept in app.extensions['pixmill']."""

    settings: Settings
    store: Store
    sse_poll: float = 0.5           # seconds between store polls of an event stream
    sse_max_seconds: float = 60.0   # an event stream closes after this; the browser reconnects
    # Each event stream or long poll holds a server thread, so at most half the threads may wait at once.
    event_slots: threading.BoundedSemaphore = field(init=False)
    waits: Waits = field(init=False)

    def __post_init__(self) -> None:
        self.event_slots = threading.BoundedSemaphore(self.settings.threads // 2)
        self.waits = Waits(self.store.database.watch)


def services() -> Services:
    """The current app's dependencies."""
    return current_app.extensions["pixmill"]
