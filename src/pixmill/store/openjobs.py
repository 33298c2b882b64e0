"""Open jobs: a job whose upload is still being read, so that its first images run meanwhile.

An upload of 40 images took the web process 0.3 s to read and store before the job existed, and
no worker had anything to do during that time.  When the form gives the pipeline (or each file's
operation) before the files, the web opens the job at the first file and adds each task as its
file is stored, while more of the body is to come; dispatchers claim them at once.  Files read
after the body's last byte wait for the seal, so a one-file upload is recorded in one
transaction.  An open job is invisible (get_job and the rest answer NotFound) until it is
sealed, when the upload has been accepted.  A refused upload discards its open job, results and
all; an upload whose process died leaves an open job that purge_expired deletes after the orphan
grace period.  If a `format` or `quality` field comes after files whose tasks already ran,
sealing puts those tasks back in the queue.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from ..errors import InvalidRequest, NotFound
from ..imaging.process import Output
from .blobs import BlobFolder
from .jobs import JobView, NewTask
from .schema import select_in

__all__ = ["OpenJobs", "insert_tasks"]


class OpenJobs:
    """Mixin for Store: the state changes of an upload's open job, each one method and one transaction."""

    blobs: BlobFolder
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    get_job: Callable[..., JobView]
    _delete_jobs: Callable[[sqlite3.Connection, list[str]], list[str]]

    def open_job(self, output: Output, *, owner: str | None = None) -> str:
        """Record a new open job (no tasks yet) and return its id."""
        job_id = secrets.token_urlsafe(18)
        with self._write() as db:
            db.execute("INSERT INTO jobs (id, owner, created_at, output, sealed) VALUES (?, ?, ?, ?, 0)",
                       (job_id, owner, time.time(), json.dumps(dataclasses.asdict(output))))
        return job_id

    def add_tasks(self, job_id: str, tasks: list[NewTask], *, start: int) -> None:
        """Add tasks numbered from start to an open job; dispatchers may claim them at once."""
        with self._write() as db:
            _open(db, job_id)
            insert_tasks(db, job_id, tasks, start)

    def seal_job(self, job_id: str, tasks: list[NewTask], output: Output, *, start: int) -> JobView:
        """Add the last tasks (numbered from start) and show the job; with another output than it was
        opened with, the tasks added before go back to the queue, their results deleted."""
        with self._write() as db:
            opened_with = _open(db, job_id)
            insert_tasks(db, job_id, tasks, start)
            stale: list[str] = []
            if opened_with != json.dumps(dataclasses.asdict(output)):
                stale = [r[0] for r in db.execute("SELECT result_blob FROM tasks WHERE job_id = ? AND n < ? "
                                                  "AND result_blob IS NOT NULL", (job_id, start))]
                db.execute("UPDATE tasks SET state = 'queued', attempts = 0, crashes = 0, error = NULL, "
                           "result_blob = NULL, result_format = NULL, width = NULL, height = NULL, notes = '[]', "
                           "started_at = NULL, finished_at = NULL, lease_owner = NULL, lease_expires = NULL "
                           "WHERE job_id = ? AND n < ?", (job_id, start))
                db.executemany("DELETE FROM blobs WHERE key = ?", [(k,) for k in stale])
            db.execute("UPDATE jobs SET output = ?, sealed = 1 WHERE id = ?",
                       (json.dumps(dataclasses.asdict(output)), job_id))
        self.blobs.delete(stale)
        return self.get_job(job_id)

    def discard_job(self, job_id: str) -> None:
        """Delete an open job with its rows and blobs (its upload was refused)."""
        with self._write() as db:
            keys = self._delete_jobs(db, [job_id])
        self.blobs.delete(keys)


def insert_tasks(db: sqlite3.Connection, job_id: str, tasks: list[NewTask], start: int) -> None:
    """Insert queued tasks numbered from start, after checking that their input blobs are stored."""
    keys = [t.blob for t in tasks]
    known = {r[0] for r in select_in(db, "SELECT key FROM blobs WHERE key IN ({})", keys)}
    missing = [k for k in keys if k not in known]
    if missing:
        raise InvalidRequest(f"blob {missing[0]} is not in the store")
    now = time.time()
    db.executemany(
        "INSERT INTO tasks (job_id, n, name, pipeline, state, created_at, input_blob, source_format) "
        "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        [(job_id, start + i, t.name, t.pipeline.text(), now, t.blob, t.source_format) for i, t in enumerate(tasks)])


def _open(db: sqlite3.Connection, job_id: str) -> str:
    """The output an open job was opened with; NotFound if it is not an open job."""
    row = db.execute("SELECT output FROM jobs WHERE id = ? AND sealed = 0", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"no open job {job_id}")
    return row[0]
