"""Jobs and tasks: their states, the views the store returns, the tasks it is given, and `Jobs`,
the collaborator that records, shows, cancels and deletes sealed jobs."""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from enum import StrEnum

from ..config import Settings
from ..errors import InvalidRequest, NotFound
from ..imaging.pipeline import Pipeline
from ..imaging.process import Output
from .blobs import BlobFolder
from .blobstore import storage_full
from .database import Database
from .schema import select_in
from .webhooks import NewWebhook, Webhooks, WebhookView

__all__ = ["TaskState", "ENDED", "JobState", "JOB_ENDED", "TaskView", "JobView", "NewTask", "Jobs", "ORPHAN_GRACE",
           "new_job_id", "task_view", "job_view", "output_from_json", "output_to_json"]

ORPHAN_GRACE = 3600.0       # seconds an uploaded blob (or an open job) may wait before purge deletes it


class TaskState(StrEnum):
    """Where a task is: queued → running → done, failed or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


class JobState(StrEnum):
    """Where a job is: queued until a task starts, running, then done (every task ended) or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


JOB_ENDED = (JobState.DONE, JobState.CANCELLED)


@dataclass(frozen=True)
class TaskView:
    """One task as the API shows it."""

    n: int
    name: str
    pipeline: str
    state: TaskState
    attempts: int
    error: str | None
    width: int | None
    height: int | None
    result_format: str | None
    source_format: str | None
    notes: tuple[str, ...]
    created_at: float
    started_at: float | None
    finished_at: float | None
    input_blob: str
    result_blob: str | None


@dataclass(frozen=True)
class JobView:
    """One job and its tasks as the API shows them."""

    id: str
    owner: str | None
    state: JobState
    created_at: float
    output: Output
    tasks: tuple[TaskView, ...] = field(default=())
    webhook: WebhookView | None = None

    def counts(self) -> dict[str, int]:
        """The number of tasks in each state, zeros included."""
        counts = {state.value: 0 for state in TaskState}
        for task in self.tasks:
            counts[task.state.value] += 1
        return counts


@dataclass(frozen=True)
class NewTask:
    """A task to create: the client's file name (display text), its pipeline and its input blob; with data,
    a small input not stored yet, whose row (PIXMILL_INLINE_BYTES) the task's own transaction inserts."""

    name: str
    pipeline: Pipeline
    blob: str
    source_format: str | None = None
    data: bytes | None = field(default=None, repr=False)


def output_to_json(output: Output) -> str:
    """The Output as the JSON a job row stores."""
    return json.dumps(dataclasses.asdict(output))


def output_from_json(text: str) -> Output:
    """The Output stored as JSON, ignoring fields this version does not know."""
    known = {f.name for f in dataclasses.fields(Output)}
    return Output(**{k: v for k, v in json.loads(text).items() if k in known})


def task_view(row: sqlite3.Row) -> TaskView:
    """A task row as a TaskView."""
    return TaskView(n=row["n"], name=row["name"], pipeline=row["pipeline"], state=TaskState(row["state"]),
                    attempts=row["attempts"], error=row["error"], width=row["width"], height=row["height"],
                    result_format=row["result_format"], source_format=row["source_format"],
                    notes=tuple(json.loads(row["notes"])), created_at=row["created_at"],
                    started_at=row["started_at"], finished_at=row["finished_at"],
                    input_blob=row["input_blob"], result_blob=row["result_blob"])


def job_view(job: sqlite3.Row, rows: list[sqlite3.Row], webhook: WebhookView | None = None) -> JobView:
    """A job row and its task rows (and its webhook) as a JobView."""
    tasks = tuple(task_view(r) for r in rows)
    states = {t.state for t in tasks}
    if job["cancelled_at"] is not None:
        state = JobState.CANCELLED
    elif states <= set(ENDED):
        state = JobState.DONE
    elif states == {TaskState.QUEUED}:
        state = JobState.QUEUED
    else:
        state = JobState.RUNNING
    return JobView(id=job["id"], owner=job["owner"], state=state, created_at=job["created_at"],
                   output=output_from_json(job["output"]), tasks=tasks, webhook=webhook)


def new_job_id() -> str:
    """A fresh job id: 144 random bits, URL-safe, never starting with '-' (a shell would read an option)."""
    while (job_id := secrets.token_urlsafe(18)).startswith("-"):
        pass
    return job_id


class Jobs:
    """Sealed jobs and their tasks: each state change one method and one transaction."""

    def __init__(self, database: Database, blobs: BlobFolder, settings: Settings) -> None:
        self.database = database
        self.blobs = blobs
        self.settings = settings
        self.webhooks = Webhooks(database, settings)

    def create(self, tasks: list[NewTask], output: Output, *, owner: str | None = None,
               webhook: NewWebhook | None = None) -> JobView:
        """Record a job with all its tasks (and its webhook) in one transaction."""
        if not tasks:
            raise InvalidRequest("a job needs at least one image")
        job_id, now = new_job_id(), time.time()
        with self.database.write() as db:
            db.execute("INSERT INTO jobs (id, owner, created_at, output) VALUES (?, ?, ?, ?)",
                       (job_id, owner, now, output_to_json(output)))
            self.insert_tasks(db, job_id, tasks, 0)
            if webhook is not None:
                self.webhooks.insert(db, job_id, webhook)
        return self.get(job_id)

    def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        """The job with its tasks; NotFound if there is none or it belongs to another owner."""
        with self.database.read() as db:
            job = db.execute("SELECT * FROM jobs WHERE id = ? AND sealed = 1", (job_id,)).fetchone()
            if job is None or (owner is not None and job["owner"] != owner):
                raise NotFound(f"no such job: {job_id}")
            tasks = db.execute("SELECT * FROM tasks WHERE job_id = ? ORDER BY n", (job_id,)).fetchall()
            webhook = self.webhooks.view(db, job_id)
        return job_view(job, tasks, webhook)

    def unfinished(self, job_id: str, *, n: int | None = None, owner: str | None = None) -> int:
        """How many of the job's tasks (or only task n) are still queued or running; 0 once it is cancelled.
        NotFound as get. Cheaper than get, for waits that look often."""
        db = self.database.connection()
        job = db.execute("SELECT owner, cancelled_at FROM jobs WHERE id = ? AND sealed = 1", (job_id,)).fetchone()
        if job is None or (owner is not None and job["owner"] != owner):
            raise NotFound(f"no such job: {job_id}")
        where, args = ("AND n = ?", (job_id, n)) if n is not None else ("", (job_id,))
        row = db.execute(f"SELECT COUNT(*), SUM(CASE WHEN state IN ('queued', 'running') THEN 1 ELSE 0 END) "
                         f"FROM tasks WHERE job_id = ? {where}", args).fetchone()
        if not row[0]:
            raise NotFound(f"job {job_id} has no image number {n}")
        return 0 if job["cancelled_at"] is not None else row[1]

    def backlog(self, *, owner: str | None = None) -> tuple[int, int]:
        """(tasks queued in the whole store, unfinished sealed jobs of this owner, 0 without one): what
        back-pressure looks at before an upload is read."""
        db = self.database.connection()
        queued = db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'queued'").fetchone()[0]
        if owner is None:
            return queued, 0
        jobs = db.execute("SELECT COUNT(*) FROM jobs j WHERE owner = ? AND sealed = 1 AND cancelled_at IS NULL "
                          "AND EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id "
                          "AND t.state IN ('queued', 'running'))", (owner,)).fetchone()[0]
        return queued, jobs

    def page(self, *, owner: str | None, limit: int, before: tuple[float, str] | None = None) -> list[JobView]:
        """Up to `limit` sealed jobs (of one owner, when given), newest first, from just after `before`
        ((created_at, id) of the last job of the previous page): a stable order for cursors."""
        db = self.database.connection()
        where, args = ["sealed = 1"], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        ids = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE {' AND '.join(where)} "
                                        f"ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit))]
        views = []
        for job_id in ids:
            try:
                views.append(self.get(job_id))
            except NotFound:  # deleted meanwhile
                pass
        return views

    def recent(self, *, owner: str | None = None, limit: int = 50) -> list[JobView]:
        """The most recent jobs (of one owner, when given), newest first: the first page."""
        return self.page(owner=owner, limit=limit)

    def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Cancel a job: its queued and running tasks become cancelled; finished ones keep their results."""
        now = time.time()
        with self.database.write() as db:
            _owned(db, job_id, owner)
            db.execute("UPDATE jobs SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL", (now, job_id))
            db.execute("UPDATE tasks SET state = 'cancelled', finished_at = ?, lease_owner = NULL, "
                       "lease_expires = NULL WHERE job_id = ? AND state IN ('queued', 'running')", (now, job_id))
        return self.get(job_id)

    def delete(self, job_id: str, *, owner: str | None = None) -> None:
        """Cancel a job and delete its rows and blobs."""
        with self.database.write() as db:
            _owned(db, job_id, owner)
            keys = self.delete_rows(db, [job_id])
        self.blobs.delete(keys)

    def purge_expired(self, *, now: float | None = None) -> int:
        """Delete jobs older than the TTL with their blobs, and stale orphan uploads; return the jobs deleted."""
        now = time.time() if now is None else now
        with self.database.write() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE created_at < ? "
                                            "OR (sealed = 0 AND created_at < ?)",
                                            (now - self.settings.ttl_seconds, now - ORPHAN_GRACE))]
            keys = self.delete_rows(db, ids)
            orphans = [r[0] for r in db.execute(
                "SELECT key FROM blobs WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM tasks WHERE input_blob = blobs.key OR result_blob = blobs.key)",
                (now - ORPHAN_GRACE,))]
            select_in(db, "DELETE FROM blobs WHERE key IN ({})", orphans)
        self.blobs.delete(keys + orphans + self._unknown_files())
        self.blobs.sweep_temp(ORPHAN_GRACE)
        return len(ids)

    def insert_tasks(self, db: sqlite3.Connection, job_id: str, tasks: list[NewTask], start: int) -> None:
        """Insert queued tasks numbered from start, after checking that their input blobs are stored.
        Runs inside the caller's write transaction (db), so the job and its tasks appear together."""
        self._insert_inputs(db, [t for t in tasks if t.data is not None])
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

    def _insert_inputs(self, db: sqlite3.Connection, tasks: list[NewTask]) -> None:
        # Small inputs become rows here, under the quota, in the transaction that records their tasks.
        if not tasks:
            return
        used = db.execute(f"SELECT bytes FROM usage{self.database.lock_rows}").fetchone()[0]
        if used + sum(len(t.data) for t in tasks) > self.settings.quota_bytes:
            raise storage_full(used, self.settings.quota_bytes)
        now = time.time()
        db.executemany("INSERT INTO blobs (key, size, created_at, data) VALUES (?, ?, ?, ?)",
                       [(t.blob, len(t.data), now, t.data) for t in tasks])

    def delete_rows(self, db: sqlite3.Connection, ids: list[str]) -> list[str]:
        """Delete these jobs' rows, their tasks' and their blobs' inside the caller's write transaction (db);
        return the keys of the blobs with a file or object, which the caller deletes once it has committed."""
        keys: list[str] = []
        for row in select_in(db, "SELECT input_blob, result_blob FROM tasks WHERE job_id IN ({})", ids):
            keys.extend(k for k in row if k)
        inline = {r[0] for r in select_in(db, "SELECT key FROM blobs WHERE data IS NOT NULL AND key IN ({})", keys)}
        self.webhooks.delete_rows(db, ids)
        select_in(db, "DELETE FROM tasks WHERE job_id IN ({})", ids)
        select_in(db, "DELETE FROM jobs WHERE id IN ({})", ids)
        select_in(db, "DELETE FROM blobs WHERE key IN ({})", keys)
        return [k for k in keys if k not in inline]   # the rows held the bytes of the others

    def _unknown_files(self) -> list[str]:
        # A process killed after a blob's rename but before its transaction committed leaves a
        # file no row knows of. Listed first, then looked up: a file committed meanwhile is kept.
        files = self.blobs.keys_older_than(ORPHAN_GRACE)
        known = {r[0] for r in select_in(self.database.connection(), "SELECT key FROM blobs WHERE key IN ({})",
                                         files)}
        return [k for k in files if k not in known]


def _owned(db: sqlite3.Connection, job_id: str, owner: str | None) -> None:
    row = db.execute("SELECT owner FROM jobs WHERE id = ? AND sealed = 1", (job_id,)).fetchone()
    if row is None or (owner is not None and row[0] != owner):
        raise NotFound(f"no such job: {job_id}")
