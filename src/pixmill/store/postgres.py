"""The store's PostgreSQL database, behind the same calls as the SQLite one: `connection()`, `write()`,
`read()`, `watch()` and `close()`.

The collaborators keep one text of every query, in SQLite's dialect with `?` parameters; the
connection handed to them translates the parameters for psycopg and gives rows that are read by
position or by name, as sqlite3.Row. A commit wakes watchers through NOTIFY, sent inside the
transaction so that it is delivered exactly when the commit becomes visible. A connection that
broke (the server restarted) is replaced at the next call, so a caller that retries reconnects.
"""

from __future__ import annotations

import functools
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg import pq

from .dbwatch import Doorbell
from .pgschema import migrate_postgres

__all__ = ["PostgresDatabase", "PgWatch", "CHANNEL", "redact"]

CHANNEL = "pixmill_commits"
CONNECT_TIMEOUT = 10          # seconds to reach the server before a call fails
RECONNECT_TICK = 0.5          # seconds a watcher without a connection waits before trying again


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


def _text(params: Sequence[Any]) -> tuple:
    # PostgreSQL's text holds no NUL, which SQLite's does: a guessed job id may contain one (names lose
    # theirs on upload). As U+FFFD it still matches nothing, where the NUL would fail the query.
    return tuple(p.replace("\0", "\ufffd") if isinstance(p, str) and "\0" in p else p for p in params)


@functools.lru_cache(maxsize=512)
def _psycopg_sql(sql: str) -> str:
    # The collaborators' SQL never holds a literal '?' or '%', so this translation is exact.
    return sql.replace("%", "%%").replace("?", "%s")


class Row(Sequence):
    """One result row, read by position or by column name, as sqlite3.Row."""

    __slots__ = ("_values", "_names")

    def __init__(self, values: Sequence[Any], names: dict[str, int]) -> None:
        self._values, self._names = values, names

    def __getitem__(self, key: Any) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._names)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))})"


def _rows(cursor: psycopg.Cursor) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


class Connection:
    """A psycopg connection that runs the collaborators' SQLite-dialect queries.

    Outside a transaction (`reconnect` given) a statement that finds the connection broken, because the
    server restarted since its last use, runs once more on a fresh one: nothing of it had happened."""

    def __init__(self, conn: psycopg.Connection, reconnect: Callable[[], psycopg.Connection] | None = None) -> None:
        self.conn = conn
        self.reconnect = reconnect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        """Run one statement; the cursor reads its rows and rowcount."""
        try:
            return self.conn.execute(_psycopg_sql(sql), _text(params))
        except psycopg.OperationalError:
            if self.reconnect is None or not self.conn.broken:
                raise
            self.conn = self.reconnect()
            return self.conn.execute(_psycopg_sql(sql), _text(params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        """Run one statement for each set of parameters."""
        cursor = self.conn.cursor()
        params = [_text(p) for p in seq]
        if params:
            cursor.executemany(_psycopg_sql(sql), params)
        return cursor


class PostgresDatabase:
    """A PostgreSQL database, one autocommit connection per thread; safe across threads, processes and hosts."""

    dialect = "postgresql"
    lock_rows = " FOR UPDATE"               # a read that a write depends on, kept until commit
    skip_locked = " FOR UPDATE SKIP LOCKED"  # claims pass over the rows another dispatcher is claiming

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> PostgresDatabase:
        """Connect to the database at url and migrate it as needed."""
        database = cls(url)
        migrate_postgres(database._connect())
        return database

    def connection(self) -> Connection:
        """This thread's connection, opened on first use and again after it broke."""
        return Connection(self._connect(), reconnect=self._connect)

    def _connect(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                self._forget(conn)
            conn = psycopg.connect(self.url, autocommit=True, row_factory=_rows, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="pixmill")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction on this thread's connection: committed and notified, or rolled back."""
        with ExitStack() as stack:
            db = Connection(self._begin(stack))
            yield db
            db.execute(f"NOTIFY {CHANNEL}")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one snapshot for several SELECTs."""
        with ExitStack() as stack:
            conn = self._begin(stack)
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield Connection(conn)

    def _begin(self, stack: ExitStack) -> psycopg.Connection:
        """BEGIN on this thread's connection, on a fresh one if it broke since its last use."""
        conn = self._connect()
        try:
            stack.enter_context(conn.transaction())
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            conn = self._connect()
            stack.enter_context(conn.transaction())
        return conn

    def watch(self) -> PgWatch:
        """A watcher of this database's commits."""
        return PgWatch(self.url)

    def close(self) -> None:
        """Close every connection this database opened (in any thread)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _forget(self, conn: psycopg.Connection) -> None:
        conn.close()
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)


class PgWatch:
    """Watches for commits to a PostgreSQL database by LISTEN; `wait` returns early when one is notified.

    Without a connection (the server is restarting) `wait` sleeps a moment and answers True, so the
    caller looks: commits made meanwhile were not notified to anyone."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection | None = None
        self._listen()

    @property
    def active(self) -> bool:
        """Always: commits are noticed, or a lost connection makes every wait end early."""
        return True

    def changed(self) -> bool:
        """Whether a commit was notified since the last look (never blocks)."""
        if self.conn is None:
            return not self._listen()
        return self._drain()

    def wait(self, seconds: float, *, bell: Doorbell | None = None) -> bool:
        """Block until a commit is notified, the bell rings, or for `seconds`; return whether either happened."""
        if self.conn is None and not self._listen():
            self._sleep(min(seconds, RECONNECT_TICK), bell)
            return True
        deadline = time.monotonic() + seconds
        while True:
            if self._drain():
                return True
            if self.conn is None:
                return True
            fds = [self.conn.fileno()] + ([bell.fd] if bell is not None else [])
            ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            if bell is not None and bell.fd in ready:
                bell.clear()
                return True

    def close(self) -> None:
        """Stop listening."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _listen(self) -> bool:
        try:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                        application_name="pixmill-watch")
            self.conn.execute(f"LISTEN {CHANNEL}")
            return True
        except psycopg.Error:
            self.close()
            return False

    def _drain(self) -> bool:
        """Read what the server sent; whether it held a notification (a lost connection counts as one)."""
        assert self.conn is not None
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error:
            self.close()
            return True
        if pgconn.status != pq.ConnStatus.OK:
            self.close()
            return True
        seen = False
        while pgconn.notifies() is not None:
            seen = True
        return seen

    @staticmethod
    def _sleep(seconds: float, bell: Doorbell | None) -> None:
        if bell is None:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([bell.fd], [], [], seconds)
        if ready:
            bell.clear()
