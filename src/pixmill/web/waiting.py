"""Long polls: a GET that waits until what it asks for is ready, woken by commits to the store.

A client sends `Prefer: wait=N` (RFC 7240) with GET of a result or of a job, and the answer comes
as soon as the task (or the whole job) has ended, or after N seconds with the usual 202 or state.
Event streams wait the same way between their looks at a job.

One thread per web process sleeps until the store signals a commit (inotify, see dbwatch, or
PostgreSQL's LISTEN), then
runs every waiting request's check itself and wakes only the requests whose check came true:
waking every request on every commit to look for itself cost the web process much CPU under load
(GIL and thread switches). Each wait holds a server thread, so waits
share the event streams' slots; when none is free the answer comes at once, without the
preference applied.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..store.dbwatch import Doorbell

__all__ = ["MAX_WAIT", "requested_wait", "Waits", "Watch"]

MAX_WAIT = 30.0        # seconds: the longest wait a client may ask for
TICK = 1.0             # without a signal, look anyway this often (a writer that does not signal, no inotify)
LINGER = 10.0          # seconds the watching thread stays after the last wait, before it ends
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,20})(?:\.\d*)?\"?\s*(?:$|[,;])", re.IGNORECASE)


def requested_wait(headers: Mapping[str, str]) -> float:
    """The seconds a client asks to wait for with `Prefer: wait=N`, at most MAX_WAIT; 0 if it does not ask."""
    prefer = headers.get("Prefer") or ""
    match = _WAIT.search(prefer[:1000])
    return min(float(match.group(1)), MAX_WAIT) if match else 0.0


class Watch(Protocol):
    """What the watching thread sleeps on: the store's DbWatch (SQLite) or PgWatch (PostgreSQL)."""

    def wait(self, seconds: float, *, bell: Doorbell | None = None) -> bool: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class _Waiter:
    check: Callable[[], bool]
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    # Held while check() runs, and taken by the request before it returns: the watching thread then
    # never looks on a request's behalf after it has ended, when its store may be closed.
    looking: threading.Lock = field(default_factory=threading.Lock)
    ended: bool = False


class Waits:
    """Requests waiting for the store to change, served by one watching thread (started on demand)."""

    def __init__(self, watch: Callable[[], Watch]) -> None:
        self.new_watch = watch              # the store's database.watch
        self.commits = 0                  # commits signalled while the watching thread ran
        self._waiters: set[_Waiter] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_wait = 0.0

    def mark(self) -> int:
        """The count of commits so far, watching from now on (for next_commit's since)."""
        with self._lock:
            self._start()
            self._last_wait = time.monotonic()
            return self.commits

    def until(self, check: Callable[[], bool], seconds: float) -> bool:
        """Wait until check() is true (looked at after each commit) or seconds pass; return whether it came true.
        An exception from check() is raised here."""
        return self._wait(_Waiter(check), seconds)

    def next_commit(self, seconds: float, *, since: int) -> None:
        """Wait until a commit after the count `since` (taken from `commits` before looking), or seconds."""
        self._wait(_Waiter(lambda: self.commits > since), seconds)

    def _wait(self, waiter: _Waiter, seconds: float) -> bool:
        with self._lock:
            self._waiters.add(waiter)
            self._start()
        try:
            self._look(waiter)  # registered and watched first, so a commit from now on is not missed
            woke = waiter.ready.wait(seconds)
        finally:
            with self._lock:
                self._waiters.discard(waiter)
                self._last_wait = time.monotonic()
            with waiter.looking:
                waiter.ended = True
        if waiter.error is not None:
            raise waiter.error
        return woke

    def _start(self) -> None:
        if self._thread is None:  # watching from now on, before the caller's first look
            watch = self.new_watch()
            self._thread = threading.Thread(target=self._watch, args=(watch,), name="pixmill-waits", daemon=True)
            self._thread.start()

    def _watch(self, watch: Watch) -> None:
        try:
            while True:
                if watch.wait(TICK):
                    self.commits += 1
                with self._lock:
                    waiters = list(self._waiters)
                    if not waiters and time.monotonic() - self._last_wait > LINGER:
                        self._thread = None
                        return
                for waiter in waiters:
                    self._look(waiter)
        finally:
            watch.close()

    @staticmethod
    def _look(waiter: _Waiter) -> None:
        with waiter.looking:
            if waiter.ended:
                return
            try:
                if waiter.check():
                    waiter.ready.set()
            except Exception as exc:  # e.g. NotFound: the job was deleted meanwhile; the request raises it
                waiter.error = exc
                waiter.ready.set()
