"""The store: jobs and tasks in SQLite (WAL mode) and their images in a blob folder, in one data dir.

The store is the only thing the web service and the dispatchers share. Every state change of a
job or task is one method and one transaction, so either side may die at any moment and leave
nothing half-recorded. It is safe to use from several threads (one connection per thread) and
from several processes (SQLite's locking, with a busy timeout).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..config import Settings
from ..errors import InvalidRequest, NotFound, StorageFull
from ..imaging.process import Output
from .blobs import BlobFolder, human_size, new_key
from .dbwatch import CommitSignal
from .jobs import JobView, NewTask, TaskState, TaskView, job_view
from .openjobs import OpenJobs, insert_tasks
from .schema import migrate, select_in
from .taskqueue import TaskQueue

__all__ = ["TaskState", "TaskView", "JobView", "NewTask", "Store"]

BUSY_TIMEOUT_MS = 30_000
ORPHAN_GRACE = 3600.0       # seconds an uploaded blob (or an open job) may wait before purge deletes it


class Store(TaskQueue, OpenJobs):
    """Jobs, tasks and blobs in one data dir; see the module docstring."""

    def __init__(self, settings: Settings, blobs: BlobFolder):
        self.settings = settings
        self.blobs = blobs
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._signal = CommitSignal(settings.db_path)   # wakes watchers (dispatchers, long polls)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """Open the store in settings.data_dir, creating and migrating it as needed."""
        # An absolute path: the web server hands blob paths to send_file, which would resolve a
        # relative one against the package folder, not the working directory.
        settings = dataclasses.replace(settings, data_dir=settings.data_dir.resolve())
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = cls(settings, BlobFolder(settings.blob_dir))
        db = store._db()
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        migrate(db)
        return store

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
        self._signal.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Blobs

    def put_blob(self, source: bytes | BinaryIO, *, max_bytes: int | None = None,
                 enforce_quota: bool = True) -> str:
        """Store bytes or a stream as a new blob and return its key; ImageTooLarge or StorageFull if refused."""
        quota = self.settings.quota_bytes if enforce_quota else None
        used = self.blob_usage() if quota is not None else 0

        def check(size: int) -> None:
            if quota is not None and used + size > quota:
                raise self._full(used)

        tmp, size = self.blobs.write_temp(source, max_bytes=max_bytes, check=check)
        key = new_key()
        try:
            with self._write() as db:
                used = db.execute("SELECT bytes FROM usage").fetchone()[0]
                check(size)
                db.execute("INSERT INTO blobs (key, size, created_at) VALUES (?, ?, ?)", (key, size, time.time()))
                self.blobs.commit(tmp, key)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self.blobs.delete([key])  # the transaction rolled back, so nothing refers to it
            raise
        return key

    def blob_path(self, key: str) -> Path:
        """The file holding a blob."""
        return self.blobs.path(key)

    def read_blob(self, key: str) -> bytes:
        """A blob's bytes (NotFound if it is gone)."""
        return self.blobs.read(key)

    def delete_blobs(self, keys) -> None:
        """Delete blobs that no job refers to yet, such as the uploads of a refused request."""
        keys = list(keys)
        with self._write() as db:
            db.executemany("DELETE FROM blobs WHERE key = ? AND NOT EXISTS "
                           "(SELECT 1 FROM tasks WHERE input_blob = ? OR result_blob = ?)",
                           [(k, k, k) for k in keys])
        self.blobs.delete(k for k in keys if not self._blob_known(k))

    def blob_usage(self) -> int:
        """Bytes of blobs stored now, the figure the quota applies to."""
        return self._db().execute("SELECT bytes FROM usage").fetchone()[0]

    # Jobs

    def create_job(self, tasks: list[NewTask], output: Output, *, owner: str | None = None) -> JobView:
        """Record a job with all its tasks in one transaction."""
        if not tasks:
            raise InvalidRequest("a job needs at least one image")
        job_id, now = secrets.token_urlsafe(18), time.time()
        with self._write() as db:
            db.execute("INSERT INTO jobs (id, owner, created_at, output) VALUES (?, ?, ?, ?)",
                       (job_id, owner, now, json.dumps(dataclasses.asdict(output))))
            insert_tasks(db, job_id, tasks, 0)
        return self.get_job(job_id)

    def get_job(self, job_id: str, *, owner: str | None = None) -> JobView:
        """The job with its tasks; NotFound if there is none or it belongs to another owner."""
        db = self._db()
        with self._read(db):
            job = db.execute("SELECT * FROM jobs WHERE id = ? AND sealed = 1", (job_id,)).fetchone()
            if job is None or (owner is not None and job["owner"] != owner):
                raise NotFound(f"no such job: {job_id}")
            tasks = db.execute("SELECT * FROM tasks WHERE job_id = ? ORDER BY n", (job_id,)).fetchall()
        return job_view(job, tasks)

    def unfinished(self, job_id: str, *, n: int | None = None, owner: str | None = None) -> int:
        """How many of the job's tasks (or only task n) are still queued or running; 0 once it is cancelled.
        NotFound as get_job. Cheaper than get_job, for waits that look often."""
        db = self._db()
        job = db.execute("SELECT owner, cancelled_at FROM jobs WHERE id = ? AND sealed = 1", (job_id,)).fetchone()
        if job is None or (owner is not None and job["owner"] != owner):
            raise NotFound(f"no such job: {job_id}")
        where, args = ("AND n = ?", (job_id, n)) if n is not None else ("", (job_id,))
        row = db.execute(f"SELECT COUNT(*), SUM(state IN ('queued', 'running')) FROM tasks WHERE job_id = ? {where}",
                         args).fetchone()
        if not row[0]:
            raise NotFound(f"job {job_id} has no image number {n}")
        return 0 if job["cancelled_at"] is not None else row[1]

    def list_jobs(self, *, owner: str | None = None, limit: int = 50) -> list[JobView]:
        """The most recent jobs (of one owner, when given), newest first."""
        db = self._db()
        where, args = ("AND owner = ?", [owner]) if owner is not None else ("", [])
        ids = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE sealed = 1 {where} ORDER BY created_at DESC "
                                        f"LIMIT ?", (*args, limit))]
        views = []
        for job_id in ids:
            try:
                views.append(self.get_job(job_id))
            except NotFound:  # deleted meanwhile
                pass
        return views

    def cancel_job(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Cancel a job: its queued and running tasks become cancelled; finished ones keep their results."""
        now = time.time()
        with self._write() as db:
            self._owned(db, job_id, owner)
            db.execute("UPDATE jobs SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL", (now, job_id))
            db.execute("UPDATE tasks SET state = 'cancelled', finished_at = ?, lease_owner = NULL, "
                       "lease_expires = NULL WHERE job_id = ? AND state IN ('queued', 'running')", (now, job_id))
        return self.get_job(job_id)

    def delete_job(self, job_id: str, *, owner: str | None = None) -> None:
        """Cancel a job and delete its rows and blobs."""
        with self._write() as db:
            self._owned(db, job_id, owner)
            keys = self._delete_jobs(db, [job_id])
        self.blobs.delete(keys)

    def purge_expired(self, *, now: float | None = None) -> int:
        """Delete jobs older than the TTL with their blobs, and stale orphan uploads; return the jobs deleted."""
        now = time.time() if now is None else now
        with self._write() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE created_at < ? "
                                            "OR (sealed = 0 AND created_at < ?)",
                                            (now - self.settings.ttl_seconds, now - ORPHAN_GRACE))]
            keys = self._delete_jobs(db, ids)
            orphans = [r[0] for r in db.execute(
                "SELECT key FROM blobs WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM tasks WHERE input_blob = blobs.key OR result_blob = blobs.key)",
                (now - ORPHAN_GRACE,))]
            select_in(db, "DELETE FROM blobs WHERE key IN ({})", orphans)
        self.blobs.delete(keys + orphans + self._unknown_files())
        self.blobs.sweep_temp(ORPHAN_GRACE)
        return len(ids)

    # Monitoring

    def finished_since(self, since: float) -> list[tuple[int, float, float]]:
        """(task id, finished_at, seconds of processing) of the tasks done after `since`."""
        return [tuple(row) for row in self._db().execute(
            "SELECT id, finished_at, finished_at - started_at FROM tasks WHERE state = 'done' "
            "AND finished_at > ? AND started_at IS NOT NULL ORDER BY finished_at LIMIT 10000", (since,))]

    def stats(self) -> dict:
        """Task counts per state, queue depth, live workers and recent task durations (for /metrics)."""
        db = self._db()
        counts = {state.value: 0 for state in TaskState}
        for state, n in db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"):
            counts[state] = n
        durations = [r[0] for r in db.execute(
            "SELECT finished_at - started_at FROM tasks WHERE finished_at > ? AND started_at IS NOT NULL "
            "AND state = 'done' ORDER BY finished_at DESC LIMIT 1000", (time.time() - 300,))]
        return {"tasks": counts, "queue_depth": counts["queued"], "workers": self.workers_alive(),
                "durations": durations, "blob_bytes": self.blob_usage()}

    def workers_alive(self, within: float = 15.0) -> int:
        """Pool workers of the dispatchers whose heartbeat is at most `within` seconds old."""
        row = self._db().execute("SELECT COALESCE(SUM(workers), 0) FROM dispatchers WHERE stopped_at IS NULL "
                                 "AND heartbeat > ?", (time.time() - within,)).fetchone()
        return row[0]

    # Plumbing

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.settings.db_path, timeout=BUSY_TIMEOUT_MS / 1000,
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
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers never deadlock on an upgrade.
        db = self._db()
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
    def _read(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN")  # one snapshot for several SELECTs
        try:
            yield
        finally:
            db.execute("COMMIT")

    def _owned(self, db: sqlite3.Connection, job_id: str, owner: str | None) -> None:
        row = db.execute("SELECT owner FROM jobs WHERE id = ? AND sealed = 1", (job_id,)).fetchone()
        if row is None or (owner is not None and row[0] != owner):
            raise NotFound(f"no such job: {job_id}")

    def _delete_jobs(self, db: sqlite3.Connection, ids: list[str]) -> list[str]:
        keys: list[str] = []
        for row in select_in(db, "SELECT input_blob, result_blob FROM tasks WHERE job_id IN ({})", ids):
            keys.extend(k for k in row if k)
        select_in(db, "DELETE FROM tasks WHERE job_id IN ({})", ids)
        select_in(db, "DELETE FROM jobs WHERE id IN ({})", ids)
        select_in(db, "DELETE FROM blobs WHERE key IN ({})", keys)
        return keys

    def _unknown_files(self) -> list[str]:
        # A process killed after a blob's rename but before its transaction committed leaves a
        # file no row knows of. Listed first, then looked up: a file committed meanwhile is kept.
        files = self.blobs.keys_older_than(ORPHAN_GRACE)
        known = {r[0] for r in select_in(self._db(), "SELECT key FROM blobs WHERE key IN ({})", files)}
        return [k for k in files if k not in known]

    def _blob_known(self, key: str) -> bool:
        return self._db().execute("SELECT 1 FROM blobs WHERE key = ?", (key,)).fetchone() is not None

    def _full(self, used: int) -> StorageFull:
        quota = self.settings.quota_bytes
        return StorageFull(f"the storage quota is full ({human_size(used)} of {human_size(quota)} used); "
                           "new jobs are refused until old ones expire or are deleted")

