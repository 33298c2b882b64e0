"""The webhook sender: signed POSTs to a receiver on 127.0.0.1, the address connected to checked (a name
that resolves to loopback is refused, DNS rebinding gains nothing), no redirects, timeouts, and the
sender's claims and records in the store on both backends."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpcore
import pytest

from pixmill.config import Settings
from pixmill.destinations import Destinations
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result
from pixmill.store import NewTask, NewWebhook, Store, WebhookState
from pixmill.worker.webhooks import GuardedBackend, WebhookSender, post
from support.receiver import receiving

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec-test-secret"
REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the test makes resolve to addresses of its choice (what a rebinding DNS server does)."""
    names: dict[str, list[str]] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in names[host]]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def pool(*allow: str) -> httpcore.ConnectionPool:
    return httpcore.ConnectionPool(network_backend=GuardedBackend(Destinations.allowing(allow)))


def send(connections: httpcore.ConnectionPool, url: str, timeout: float = 5.0):
    return post(connections, url, b'{"event":"job.finished"}', secret=SECRET, timeout=timeout)


def test_a_signed_post_reaches_an_allowed_receiver():
    with receiving([200]) as receiver:
        attempt = send(pool("127.0.0.1"), receiver.url + "?source=pixmill")
        [got] = receiver.wait_for(1, 10)
    assert (attempt.status, attempt.error, attempt.refused) == (200, None, False)
    assert got.path == "/hooks/pixmill?source=pixmill" and got.body == b'{"event":"job.finished"}'
    assert got.headers["Content-Type"] == "application/json" and got.headers["User-Agent"].startswith("pixmill/")
    assert got.signed_by(SECRET) and not got.signed_by("another secret")


def test_loopback_is_refused_without_the_allow_list_and_nothing_is_sent():
    with receiving([200]) as receiver:
        attempt = send(pool(), receiver.url)
        time.sleep(0.2)
    assert attempt.refused and attempt.status is None and "127.0.0.1 is a loopback address" in attempt.error
    assert receiver.received == []


def test_a_name_that_resolves_to_loopback_is_refused_where_it_connects(dns: dict[str, list[str]]):
    dns["hooks.rebind.test"] = ["127.0.0.1"]   # passed the URL check as a name; now points here
    with receiving([200]) as receiver:
        attempt = send(pool(), f"http://hooks.rebind.test:{receiver.port}/hook")
        time.sleep(0.2)
    assert attempt.refused and "hooks.rebind.test resolves to 127.0.0.1 is a loopback address" in attempt.error
    assert receiver.received == []


def test_a_name_that_resolves_to_a_private_address_is_refused(dns: dict[str, list[str]]):
    dns["intranet.test"] = ["10.1.2.3", "192.168.7.7"]
    attempt = send(pool(), "http://intranet.test/hook")
    assert attempt.refused and "10.1.2.3 is a private address" in attempt.error


def test_only_allowed_addresses_of_a_name_are_connected_to(dns: dict[str, list[str]]):
    dns["mixed.test"] = ["10.9.9.9", "127.0.0.1"]
    with receiving([200]) as receiver:
        attempt = send(pool("127.0.0.1"), f"http://mixed.test:{receiver.port}/hook")
        [got] = receiver.wait_for(1, 10)
    assert attempt.status == 200 and got.headers["Host"] == f"mixed.test:{receiver.port}"


def test_redirects_are_not_followed():
    with receiving([200]) as elsewhere, receiving([302], redirect=None) as receiver:
        receiver.redirect = elsewhere.url
        attempt = send(pool("127.0.0.1"), receiver.url)
        receiver.wait_for(1, 10)
        time.sleep(0.2)
    assert attempt.status == 302 and not attempt.refused
    assert attempt.error == f"HTTP 302: redirects are not followed (to {elsewhere.url})"
    assert elsewhere.received == []


def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt():
    with receiving([200], delay=3.0) as receiver:
        started = time.monotonic()
        attempt = send(pool("127.0.0.1"), receiver.url, timeout=0.5)
        took = time.monotonic() - started
    assert attempt.status is None and attempt.error == "no answer within 0.5 s" and not attempt.refused
    assert took < 2.9   # the receiver's 3 s were not waited out


def test_a_closed_port_is_a_failed_attempt_not_a_refusal():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attempt = send(pool("127.0.0.1"), f"http://127.0.0.1:{port}/hook")
    assert attempt.status is None and not attempt.refused and "ConnectError" in attempt.error


# The sender over a store, on both backends.

@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    webhook_secret=SECRET, webhook_allow=("127.0.0.1",), webhook_backoff=0.2, webhook_attempts=3)


def ended_job(store: Store, url: str, count: int = 2) -> str:
    tasks = [NewTask(f"img{i}.png", parse_pipeline("grayscale"), store.put_blob(bytes([i]) * 10), "png")
             for i in range(count)]
    job = store.create_job(tasks, Output("png"), webhook=NewWebhook(url, "http://pixmill.example:8000/"))
    for claim in store.claim("d1", count, busy=False):
        store.complete("d1", claim.id, Result(b"result", "png", 3, 2))
    return job.id


def run_sender(store: Store, settings: Settings, done, *, threads: int = 4, timeout: float = 20.0) -> None:
    """A sender polling as a dispatcher does until done(), then closed."""
    sender = WebhookSender(store, settings, "sender-1", threads=threads)
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "the sender did not get there in time"
            sender.poll()
            time.sleep(0.05)
    finally:
        sender.close()


@pytest.mark.both_backends
def test_the_sender_posts_the_jobs_json_and_retries_a_500(store: Store, settings: Settings):
    with receiving([500, 200]) as receiver:
        job_id = ended_job(store, receiver.url)
        run_sender(store, settings, lambda: store.get_job(job_id).webhook.state is WebhookState.DELIVERED)
        first, second = receiver.wait_for(2, 5)
    assert len(receiver.received) == 2 and all(r.signed_by(SECRET) for r in receiver.received)
    assert second.at - first.at >= 0.2                                        # its back-off
    event = second.json
    assert event["event"] == "job.finished" and event["job"]["id"] == job_id and event["job"]["state"] == "done"
    assert event["job"]["status_url"] == f"http://pixmill.example:8000/api/v1/jobs/{job_id}"
    assert event["job"]["tasks"][1]["result_url"] == f"http://pixmill.example:8000/api/v1/jobs/{job_id}/tasks/1/result"
    assert [t["state"] for t in event["job"]["tasks"]] == ["done", "done"]
    assert first.json["job"]["webhook"]["attempts"] == 1 and event["job"]["webhook"]["attempts"] == 2
    assert event["job"]["webhook"]["state"] == "sending" and event["job"]["webhook"]["last_status"] == 500
    hook = store.get_job(job_id).webhook
    assert (hook.state, hook.attempts, hook.last_status) == (WebhookState.DELIVERED, 2, 200)
    assert json.loads(first.body)["job"]["id"] == job_id


@pytest.mark.both_backends
def test_the_sender_gives_up_after_the_last_attempt(store: Store, settings: Settings):
    with receiving([503]) as receiver:
        job_id = ended_job(store, receiver.url, count=1)
        run_sender(store, settings, lambda: store.get_job(job_id).webhook.state is WebhookState.FAILED)
    hook = store.get_job(job_id).webhook
    assert len(receiver.received) == 3 and hook.attempts == 3 and hook.last_error == "HTTP 503"


def test_the_sender_records_a_refusal(store: Store, settings: Settings, dns: dict[str, list[str]]):
    dns["hooks.internal.test"] = ["192.168.0.10"]
    job_id = ended_job(store, "http://hooks.internal.test/hook", count=1)
    run_sender(store, settings, lambda: store.get_job(job_id).webhook.state is WebhookState.REFUSED)
    hook = store.get_job(job_id).webhook
    assert hook.attempts == 1 and "192.168.0.10 is a private address" in hook.last_error


def test_a_job_deleted_before_its_delivery_sends_nothing(store: Store, settings: Settings):
    with receiving([200]) as receiver:
        job_id = ended_job(store, receiver.url, count=1)
        [delivery] = store.claim_webhooks("sender-1", 1)
        store.delete_job(job_id)
        sender = WebhookSender(store, settings, "sender-1")
        try:
            sender._deliver(delivery)
        finally:
            sender.close()
    assert receiver.received == []


def test_many_deliveries_go_out_in_parallel(store: Store, settings: Settings):
    with receiving([200], delay=0.5) as receiver:
        jobs = [ended_job(store, receiver.url, count=1) for _ in range(4)]
        run_sender(store, settings, lambda: all(store.get_job(j).webhook.state is WebhookState.DELIVERED for j in jobs))
    assert sorted(r.json["job"]["id"] for r in receiver.received) == sorted(jobs)
    assert receiver.most_at_once >= 2      # not one after another behind a slow receiver
