"""The store's task queue: the state changes dispatchers make, each one method and one transaction.

A claimed task is `running` with a lease held by one dispatcher. `attempts` counts the times a
task was started; `crashes` counts the times a pool died while it was in flight. A task that was
in flight during a crash is a suspect: dispatchers run suspects one at a time, alone, so the
task that really kills workers is found and fails after `max_attempts`, while the others pass.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ..config import Settings
from ..errors import PixmillError
from ..imaging.process import Output, Result
from .blobs import BlobFolder, Staged, new_key
from .database import Database
from .jobs import TaskState, output_from_json

__all__ = ["Claim", "Finished", "StoredResult", "TaskQueue", "crash_message"]

log = logging.getLogger("pixmill.store")


def crash_message(crashes: int) -> str:
    """The error of a task that crashed its worker on every attempt."""
    return f"worker crashed while processing this image ({crashes} attempts)"


@dataclass(frozen=True)
class Claim:
    """A task a dispatcher has claimed: what to run and on which input."""

    id: int
    job_id: str
    n: int
    name: str
    pipeline: str
    input_blob: str
    output: Output
    attempts: int
    suspect: bool
    claims: int = 0          # this claim's number: only its result may be stored (see complete_many)
    input_data: bytes | None = None   # the input's bytes when its row holds them (a small blob)


@dataclass(frozen=True)
class StoredResult:
    """A result a worker has already staged in the blob backend (worker/stored.py): where, and what it is."""

    staged: Staged
    format: str
    width: int
    height: int
    notes: tuple[str, ...] = ()


class Finished(NamedTuple):
    """A held task's result to store: its id, the result (its bytes, or already staged by the worker),
    when it started and the claim it ran under."""

    task_id: int
    result: Result | StoredResult
    started_at: float | None = None
    claim: int | None = None   # Claim.claims; None: any claim by this dispatcher


class TaskQueue:
    """Claiming, leasing and recording tasks, and the dispatchers that hold them."""

    def __init__(self, database: Database, blobs: BlobFolder, settings: Settings) -> None:
        self.database = database
        self.blobs = blobs
        self.settings = settings

    def register_dispatcher(self, dispatcher_id: str, *, host: str, pid: int, pid_started: float | None,
                            engine: str, workers: int) -> None:
        """Record a dispatcher that has just started, for heartbeats and recovery."""
        now = time.time()
        with self.database.write() as db:
            db.execute("INSERT INTO dispatchers (id, host, pid, pid_started, engine, workers, started_at, heartbeat) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host, "
                       "pid = excluded.pid, pid_started = excluded.pid_started, engine = excluded.engine, "
                       "workers = excluded.workers, started_at = excluded.started_at, "
                       "heartbeat = excluded.heartbeat, stopped_at = NULL",
                       (dispatcher_id, host, pid, pid_started, engine, workers, now, now))

    def claim(self, dispatcher_id: str, limit: int, *, busy: bool) -> list[Claim]:
        """Lease up to `limit` queued tasks; a suspect only alone: not while busy, nothing beside it."""
        if self.database.connection().execute("SELECT 1 FROM tasks WHERE state = 'queued' LIMIT 1").fetchone() is None:
            return []  # the common idle case, without taking the write lock
        now = time.time()
        lock = self.database.skip_locked   # PostgreSQL: rows another dispatcher is claiming are passed over
        with self.database.write() as db:
            isolating = db.execute("SELECT 1 FROM tasks WHERE lease_owner = ? AND state = 'running' "
                                   "AND crashes > 0", (dispatcher_id,)).fetchone()
            suspect = db.execute(f"SELECT id FROM tasks WHERE state = 'queued' AND crashes > 0 "
                                 f"ORDER BY id LIMIT 1{lock}").fetchone()
            if isolating:
                ids = []
            elif suspect is not None:
                ids = [] if busy else [suspect[0]]
            else:
                ids = [r[0] for r in db.execute(f"SELECT id FROM tasks WHERE state = 'queued' AND crashes = 0 "
                                                f"ORDER BY id LIMIT ?{lock}", (limit,))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            db.execute(f"UPDATE tasks SET state = 'running', attempts = attempts + 1, claims = claims + 1, "
                       f"started_at = ?, lease_owner = ?, lease_expires = ? WHERE id IN ({marks}) "
                       f"AND state = 'queued'", (now, dispatcher_id, now + self.settings.lease_seconds, *ids))
            rows = db.execute(f"SELECT t.*, j.output, b.data AS input_data FROM tasks t JOIN jobs j ON j.id = t.job_id "
                              f"LEFT JOIN blobs b ON b.key = t.input_blob WHERE t.id IN ({marks}) ORDER BY t.id",
                              ids).fetchall()
        return [Claim(id=r["id"], job_id=r["job_id"], n=r["n"], name=r["name"], pipeline=r["pipeline"],
                      input_blob=r["input_blob"], output=output_from_json(r["output"]),
                      attempts=r["attempts"], suspect=r["crashes"] > 0, claims=r["claims"],
                      input_data=None if r["input_data"] is None else bytes(r["input_data"])) for r in rows]

    def renew(self, dispatcher_id: str, *, workers: int | None = None) -> set[int]:
        """Extend the leases of this dispatcher's tasks and beat its heart; return the task ids it still holds."""
        now = time.time()
        with self.database.write() as db:
            db.execute("UPDATE tasks SET lease_expires = ? WHERE lease_owner = ? AND state = 'running'",
                       (now + self.settings.lease_seconds, dispatcher_id))
            db.execute("UPDATE dispatchers SET heartbeat = ?, workers = COALESCE(?, workers) WHERE id = ?",
                       (now, workers, dispatcher_id))
            return {r[0] for r in db.execute("SELECT id FROM tasks WHERE lease_owner = ? AND state = 'running'",
                                             (dispatcher_id,))}

    def complete(self, dispatcher_id: str, task_id: int, result: Result | StoredResult, *,
                 started_at: float | None = None, claim: int | None = None) -> bool:
        """Store a held task's result blob and mark it done, in one transaction; False (and nothing stored)
        if the task is no longer ours (cancelled, deleted, requeued, claimed again) or the result could
        not be stored (the disk is full: the task fails instead)."""
        return self.complete_many(dispatcher_id, [Finished(task_id, result, started_at, claim)])[0]

    def complete_many(self, dispatcher_id: str, done: Iterable[tuple]) -> list[bool]:
        """complete() for several held tasks (Finished, or tuples of its fields) in one transaction; a
        result that cannot be stored (the disk is full) fails its task instead. A result the worker staged
        (StoredResult) is published, or discarded if it is not recorded. True for each task marked done."""
        done = [Finished(*item) for item in done]
        written: list[tuple[Finished, Staged]] = []
        inline: dict[str, bytes] = {}   # small results, kept in their blob row
        refused: list[tuple[int, str, float | None]] = []
        recorded: set[str] = set()   # the keys of the results recorded (a task may come twice, one claim stale)
        try:
            for item in done:
                if isinstance(item.result, StoredResult):
                    written.append((item, item.result.staged))
                    continue
                if len(item.result.data) <= self.settings.inline_bytes:
                    key = new_key()
                    inline[key] = item.result.data
                    written.append((item, Staged(key, len(item.result.data), None)))
                    continue
                try:
                    written.append((item, self.blobs.stage(item.result.data, max_bytes=None)))
                except PixmillError as exc:
                    refused.append((item.task_id, f"could not store the result: {exc.message}", item.started_at))
            now = time.time()
            with self.database.write() as db:
                # Task rows first, in id order, then the blob rows (and the usage row their trigger
                # updates): every transaction that takes both takes them so, and none waits on another
                # in a cycle (PostgreSQL locks rows, and a cancel or a delete may hold some of these).
                for item, staged in sorted(written, key=lambda pair: pair[0].task_id):
                    result = item.result
                    cur = db.execute(
                        "UPDATE tasks SET state = 'done', result_blob = ?, result_format = ?, width = ?, "
                        "height = ?, notes = ?, error = NULL, started_at = COALESCE(?, started_at), "
                        "finished_at = ?, lease_owner = NULL, lease_expires = NULL "
                        "WHERE id = ? AND lease_owner = ? AND state = 'running' AND claims = COALESCE(?, claims)",
                        (staged.key, result.format, result.width, result.height, json.dumps(list(result.notes)),
                         item.started_at, now, item.task_id, dispatcher_id, item.claim))
                    if cur.rowcount == 1:
                        recorded.add(staged.key)
                for task_id, error, started_at in sorted(refused):
                    _fail(db, dispatcher_id, task_id, error, started_at)
                mine = [staged for _, staged in written if staged.key in recorded]
                db.executemany("INSERT INTO blobs (key, size, created_at, data) VALUES (?, ?, ?, ?)",
                               [(staged.key, staged.size, now, inline.get(staged.key)) for staged in mine])
                for staged in mine:
                    if staged.key not in inline:
                        self.blobs.publish(staged)
        except BaseException:
            recorded.clear()  # rolled back: nothing refers to any of them
            raise
        finally:
            for _, staged in written:
                if staged.key not in recorded and staged.key not in inline:
                    try:
                        self.blobs.discard(staged)
                    except Exception as exc:  # storage away: the purge deletes it as an orphan later
                        log.warning("could not delete the unrecorded result %s: %s", staged.key, exc)
        staged_of = {id(item): staged.key for item, staged in written}
        return [staged_of.get(id(item)) in recorded for item in done]

    def fail(self, dispatcher_id: str, task_id: int, error: str, *, started_at: float | None = None) -> bool:
        """Mark a held task failed with a message for the user; False if it is no longer ours."""
        with self.database.write() as db:
            return _fail(db, dispatcher_id, task_id, error, started_at)

    def release(self, dispatcher_id: str, task_ids: Iterable[int]) -> int:
        """Put held tasks back in the queue without counting the attempt (a clean shutdown)."""
        with self.database.write() as db:
            return _release(db, dispatcher_id, list(task_ids))

    def crashed(self, dispatcher_id: str, task_ids: Iterable[int]) -> int:
        """Tasks in flight when the pool died: requeue as suspects, or fail those at max_attempts."""
        ids = list(task_ids)
        with self.database.write() as db:
            return self._crash(db, f"lease_owner = ? AND id IN ({','.join('?' * len(ids))})",
                               (dispatcher_id, *ids)) if ids else 0

    def isolate(self, dispatcher_id: str, task_ids: Iterable[int]) -> int:
        """Put held tasks back uncounted, each to run alone next time (a suspect): one of them, unknown which,
        ran past its time in a chunk handed over together."""
        ids = list(task_ids)
        if not ids:
            return 0
        with self.database.write() as db:
            cur = db.execute(f"UPDATE tasks SET crashes = CASE WHEN crashes > 0 THEN crashes ELSE 1 END "
                             f"WHERE lease_owner = ? AND state = 'running' AND id IN ({','.join('?' * len(ids))})",
                             (dispatcher_id, *ids))
            _release(db, dispatcher_id, ids)
            return cur.rowcount

    def timed_out(self, dispatcher_id: str, task_id: int, error: str, others: Iterable[int]) -> None:
        """Fail a runaway task and put the others the pool held back, uncounted, as the pool is ended."""
        with self.database.write() as db:
            db.execute("UPDATE tasks SET state = 'failed', error = ?, finished_at = ?, lease_owner = NULL, "
                       "lease_expires = NULL WHERE id = ? AND lease_owner = ? AND state = 'running'",
                       (error, time.time(), task_id, dispatcher_id))
            _release(db, dispatcher_id, [i for i in others if i != task_id])

    def requeue_dispatcher(self, dispatcher_id: str) -> int:
        """A dispatcher died: requeue its tasks at once, counting the attempt, and mark it stopped."""
        with self.database.write() as db:
            db.execute("UPDATE dispatchers SET stopped_at = ? WHERE id = ? AND stopped_at IS NULL",
                       (time.time(), dispatcher_id))
            return self._crash(db, "lease_owner = ? AND state = 'running'", (dispatcher_id,))

    def recover_dead(self, host: str, is_dead: Callable[[int, float | None], bool]) -> int:
        """Requeue the tasks of this host's dispatchers whose process is gone; return the tasks requeued."""
        rows = self.database.connection().execute("SELECT id, pid, pid_started FROM dispatchers WHERE host = ? "
                                  "AND stopped_at IS NULL", (host,)).fetchall()
        return sum(self.requeue_dispatcher(r["id"]) for r in rows if is_dead(r["pid"], r["pid_started"]))

    def requeue_silent(self, dispatcher_id: str, *, silent_for: float, now: float | None = None) -> int:
        """Requeue the tasks of the other dispatchers, on any host, whose heartbeat stopped `silent_for`
        seconds ago (counting the attempt), and mark them stopped; return the tasks requeued."""
        now = time.time() if now is None else now
        rows = self.database.connection().execute(
            "SELECT id FROM dispatchers WHERE stopped_at IS NULL AND heartbeat < ? AND id <> ?",
            (now - silent_for, dispatcher_id)).fetchall()
        return sum(self.requeue_dispatcher(r[0]) for r in rows)

    def requeue_expired(self, *, now: float | None = None) -> int:
        """Requeue running tasks whose lease ran out (their dispatcher died or hung), counting the attempt."""
        now = time.time() if now is None else now
        with self.database.write() as db:
            return self._crash(db, "state = 'running' AND lease_expires < ?", (now,))

    def stop_dispatcher(self, dispatcher_id: str) -> None:
        """Record that a dispatcher stopped cleanly."""
        with self.database.write() as db:
            db.execute("UPDATE dispatchers SET stopped_at = ? WHERE id = ?", (time.time(), dispatcher_id))

    def finished_since(self, since: float) -> list[tuple[int, float, float]]:
        """(task id, finished_at, seconds of processing) of the tasks done after `since`."""
        return [tuple(row) for row in self.database.connection().execute(
            "SELECT id, finished_at, finished_at - started_at FROM tasks WHERE state = 'done' "
            "AND finished_at > ? AND started_at IS NOT NULL ORDER BY finished_at LIMIT 10000", (since,))]

    def stats(self) -> dict:
        """Task counts per state, queue depth, live workers and recent task durations."""
        db = self.database.connection()
        counts = {state.value: 0 for state in TaskState}
        for state, n in db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"):
            counts[state] = n
        durations = [r[0] for r in db.execute(
            "SELECT finished_at - started_at FROM tasks WHERE finished_at > ? AND started_at IS NOT NULL "
            "AND state = 'done' ORDER BY finished_at DESC LIMIT 1000", (time.time() - 300,))]
        return {"tasks": counts, "queue_depth": counts[TaskState.QUEUED], "workers": self.workers_alive(),
                "durations": durations}

    def live_dispatchers(self, within: float = 15.0) -> list[dict]:
        """The dispatchers whose heartbeat is at most `within` seconds old, oldest first."""
        rows = self.database.connection().execute(
            "SELECT id, host, pid, engine, workers, started_at, heartbeat FROM dispatchers "
            "WHERE stopped_at IS NULL AND heartbeat > ? ORDER BY started_at, id", (time.time() - within,)).fetchall()
        return [{name: row[name] for name in ("id", "host", "pid", "engine", "workers", "started_at", "heartbeat")}
                for row in rows]

    def workers_alive(self, within: float = 15.0) -> int:
        """Pool workers of the dispatchers whose heartbeat is at most `within` seconds old."""
        row = self.database.connection().execute(
            "SELECT COALESCE(SUM(workers), 0) FROM dispatchers WHERE stopped_at IS NULL AND heartbeat > ?",
            (time.time() - within,)).fetchone()
        return row[0]

    def _crash(self, db: sqlite3.Connection, where: str, args: tuple) -> int:
        # Every right-hand side reads the row as it was, so crashes + 1 is the new count throughout.
        limit = self.settings.max_attempts
        cur = db.execute(
            f"UPDATE tasks SET crashes = crashes + 1, "
            f"state = CASE WHEN crashes + 1 >= ? THEN 'failed' ELSE 'queued' END, "
            f"error = CASE WHEN crashes + 1 >= ? THEN 'worker crashed while processing this image (' "
            f"|| CAST(crashes + 1 AS TEXT) || ' attempts)' ELSE error END, "
            f"finished_at = CASE WHEN crashes + 1 >= ? THEN ? ELSE NULL END, "
            f"lease_owner = NULL, lease_expires = NULL WHERE state = 'running' AND {where}",
            (limit, limit, limit, time.time(), *args))
        return cur.rowcount


def _fail(db: sqlite3.Connection, dispatcher_id: str, task_id: int, error: str, started_at: float | None) -> bool:
    cur = db.execute("UPDATE tasks SET state = 'failed', error = ?, started_at = COALESCE(?, started_at), "
                     "finished_at = ?, lease_owner = NULL, lease_expires = NULL "
                     "WHERE id = ? AND lease_owner = ? AND state = 'running'",
                     (error, started_at, time.time(), task_id, dispatcher_id))
    return cur.rowcount == 1


def _release(db: sqlite3.Connection, dispatcher_id: str, ids: list[int]) -> int:
    if not ids:
        return 0
    cur = db.execute(f"UPDATE tasks SET state = 'queued', attempts = CASE WHEN attempts > 0 THEN attempts - 1 "
                     f"ELSE 0 END, started_at = NULL, "
                     f"lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ? AND state = 'running' "
                     f"AND id IN ({','.join('?' * len(ids))})", (dispatcher_id, *ids))
    return cur.rowcount
