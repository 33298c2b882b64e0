"""Long polls: a GET that waits until what it asks for is ready, woken by commits to the store.

A client sends `Prefer: wait=N` (RFC 7240) with GET of a result or of a job, and the answer comes
as soon as the task (or the whole job) has ended, or after N seconds with the usual 202 or state.
The wait sleeps until the store signals a commit (inotify, see dbwatch), so nothing polls. Each wait holds a server thread, so waits share the
event streams' slots; when none is free the answer comes at once, without the preference applied.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from ..dbwatch import DbWatch

__all__ = ["MAX_WAIT", "requested_wait", "wait_until", "ChangeWaiter"]

T = TypeVar("T")

MAX_WAIT = 30.0        # seconds: the longest wait a client may ask for
TICK = 1.0             # without a signal, look anyway this often (a writer that does not signal, no inotify)
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})(?:\.\d*)?\"?\s*(?:$|[,;])", re.IGNORECASE)


def requested_wait(headers: Mapping[str, str]) -> float:
    """The seconds a client asks to wait for with `Prefer: wait=N`, at most MAX_WAIT; 0 if it does not ask."""
    prefer = headers.get("Prefer") or ""
    match = _WAIT.search(prefer[:1000])
    return min(float(match.group(1)), MAX_WAIT) if match else 0.0


class ChangeWaiter:
    """Sleeps until a commit to the database by any process (or a timeout); close() when done."""

    def __init__(self, db_path: Path, *, min_gap: float = 0.0) -> None:
        self.watch = DbWatch(db_path)
        self.min_gap = min_gap

    def wait(self, seconds: float) -> None:
        """Return after a commit (but not before min_gap), or after seconds."""
        if self.min_gap > 0:  # bound how often a busy store makes the caller look
            time.sleep(min(self.min_gap, seconds))
            seconds -= self.min_gap
            if seconds <= 0:
                return
        self.watch.wait(seconds)

    def close(self) -> None:
        """Stop watching the folder."""
        self.watch.close()


def wait_until(check: Callable[[], T], seconds: float, db_path: Path) -> T:
    """check() until it returns something true or seconds have passed; return its last value."""
    value = check()
    if value or seconds <= 0:
        return value
    deadline = time.monotonic() + seconds
    waiter = ChangeWaiter(db_path)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return value
            waiter.wait(min(left, TICK))
            value = check()
            if value:
                return value
    finally:
        waiter.close()
