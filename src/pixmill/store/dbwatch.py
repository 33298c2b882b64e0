"""Notice commits to the store's database from any process, without polling it: inotify on Linux.

After each commit a writer rewrites one byte of a small signal file beside the database
(`CommitSignal.send`), and watchers sleep on inotify until that file is written.  Watching the WAL
itself woke a watcher at the first write of a commit, before the commit was visible, and then no
later write might follow: the watcher had to guess when to look again, and a job waited for the
dispatcher meanwhile.  Where inotify is missing, `wait` just sleeps and callers look on a timer.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import sys
import threading
import time
from pathlib import Path

__all__ = ["DbWatch", "CommitSignal", "Doorbell", "signal_path"]

_IN_MODIFY, _IN_CREATE = 0x2, 0x100
_EVENT = struct.Struct("iIII")   # wd, mask, cookie, len; then len bytes of name


def signal_path(db_path: Path) -> Path:
    """The file that writers of db_path touch after each commit."""
    return db_path.with_name(db_path.name + "-changed")


class CommitSignal:
    """The writer's side: tell every watcher of a database that a commit has just become visible."""

    def __init__(self, db_path: Path) -> None:
        self.path = signal_path(db_path)
        self.fd = -1
        self._lock = threading.Lock()

    def send(self) -> None:
        """Rewrite the signal file's one byte (an inotify IN_MODIFY for every watcher)."""
        with self._lock:
            try:
                if self.fd < 0:
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                os.pwrite(self.fd, b"\0", 0)
            except OSError:  # watchers still look on their timer
                self._close()

    def close(self) -> None:
        """Close the signal file."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class DbWatch:
    """Watches for commits to a database; `wait` returns early when one is signalled."""

    def __init__(self, db_path: Path) -> None:
        self.fd = -1
        self.name = os.fsencode(signal_path(db_path).name)
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(db_path.parent), _IN_MODIFY | _IN_CREATE) >= 0:
                    self.fd = fd
                elif fd >= 0:
                    os.close(fd)
            except (OSError, AttributeError):
                self.fd = -1

    @property
    def active(self) -> bool:
        """Whether commits are noticed (False: wait only sleeps)."""
        return self.fd >= 0

    def changed(self) -> bool:
        """Whether a commit was signalled since the last look (never blocks)."""
        if self.fd < 0:
            return False
        seen = False
        while True:
            try:
                events = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not events:
                return seen
            seen = self._names_signal(events) or seen

    def wait(self, seconds: float, *, bell: Doorbell | None = None) -> bool:
        """Block until a commit is signalled, the bell rings, or for `seconds`; return whether either happened."""
        fds = ([self.fd] if self.fd >= 0 else []) + ([bell.fd] if bell is not None else [])
        deadline = time.monotonic() + seconds
        while True:  # writes to other files of the folder (the WAL, blobs' temp files) do not end the wait
            ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            if bell is not None and bell.fd in ready:
                bell.clear()
                return True
            if self.changed():
                return True

    def close(self) -> None:
        """Stop watching."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _names_signal(self, events: bytes) -> bool:
        offset = 0
        while offset + _EVENT.size <= len(events):
            _, _, _, length = _EVENT.unpack_from(events, offset)
            name = events[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            if name == self.name:
                return True
            offset += _EVENT.size + length
        return False


class Doorbell:
    """A self-pipe: ring() from any thread (a future's done-callback, say) ends a DbWatch.wait(bell=...)."""

    def __init__(self) -> None:
        self.fd, self._write = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write, False)

    def ring(self, *_: object) -> None:
        """Wake the waiter (many rings before it wakes count as one)."""
        try:
            os.write(self._write, b"!")
        except (BlockingIOError, OSError):  # full: a wake is pending anyway; closed: no one waits
            pass

    def clear(self) -> None:
        """Forget the rings so far."""
        try:
            while os.read(self.fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close both ends."""
        for fd in (self.fd, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
