"""Webhooks from a real `pixmill serve` to a receiver on 127.0.0.1, through pixmill.client: signed,
retried after a 500, delivered across a restart of the service between attempts and across a kill -9
in the middle of one; SSRF refusals (loopback without the allow-list, private ranges, a redirect).
On both backends: the deliveries live in the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixmill.cli.main import main as cli
from pixmill.client import BadRequest, Client, verify_webhook
from support.backends import sqlite_only
from support.cluster import kill_family
from support.receiver import receiving
from support.servers import REAL, running_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.both_backends]

SECRET = "whsec-system-test"


def environment(database_url: str, blob_url: str, **extra: str) -> dict[str, str]:
    env = {"PIXMILL_WEBHOOK_SECRET": SECRET, "PIXMILL_WEBHOOK_ALLOW": "127.0.0.1", **extra}
    if database_url:
        env |= {"PIXMILL_DATABASE_URL": database_url, "PIXMILL_BLOB_URL": blob_url}
    return env


def until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def webhook_of(url: str, job_id: str) -> dict:
    with Client(url) as client:
        return client.job(job_id).webhook


def test_a_500_then_a_restart_then_the_delivery(tmp_path: Path, database_url: str, blob_url: str):
    env = environment(database_url, blob_url, PIXMILL_WEBHOOK_BACKOFF="8")
    with receiving([500, 200]) as receiver:
        with running_server(tmp_path, engine="local", workers=1, env=env) as server:
            submitted_through = server.url
            with Client(server.url) as client:
                job = client.submit([REAL / "sk_camera.png", REAL / "sk_coins.png"], pipeline="grayscale",
                                    webhook_url=receiver.url)
                assert job.webhook["state"] == "pending" and job.webhook["url"] == receiver.url
                job.wait(timeout=120)
            hook = until(lambda: (h := webhook_of(server.url, job.id))["attempts"] == 1 and h["state"] == "pending"
                         and h, 60, "the first attempt to be recorded")
            assert hook["last_status"] == 500 and hook["last_error"] == "HTTP 500" and hook["next_attempt_at"]
            stop_server(server.proc)                      # the service goes down between the attempts
        assert len(receiver.received) == 1
        with running_server(tmp_path, engine="local", workers=1, env=env) as server:
            hook = until(lambda: (h := webhook_of(server.url, job.id))["state"] == "delivered" and h, 60,
                         "the delivery after the restart")
        assert len(receiver.received) == 2 and hook["attempts"] == 2 and hook["last_status"] == 200
        first, second = receiver.received
    assert second.at - first.at >= 8                     # its back-off, kept across the restart
    for got in (first, second):
        assert got.signed_by(SECRET)
        assert verify_webhook(SECRET, got.body, got.headers["Pixmill-Signature"])   # the client's own check
        assert got.json["event"] == "job.finished" and got.json["job"]["id"] == job.id
        assert got.json["job"]["state"] == "done" and got.json["job"]["counts"]["done"] == 2
        assert got.json["job"]["status_url"] == f"{submitted_through}api/v1/jobs/{job.id}"   # its links


def test_a_sender_killed_mid_delivery_is_followed_by_a_delivery(tmp_path: Path, database_url: str, blob_url: str):
    env = environment(database_url, blob_url, PIXMILL_WEBHOOK_TIMEOUT="5", PIXMILL_LEASE_SECONDS="3",
                      PIXMILL_WEBHOOK_BACKOFF="1")
    with receiving([200], delay=2) as receiver:       # answers within the timeout, but not before the kill
        with running_server(tmp_path, engine="local", workers=1, env=env) as server:
            with Client(server.url) as client:
                job = client.submit([REAL / "sk_camera.png"], pipeline="sepia", webhook_url=receiver.url)
            receiver.wait_for(1, 120)                     # the receiver holds its answer; kill -9 meanwhile
            kill_family(server.proc)
        with running_server(tmp_path, engine="local", workers=1, env=env) as server:
            hook = until(lambda: (h := webhook_of(server.url, job.id))["state"] == "delivered" and h, 90,
                         "the delivery after the kill")
    assert hook["attempts"] == 2 and len(receiver.received) == 2     # the cut attempt counted; one more sent it
    assert all(r.signed_by(SECRET) and r.json["job"]["id"] == job.id for r in receiver.received)


def test_ssrf_refusals_and_no_redirects(tmp_path: Path, database_url: str, blob_url: str):
    with receiving([200]) as elsewhere, receiving([302]) as redirecting:
        redirecting.redirect = elsewhere.url
        closed = environment(database_url, blob_url)
        del closed["PIXMILL_WEBHOOK_ALLOW"]
        with running_server(tmp_path / "closed", engine="local", workers=1, env=closed) as server, \
                Client(server.url) as client:
            for url, words in [(redirecting.url, "127.0.0.1 is a loopback address"),
                               ("http://localhost:9/hook", "localhost is this machine"),
                               ("http://10.0.0.8/hook", "10.0.0.8 is a private address"),
                               ("http://172.20.0.1/hook", "172.20.0.1 is a private address"),
                               ("http://169.254.169.254/latest/meta-data/", "cloud metadata address")]:
                with pytest.raises(BadRequest) as refused:
                    client.submit([REAL / "sk_camera.png"], pipeline="grayscale", webhook_url=url)
                assert refused.value.code == "webhook_refused" and words in refused.value.message
        env = environment(database_url, blob_url, PIXMILL_WEBHOOK_ATTEMPTS="2", PIXMILL_WEBHOOK_BACKOFF="0.5")
        with running_server(tmp_path / "open", engine="local", workers=1, env=env) as server, \
                Client(server.url) as client:
            job = client.submit([REAL / "sk_camera.png"], pipeline="grayscale", webhook_url=redirecting.url)
            hook = until(lambda: (h := webhook_of(server.url, job.id))["state"] == "failed" and h, 90,
                         "the redirected webhook to be given up")
        assert hook["attempts"] == 2 and hook["last_status"] == 302
        assert hook["last_error"] == f"HTTP 302: redirects are not followed (to {elsewhere.url})"
        assert len(redirecting.received) == 2 and elsewhere.received == []


@sqlite_only
def test_the_remote_cli_passes_a_webhook(tmp_path: Path, database_url: str, blob_url: str):
    with receiving([200]) as receiver, \
            running_server(tmp_path, engine="local", workers=1, env=environment(database_url, blob_url)) as server:
        ran = CliRunner().invoke(cli, ["submit", str(REAL / "sk_camera.png"), "--server", server.url,
                                       "--pipeline", "grayscale", "--webhook", receiver.url, "--wait"])
        assert ran.exit_code == 0, ran.output
        [got] = receiver.wait_for(1, 60)
    assert got.signed_by(SECRET) and got.json["job"]["id"] == ran.stdout.splitlines()[0]
    local = CliRunner().invoke(cli, ["submit", str(REAL / "sk_camera.png"), "--data-dir", str(tmp_path / "local"),
                                     "--pipeline", "grayscale", "--webhook", receiver.url])
    assert local.exit_code == 2 and "--webhook needs --server" in local.output
