"""Notice commits to the store's database from any process, without polling it: inotify on Linux.

Every commit in WAL mode writes the `-wal` file beside the database, so a write in the data dir's
folder is the sign that a job may have arrived.  Where inotify is missing, `wait` just sleeps.
"""

from __future__ import annotations

import ctypes
import os
import select
import sys
from pathlib import Path

__all__ = ["DbWatch"]

_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x80, 0x100


class DbWatch:
    """Watches the folder of a database for writes; `wait` returns early when one happens."""

    def __init__(self, folder: Path) -> None:
        self.fd = -1
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(folder),
                                                      _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE) >= 0:
                    self.fd = fd
                elif fd >= 0:
                    os.close(fd)
            except (OSError, AttributeError):
                self.fd = -1

    @property
    def active(self) -> bool:
        """Whether writes are noticed (False: wait only sleeps)."""
        return self.fd >= 0

    def changed(self) -> bool:
        """Whether anything was written since the last look (never blocks)."""
        if self.fd < 0:
            return False
        seen = False
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return seen
                seen = True
            except BlockingIOError:
                return seen

    def wait(self, seconds: float) -> bool:
        """Block until a write or for `seconds`; return whether a write was seen."""
        if self.fd < 0:
            select.select([], [], [], seconds)
            return False
        ready, _, _ = select.select([self.fd], [], [], seconds)
        return bool(ready) and self.changed()

    def close(self) -> None:
        """Stop watching."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
