"""Open jobs: a job whose upload is still being read, so that its first images run meanwhile.

While the web process read and stored a many-image upload before the job existed, no worker had
anything to do.  When the form gives the pipeline (or each file's operation) before the files, the
web opens the job at the first file and adds each task as its file is stored, while more of the body
is to come; dispatchers claim them at once.  Files read after the body's last byte wait for the
seal, so a one-file upload is recorded in one transaction.  An open job is invisible (Jobs.get and
the rest answer NotFound) until it is sealed, when the upload has been accepted.  A refused upload
discards its open job, results and all; an upload whose process died leaves an open job that
Jobs.purge_expired deletes after the orphan grace period.  If a `format` or `quality` field comes
after files whose tasks already ran, sealing puts those tasks back in the queue.
"""

from __future__ import annotations

import sqlite3
import time

from ..errors import NotFound
from ..imaging.process import Output
from .blobs import BlobFolder
from .database import Database
from .jobs import Jobs, JobView, NewTask, new_job_id, output_to_json
from .webhooks import NewWebhook

__all__ = ["OpenJobs"]


class OpenJobs:
    """The state changes of an upload's open job, each one method and one transaction."""

    def __init__(self, database: Database, blobs: BlobFolder, jobs: Jobs) -> None:
        self.database = database
        self.blobs = blobs
        self.jobs = jobs

    def open(self, output: Output, *, owner: str | None = None) -> str:
        """Record a new open job (no tasks yet) and return its id."""
        job_id = new_job_id()
        with self.database.write() as db:
            db.execute("INSERT INTO jobs (id, owner, created_at, output, sealed) VALUES (?, ?, ?, ?, 0)",
                       (job_id, owner, time.time(), output_to_json(output)))
        return job_id

    def add_tasks(self, job_id: str, tasks: list[NewTask], *, start: int) -> None:
        """Add tasks numbered from start to an open job; dispatchers may claim them at once."""
        with self.database.write() as db:
            _open(db, job_id)
            self.jobs.insert_tasks(db, job_id, tasks, start)

    def seal(self, job_id: str, tasks: list[NewTask], output: Output, *, start: int,
             webhook: NewWebhook | None = None) -> JobView:
        """Add the last tasks (numbered from start) and the webhook, and show the job; with another output
        than it was opened with, the tasks added before go back to the queue, their results deleted."""
        with self.database.write() as db:
            opened_with = _open(db, job_id)
            self.jobs.insert_tasks(db, job_id, tasks, start)
            stale: list[str] = []
            if opened_with != output_to_json(output):
                stale = [r[0] for r in db.execute("SELECT result_blob FROM tasks WHERE job_id = ? AND n < ? "
                                                  "AND result_blob IS NOT NULL", (job_id, start))]
                db.execute("UPDATE tasks SET state = 'queued', attempts = 0, crashes = 0, error = NULL, "
                           "result_blob = NULL, result_format = NULL, width = NULL, height = NULL, notes = '[]', "
                           "started_at = NULL, finished_at = NULL, lease_owner = NULL, lease_expires = NULL "
                           "WHERE job_id = ? AND n < ?", (job_id, start))
                db.executemany("DELETE FROM blobs WHERE key = ?", [(k,) for k in stale])
            if webhook is not None:
                self.jobs.webhooks.insert(db, job_id, webhook)
            db.execute("UPDATE jobs SET output = ?, sealed = 1 WHERE id = ?", (output_to_json(output), job_id))
        self.blobs.delete(stale)
        return self.jobs.get(job_id)

    def discard(self, job_id: str) -> None:
        """Delete an open job with its rows and blobs (its upload was refused)."""
        with self.database.write() as db:
            keys = self.jobs.delete_rows(db, [job_id])
        self.blobs.delete(keys)


def _open(db: sqlite3.Connection, job_id: str) -> str:
    """The output an open job was opened with; NotFound if it is not an open job."""
    row = db.execute("SELECT output FROM jobs WHERE id = ? AND sealed = 0", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"no open job {job_id}")
    return row[0]
