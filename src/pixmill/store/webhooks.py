"""Webhooks: one per job at most, recorded with the job and delivered once it has ended.

A webhook is pending from the job's creation; it is due once its job has ended (every task ended, or
the job cancelled) and its next attempt's time has come. A sender claims it under a lease (state
sending), as a dispatcher claims a task, so a sender that dies mid-delivery leaves it to be claimed
again when the lease runs out; that attempt counts. Every failed attempt doubles the wait before the
next, until the attempts are used up (failed). A refused destination is final.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum

from ..config import Settings
from .database import Database
from .schema import select_in

__all__ = ["WebhookState", "WebhookView", "NewWebhook", "Delivery", "Webhooks", "MAX_BACKOFF", "backoff"]

MAX_BACKOFF = 3600.0   # seconds: the longest wait between two attempts


class WebhookState(StrEnum):
    """pending (the job runs, or the next attempt waits) → sending → delivered, failed or refused."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class NewWebhook:
    """A webhook to record with its job: where to POST, and the URL root the job was submitted through."""

    url: str
    base_url: str


@dataclass(frozen=True)
class WebhookView:
    """A job's webhook as the job's JSON shows it."""

    url: str
    state: WebhookState
    attempts: int
    max_attempts: int
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True)
class Delivery:
    """One claimed attempt: the job, where to send, and the attempt's number (from 1)."""

    job_id: str
    url: str
    base_url: str
    attempt: int


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, …): the setting, doubled each time."""
    return min(MAX_BACKOFF, settings.webhook_backoff * 2 ** (attempt - 1))


# Due: pending and its time has come, or sending under a lease that ran out; and its job has ended.
_DUE = ("((w.state = 'pending' AND w.next_at <= ?) OR (w.state = 'sending' AND w.lease_expires < ?)) "
        "AND w.attempts < ?")
_ENDED = ("j.sealed = 1 AND (j.cancelled_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM tasks t "
          "WHERE t.job_id = j.id AND t.state IN ('queued', 'running')))")


class Webhooks:
    """Recording, claiming and settling the deliveries of job webhooks."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    @staticmethod
    def insert(db: sqlite3.Connection, job_id: str, hook: NewWebhook) -> None:
        """Record a job's webhook inside the caller's write transaction (db), the one creating the job."""
        db.execute("INSERT INTO webhooks (job_id, url, base_url, state, next_at) VALUES (?, ?, ?, 'pending', ?)",
                   (job_id, hook.url, hook.base_url, time.time()))

    def view(self, db: sqlite3.Connection, job_id: str) -> WebhookView | None:
        """The job's webhook, if it has one."""
        row = db.execute("SELECT * FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        state = WebhookState(row["state"])
        waiting = state is WebhookState.PENDING and row["attempts"] > 0
        return WebhookView(url=row["url"], state=state, attempts=row["attempts"],
                           max_attempts=self.settings.webhook_attempts,
                           next_attempt_at=row["next_at"] if waiting else None,
                           last_attempt_at=row["last_attempt_at"], last_status=row["last_status"],
                           last_error=row["last_error"], delivered_at=row["delivered_at"])

    def claim(self, sender: str, limit: int) -> list[Delivery]:
        """Lease up to `limit` due deliveries to this sender, counting their attempts."""
        now, most = time.time(), self.settings.webhook_attempts
        db = self.database.connection()
        if db.execute("SELECT 1 FROM webhooks WHERE state IN ('pending', 'sending') LIMIT 1").fetchone() is None:
            return []   # the common case, without a join or the write lock
        ids = [r[0] for r in db.execute(f"SELECT w.job_id FROM webhooks w JOIN jobs j ON j.id = w.job_id "
                                        f"WHERE {_DUE} AND {_ENDED} ORDER BY w.next_at LIMIT ?",
                                        (now, now, most, limit))]
        self._give_up_abandoned(now)
        if not ids:
            return []
        lease = now + self.settings.webhook_timeout + self.settings.lease_seconds
        with self.database.write() as db:
            marks = ",".join("?" * len(ids))
            ids = [r[0] for r in db.execute(f"SELECT job_id FROM webhooks w WHERE job_id IN ({marks}) AND {_DUE}"
                                            f"{self.database.skip_locked}", (*ids, now, now, most))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            db.execute(f"UPDATE webhooks SET state = 'sending', attempts = attempts + 1, lease_owner = ?, "
                       f"lease_expires = ?, last_attempt_at = ? WHERE job_id IN ({marks})",
                       (sender, lease, now, *ids))
            rows = db.execute(f"SELECT job_id, url, base_url, attempts FROM webhooks WHERE job_id IN ({marks})",
                              ids).fetchall()
        return [Delivery(job_id=r["job_id"], url=r["url"], base_url=r["base_url"], attempt=r["attempts"])
                for r in rows]

    def settle(self, sender: str, delivery: Delivery, *, status: int | None, error: str | None,
               final: bool = False) -> WebhookState | None:
        """Record how an attempt went: a 2xx status is delivered; else the next attempt waits its back-off,
        or none is left (failed); `final` (a refused destination) ends it at once. Returns the new state, or
        None if the delivery is no longer this sender's (its lease ran out and another claimed it)."""
        now = time.time()
        if status is not None and 200 <= status < 300:
            state, next_at, error = WebhookState.DELIVERED, now, None
        elif final:
            state, next_at = WebhookState.REFUSED, now
        elif delivery.attempt >= self.settings.webhook_attempts:
            state, next_at = WebhookState.FAILED, now
        else:
            state, next_at = WebhookState.PENDING, now + backoff(self.settings, delivery.attempt)
        with self.database.write() as db:
            cur = db.execute("UPDATE webhooks SET state = ?, next_at = ?, last_status = ?, last_error = ?, "
                             "delivered_at = ?, lease_owner = NULL, lease_expires = NULL "
                             "WHERE job_id = ? AND lease_owner = ? AND attempts = ? AND state = 'sending'",
                             (state.value, next_at, status, error, now if state is WebhookState.DELIVERED else None,
                              delivery.job_id, sender, delivery.attempt))
        return state if cur.rowcount else None

    def release(self, sender: str, deliveries: list[Delivery]) -> None:
        """Give back claimed deliveries that were never attempted, uncounted (the sender is stopping)."""
        if not deliveries:
            return
        with self.database.write() as db:
            for d in deliveries:
                db.execute("UPDATE webhooks SET state = 'pending', attempts = attempts - 1, lease_owner = NULL, "
                           "lease_expires = NULL WHERE job_id = ? AND lease_owner = ? AND attempts = ? "
                           "AND state = 'sending'", (d.job_id, sender, d.attempt))

    def _give_up_abandoned(self, now: float) -> None:
        # The sender of a last attempt died before it could say how it went: nothing is left to try.
        db = self.database.connection()
        if db.execute("SELECT 1 FROM webhooks WHERE state = 'sending' AND lease_expires < ? AND attempts >= ? "
                      "LIMIT 1", (now, self.settings.webhook_attempts)).fetchone() is None:
            return
        with self.database.write() as db:
            db.execute("UPDATE webhooks SET state = 'failed', lease_owner = NULL, lease_expires = NULL, "
                       "last_error = COALESCE(last_error, 'the last attempt was cut short') "
                       "WHERE state = 'sending' AND lease_expires < ? AND attempts >= ?",
                       (now, self.settings.webhook_attempts))

    @staticmethod
    def delete_rows(db: sqlite3.Connection, job_ids: list[str]) -> None:
        """Delete these jobs' webhooks inside the caller's write transaction (db)."""
        select_in(db, "DELETE FROM webhooks WHERE job_id IN ({})", job_ids)
