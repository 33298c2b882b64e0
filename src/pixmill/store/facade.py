"""The store: jobs and tasks in SQLite (WAL mode, the default) or PostgreSQL, and their images in a blob
folder (the default) or S3.

The store is the only thing the web service and the dispatchers share. Every state change of a
job or task is one method and one transaction, so either side may die at any moment and leave
nothing half-recorded. It is safe to use from several threads (one connection per thread) and
from several processes (SQLite's locking, with a busy timeout).

`Store` is a facade: the database and the blob folder are its parts, and `jobs`, `open_jobs`,
`queue` and `blob_store` are collaborators handed the database. Its methods delegate, so callers
keep one object to hold while each collaborator stays small.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..config import Settings
from ..imaging.process import Output, Result
from .blobs import BlobFolder, open_blobs
from .blobstore import BlobStore
from .database import Database
from .jobs import ORPHAN_GRACE, Jobs, JobView, NewTask, TaskState, TaskView
from .openjobs import OpenJobs
from .s3blobs import S3Blobs
from .taskqueue import Claim, TaskQueue
from .webhooks import Delivery, NewWebhook, WebhookState

if TYPE_CHECKING:  # psycopg is imported only by a store that has a PostgreSQL URL
    from .postgres import PostgresDatabase

__all__ = ["TaskState", "TaskView", "JobView", "NewTask", "Store", "ORPHAN_GRACE", "describe_store", "blob_location"]


class Store:
    """Jobs, tasks and blobs in one data dir; see the module docstring."""

    def __init__(self, settings: Settings, blobs: BlobFolder | S3Blobs,
                 database: Database | PostgresDatabase | None = None) -> None:
        self.settings = settings
        self.blobs = blobs
        self.database = database if database is not None else _database(settings, open=False)
        self.jobs = Jobs(self.database, blobs, settings)
        self.open_jobs = OpenJobs(self.database, blobs, self.jobs)
        self.queue = TaskQueue(self.database, blobs, settings)
        self.blob_store = BlobStore(self.database, blobs, settings)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """Open the store in settings.data_dir, creating and migrating it as needed."""
        # An absolute path: the web server hands blob paths to send_file, which would resolve a
        # relative one against the package folder, not the working directory.
        settings = dataclasses.replace(settings, data_dir=settings.data_dir.resolve())
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings, open_blobs(blob_location(settings)), _database(settings, open=True))

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        self.database.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Blobs

    def put_blob(self, source: bytes | BinaryIO, *, max_bytes: int | None = None,
                 enforce_quota: bool = True) -> str:
        """Store bytes or a stream as a new blob and return its key; ImageTooLarge or StorageFull if refused."""
        return self.blob_store.put(source, max_bytes=max_bytes, enforce_quota=enforce_quota)

    def blob_path(self, key: str) -> Path:
        """The file holding a blob (in the blob folder; S3 has none)."""
        return self.blobs.path(key)

    def blob_source(self, key: str) -> Path | BinaryIO:
        """A blob to send or copy: the folder's file, or a seekable file of its bytes (S3's, or its row's)."""
        data = self.blob_store.inline(key)
        return io.BytesIO(data) if data is not None else self.blobs.source(key)

    def read_blob(self, key: str) -> bytes:
        """A blob's bytes (NotFound if it is gone)."""
        data = self.blob_store.inline(key)
        return data if data is not None else self.blobs.read(key)

    def delete_blobs(self, keys: Iterable[str]) -> None:
        """Delete blobs that no job refers to yet, such as the uploads of a refused request."""
        self.blob_store.delete_unreferenced(keys)

    def blob_usage(self) -> int:
        """Bytes of blobs stored now, the figure the quota applies to."""
        return self.blob_store.usage()

    # Jobs

    def create_job(self, tasks: list[NewTask], output: Output, *, owner: str | None = None,
                   webhook: NewWebhook | None = None) -> JobView:
        """Record a job with all its tasks (and its webhook) in one transaction."""
        return self.jobs.create(tasks, output, owner=owner, webhook=webhook)

    def get_job(self, job_id: str, *, owner: str | None = None) -> JobView:
        """The job with its tasks; NotFound if there is none or it belongs to another owner."""
        return self.jobs.get(job_id, owner=owner)

    def unfinished(self, job_id: str, *, n: int | None = None, owner: str | None = None) -> int:
        """How many of the job's tasks (or only task n) are still queued or running; 0 once it is cancelled."""
        return self.jobs.unfinished(job_id, n=n, owner=owner)

    def backlog(self, *, owner: str | None = None) -> tuple[int, int]:
        """(tasks queued in the store, unfinished jobs of this owner): what back-pressure looks at."""
        return self.jobs.backlog(owner=owner)

    def page_of_jobs(self, *, owner: str | None, limit: int, before: tuple[float, str] | None = None) -> list[JobView]:
        """Up to `limit` jobs of the owner, newest first, after the (created_at, id) of a previous page's last."""
        return self.jobs.page(owner=owner, limit=limit, before=before)

    def list_jobs(self, *, owner: str | None = None, limit: int = 50) -> list[JobView]:
        """The most recent jobs (of one owner, when given), newest first."""
        return self.jobs.recent(owner=owner, limit=limit)

    def cancel_job(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Cancel a job: its queued and running tasks become cancelled; finished ones keep their results."""
        return self.jobs.cancel(job_id, owner=owner)

    def delete_job(self, job_id: str, *, owner: str | None = None) -> None:
        """Cancel a job and delete its rows and blobs."""
        self.jobs.delete(job_id, owner=owner)

    def purge_expired(self, *, now: float | None = None) -> int:
        """Delete jobs older than the TTL with their blobs, and stale orphan uploads; return the jobs deleted."""
        return self.jobs.purge_expired(now=now)

    # Open jobs

    def open_job(self, output: Output, *, owner: str | None = None) -> str:
        """Record a new open job (no tasks yet) and return its id."""
        return self.open_jobs.open(output, owner=owner)

    def add_tasks(self, job_id: str, tasks: list[NewTask], *, start: int) -> None:
        """Add tasks numbered from start to an open job; dispatchers may claim them at once."""
        self.open_jobs.add_tasks(job_id, tasks, start=start)

    def seal_job(self, job_id: str, tasks: list[NewTask], output: Output, *, start: int,
                 webhook: NewWebhook | None = None) -> JobView:
        """Add the last tasks (and the webhook) and show the job; with another output, the tasks added
        before run again."""
        return self.open_jobs.seal(job_id, tasks, output, start=start, webhook=webhook)

    def discard_job(self, job_id: str) -> None:
        """Delete an open job with its rows and blobs (its upload was refused)."""
        self.open_jobs.discard(job_id)

    # Webhooks

    def claim_webhooks(self, sender: str, limit: int) -> list[Delivery]:
        """Lease up to `limit` due webhook deliveries (their jobs have ended) to this sender."""
        return self.jobs.webhooks.claim(sender, limit)

    def settle_webhook(self, sender: str, delivery: Delivery, *, status: int | None, error: str | None,
                       final: bool = False) -> WebhookState | None:
        """Record how a delivery went (see Webhooks.settle); None if it is no longer this sender's."""
        return self.jobs.webhooks.settle(sender, delivery, status=status, error=error, final=final)

    def release_webhooks(self, sender: str, deliveries: list[Delivery]) -> None:
        """Give back claimed deliveries never attempted, uncounted."""
        self.jobs.webhooks.release(sender, deliveries)

    # Task queue

    def register_dispatcher(self, dispatcher_id: str, *, host: str, pid: int, pid_started: float | None,
                            engine: str, workers: int) -> None:
        """Record a dispatcher that has just started, for heartbeats and recovery."""
        self.queue.register_dispatcher(dispatcher_id, host=host, pid=pid, pid_started=pid_started, engine=engine,
                                       workers=workers)

    def claim(self, dispatcher_id: str, limit: int, *, busy: bool) -> list[Claim]:
        """Lease up to `limit` queued tasks; a suspect only alone: not while busy, nothing beside it."""
        return self.queue.claim(dispatcher_id, limit, busy=busy)

    def renew(self, dispatcher_id: str, *, workers: int | None = None) -> set[int]:
        """Extend the leases of this dispatcher's tasks and beat its heart; return the task ids it still holds."""
        return self.queue.renew(dispatcher_id, workers=workers)

    def complete(self, dispatcher_id: str, task_id: int, result: Result, *, started_at: float | None = None,
                 claim: int | None = None) -> bool:
        """Store a held task's result and mark it done; False if it is no longer ours or could not be stored."""
        return self.queue.complete(dispatcher_id, task_id, result, started_at=started_at, claim=claim)

    def complete_many(self, dispatcher_id: str, done: Iterable[tuple]) -> list[bool]:
        """complete() for several held tasks in one transaction; True for each task marked done."""
        return self.queue.complete_many(dispatcher_id, done)

    def fail(self, dispatcher_id: str, task_id: int, error: str, *, started_at: float | None = None) -> bool:
        """Mark a held task failed with a message for the user; False if it is no longer ours."""
        return self.queue.fail(dispatcher_id, task_id, error, started_at=started_at)

    def release(self, dispatcher_id: str, task_ids: Iterable[int]) -> int:
        """Put held tasks back in the queue without counting the attempt (a clean shutdown)."""
        return self.queue.release(dispatcher_id, task_ids)

    def crashed(self, dispatcher_id: str, task_ids: Iterable[int]) -> int:
        """Tasks in flight when the pool died: requeue as suspects, or fail those at max_attempts."""
        return self.queue.crashed(dispatcher_id, task_ids)

    def isolate(self, dispatcher_id: str, task_ids: Iterable[int]) -> int:
        """Put held tasks back uncounted, each to run alone next time (one of their chunk ran away)."""
        return self.queue.isolate(dispatcher_id, task_ids)

    def timed_out(self, dispatcher_id: str, task_id: int, error: str, others: Iterable[int]) -> None:
        """Fail a runaway task and put the others the pool held back, uncounted, as the pool is ended."""
        self.queue.timed_out(dispatcher_id, task_id, error, others)

    def requeue_dispatcher(self, dispatcher_id: str) -> int:
        """A dispatcher died: requeue its tasks at once, counting the attempt, and mark it stopped."""
        return self.queue.requeue_dispatcher(dispatcher_id)

    def recover_dead(self, host: str, is_dead: Callable[[int, float | None], bool]) -> int:
        """Requeue the tasks of this host's dispatchers whose process is gone; return the tasks requeued."""
        return self.queue.recover_dead(host, is_dead)

    def requeue_silent(self, dispatcher_id: str, *, silent_for: float, now: float | None = None) -> int:
        """Requeue the tasks of other dispatchers (any host) whose heartbeat stopped; return the tasks requeued."""
        return self.queue.requeue_silent(dispatcher_id, silent_for=silent_for, now=now)

    def requeue_expired(self, *, now: float | None = None) -> int:
        """Requeue running tasks whose lease ran out (their dispatcher died or hung), counting the attempt."""
        return self.queue.requeue_expired(now=now)

    def stop_dispatcher(self, dispatcher_id: str) -> None:
        """Record that a dispatcher stopped cleanly."""
        self.queue.stop_dispatcher(dispatcher_id)

    # Monitoring

    def finished_since(self, since: float) -> list[tuple[int, float, float]]:
        """(task id, finished_at, seconds of processing) of the tasks done after `since`."""
        return self.queue.finished_since(since)

    def stats(self) -> dict:
        """Task counts per state, queue depth, live workers and recent task durations (for /metrics)."""
        return {**self.queue.stats(), "blob_bytes": self.blob_store.usage()}

    def live_dispatchers(self, within: float = 15.0) -> list[dict]:
        """The dispatcher nodes whose heartbeat is at most `within` seconds old (id, host, workers, heartbeat...)."""
        return self.queue.live_dispatchers(within)

    def workers_alive(self, within: float = 15.0) -> int:
        """Pool workers of the dispatchers whose heartbeat is at most `within` seconds old."""
        return self.queue.workers_alive(within)


def _database(settings: Settings, *, open: bool) -> Database | PostgresDatabase:
    """PostgreSQL when settings name one, else the data dir's SQLite file; opened (and migrated) or not."""
    if settings.database_url:
        from .postgres import PostgresDatabase

        return PostgresDatabase.open(settings.database_url) if open else PostgresDatabase(settings.database_url)
    return Database.open(settings.db_path) if open else Database(settings.db_path)


def blob_location(settings: Settings) -> str:
    """Where the blobs are, as open_blobs takes it: the S3 URL, or the data dir's blob folder."""
    return settings.blob_url or str(settings.blob_dir)


def describe_store(settings: Settings) -> str:
    """Where the store keeps things, for a start-up line (a database URL without its password)."""
    if settings.database_url:
        from .postgres import redact

        jobs = f"jobs in {redact(settings.database_url)}"
    else:
        jobs = f"jobs in {settings.db_path.resolve()}"
    return f"{jobs}, images in {settings.blob_url or settings.blob_dir.resolve()}"
