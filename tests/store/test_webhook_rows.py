"""Webhook deliveries in the store, on both backends: due once the job has ended, leased to one sender,
retried with doubling waits, given up after the last attempt, and kept across a reopening of the store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result
from pixmill.store import NewTask, NewWebhook, Store, WebhookState
from pixmill.store.webhooks import MAX_BACKOFF, backoff

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_backends]   # on SQLite and on PostgreSQL

GRAY = parse_pipeline("grayscale")
HOOK = NewWebhook("https://hooks.example.com/pixmill", "http://pixmill.example/")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    webhook_attempts=3, webhook_backoff=0.2, webhook_timeout=1.0, lease_seconds=1.0)


def make_job(store: Store, count: int = 2, hook: NewWebhook | None = HOOK):
    tasks = [NewTask(f"img{i}.png", GRAY, store.put_blob(bytes([i]) * 10), "png") for i in range(count)]
    return store.create_job(tasks, Output("png"), webhook=hook)


def finish_all(store: Store) -> None:
    for claim in store.claim("d1", 10, busy=False):
        assert store.complete("d1", claim.id, Result(b"result", "png", 1, 1))


def test_a_webhook_is_due_only_once_its_job_has_ended(store: Store):
    job = make_job(store)
    assert job.webhook.state is WebhookState.PENDING and job.webhook.attempts == 0 and job.webhook.url == HOOK.url
    plain = make_job(store, hook=None)
    assert plain.webhook is None
    assert store.claim_webhooks("s1", 5) == []                   # both tasks queued
    first, second = store.claim("d1", 2, busy=False)
    store.complete("d1", first.id, Result(b"r", "png", 1, 1))
    assert store.claim_webhooks("s1", 5) == []                   # one still running
    store.fail("d1", second.id, "bad")
    [delivery] = store.claim_webhooks("s1", 5)
    assert (delivery.job_id, delivery.url, delivery.base_url, delivery.attempt) == (job.id, HOOK.url, HOOK.base_url, 1)
    assert store.claim_webhooks("s2", 5) == []                   # leased to s1
    assert store.get_job(job.id).webhook.state is WebhookState.SENDING


def test_a_cancelled_job_is_ended_too(store: Store):
    job = make_job(store)
    store.cancel_job(job.id)
    assert [d.job_id for d in store.claim_webhooks("s1", 5)] == [job.id]


def test_a_2xx_delivers_it_once(store: Store):
    job = make_job(store)
    finish_all(store)
    [delivery] = store.claim_webhooks("s1", 5)
    assert store.settle_webhook("s1", delivery, status=204, error=None) is WebhookState.DELIVERED
    hook = store.get_job(job.id).webhook
    assert (hook.state, hook.attempts, hook.last_status, hook.last_error) == (WebhookState.DELIVERED, 1, 204, None)
    assert hook.delivered_at is not None and hook.next_attempt_at is None
    time.sleep(0.3)
    assert store.claim_webhooks("s1", 5) == []


def test_failed_attempts_wait_twice_as_long_each_time_then_give_up(store: Store, settings: Settings):
    job = make_job(store)
    finish_all(store)
    waits = []
    for attempt in (1, 2, 3):
        deadline = time.monotonic() + 10
        while not (claimed := store.claim_webhooks("s1", 5)):
            assert time.monotonic() < deadline, f"attempt {attempt} never came due"
            time.sleep(0.02)
        [delivery] = claimed
        assert delivery.attempt == attempt
        state = store.settle_webhook("s1", delivery, status=500, error="HTTP 500")
        hook = store.get_job(job.id).webhook
        if attempt < 3:
            assert state is WebhookState.PENDING and hook.last_status == 500 and hook.last_error == "HTTP 500"
            waits.append(hook.next_attempt_at - hook.last_attempt_at)
            assert store.claim_webhooks("s1", 5) == []           # not before its time
    assert state is WebhookState.FAILED and hook.attempts == 3 and hook.next_attempt_at is None
    assert waits == pytest.approx([0.2, 0.4], abs=0.05)
    assert store.claim_webhooks("s1", 5) == []


def test_the_default_schedule_makes_at_least_five_attempts_over_ten_minutes():
    defaults = Settings()
    gaps = [backoff(defaults, n) for n in range(1, defaults.webhook_attempts)]
    assert defaults.webhook_attempts >= 5 and sum(gaps[:4]) < 600 <= sum(gaps) and max(gaps) <= MAX_BACKOFF


def test_a_refused_destination_is_final(store: Store):
    job = make_job(store)
    finish_all(store)
    [delivery] = store.claim_webhooks("s1", 5)
    assert store.settle_webhook("s1", delivery, status=None, error="10.0.0.1 is a private address",
                                final=True) is WebhookState.REFUSED
    assert store.get_job(job.id).webhook.last_error == "10.0.0.1 is a private address"
    time.sleep(0.3)
    assert store.claim_webhooks("s1", 5) == []


def test_a_sender_that_died_mid_delivery_loses_its_lease_and_the_attempt_counts(store: Store):
    job = make_job(store)
    finish_all(store)
    [lost] = store.claim_webhooks("dead", 5)
    time.sleep(2.3)                                  # webhook_timeout + lease_seconds
    [again] = store.claim_webhooks("s2", 5)
    assert again.attempt == 2
    assert store.settle_webhook("dead", lost, status=200, error=None) is None     # too late: no longer its own
    assert store.settle_webhook("s2", again, status=200, error=None) is WebhookState.DELIVERED
    assert store.get_job(job.id).webhook.attempts == 2


def test_a_last_attempt_cut_short_is_given_up(store: Store, settings: Settings):
    job = make_job(store)
    finish_all(store)
    for _ in range(settings.webhook_attempts - 1):
        [d] = store.claim_webhooks("s1", 5)
        store.settle_webhook("s1", d, status=503, error="HTTP 503")
        time.sleep(0.9)
    [last] = store.claim_webhooks("dead", 5)
    assert last.attempt == settings.webhook_attempts
    time.sleep(2.3)
    assert store.claim_webhooks("s2", 5) == []
    hook = store.get_job(job.id).webhook
    assert hook.state is WebhookState.FAILED and hook.last_error == "HTTP 503"


def test_released_deliveries_are_not_counted(store: Store):
    job = make_job(store)
    finish_all(store)
    claimed = store.claim_webhooks("s1", 5)
    store.release_webhooks("s1", claimed)
    assert store.get_job(job.id).webhook.attempts == 0
    assert [d.attempt for d in store.claim_webhooks("s2", 5)] == [1]


def test_deleting_or_purging_a_job_deletes_its_webhook(store: Store, settings: Settings):
    job, _old = make_job(store), make_job(store)
    store.delete_job(job.id)
    store.purge_expired(now=time.time() + settings.ttl_seconds + 1)
    finish_all(store)
    assert store.claim_webhooks("s1", 5) == []
    assert store.database.connection().execute("SELECT COUNT(*) FROM webhooks").fetchone()[0] == 0


def test_deliveries_survive_reopening_the_store(settings: Settings):
    with Store.open(settings) as store:
        job = make_job(store)
        finish_all(store)
        [d] = store.claim_webhooks("s1", 5)
        store.settle_webhook("s1", d, status=500, error="HTTP 500")
    time.sleep(0.3)
    with Store.open(settings) as store:
        [d] = store.claim_webhooks("s2", 5)
        assert (d.job_id, d.attempt) == (job.id, 2)


def test_an_open_job_gets_its_webhook_when_sealed(store: Store):
    job_id = store.open_job(Output("png"))
    tasks = [NewTask("a.png", GRAY, store.put_blob(b"a" * 10), "png")]
    store.add_tasks(job_id, tasks, start=0)
    finish_all(store)                                  # its one task ended before the upload did
    assert store.claim_webhooks("s1", 5) == []
    sealed = store.seal_job(job_id, [], Output("png"), start=1, webhook=HOOK)
    assert sealed.webhook.state is WebhookState.PENDING
    assert [d.job_id for d in store.claim_webhooks("s1", 5)] == [job_id]
