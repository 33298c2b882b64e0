"""The store's SQLite database: connections, transactions and the commit signal, in one class.

Everything SQLite-specific about connecting and transacting lives here, so that another backend
can stand behind the same calls: `connection()`, `write()`, `read()`, `watch()` and `close()`
(PostgreSQL's, in postgres.py, does). The
collaborators (jobs, open jobs, the task queue, blob bookkeeping) are handed a Database and never
open a connection themselves.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .dbwatch import CommitSignal, DbWatch
from .schema import migrate

__all__ = ["Database", "BUSY_TIMEOUT_MS"]

BUSY_TIMEOUT_MS = 30_000


class Database:
    """One SQLite file in WAL mode, one connection per thread; safe across threads and processes."""

    dialect = "sqlite"
    lock_rows = ""      # a write transaction holds the whole database already (BEGIN IMMEDIATE)
    skip_locked = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._signal = CommitSignal(path)   # wakes watchers (dispatchers, long polls)

    @classmethod
    def open(cls, path: Path) -> Database:
        """Open the database at path in WAL mode, creating and migrating it as needed."""
        database = cls(path)
        db = database.connection()
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        migrate(db)
        return database

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (autocommit: transactions are explicit)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection: committed and signalled, or rolled back."""
        # BEGIN IMMEDIATE takes the write lock up front, so two writers never deadlock on an upgrade.
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._signal.send()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one snapshot for several SELECTs."""
        db = self.connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def watch(self) -> DbWatch:
        """A watcher of this database's commits."""
        return DbWatch(self.path)

    def close(self) -> None:
        """Close every connection this database opened (in any thread) and the commit signal."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
        self._signal.close()
