"""webhook_url on POST /api/v1/jobs and POST /upload, through Flask's test client and the real dispatcher:
the job's JSON shows its webhook, the receiver on 127.0.0.1 gets the signed job.finished event, and URLs
the policy refuses are refused with the reason before anything is stored. On both backends."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from pixmill.config import Settings
from pixmill.web import create_app
from support.receiver import receiving
from support.web import assert_error, dispatcher, files, make_client, path_of, post_job, stored_blobs

pytestmark = [pytest.mark.timeout(90), pytest.mark.both_backends]

SECRET = "whsec-web-test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, webhook_secret=SECRET, webhook_allow=("127.0.0.1",), webhook_backoff=0.2)


def delivered(client, job_id: str, timeout: float = 30.0) -> dict:
    """The job, once its webhook has left the pending and sending states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["webhook"]["state"] not in ("pending", "sending"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"the webhook of job {job_id} is still {job['webhook']}")


def test_the_receiver_gets_the_signed_job_json_when_the_job_ends(client, store, settings):
    with receiving([500, 200]) as receiver, dispatcher(store, settings):
        answer = post_job(client, {"files": files("sk_camera.png", "sk_coins.png"), "pipeline": "grayscale",
                                   "webhook_url": receiver.url})
        assert answer.status_code == 202, answer.get_json()
        created = answer.get_json()
        assert created["webhook"] == {"url": receiver.url, "state": "pending", "attempts": 0, "max_attempts": 8,
                                      "next_attempt_at": None, "last_attempt_at": None, "last_status": None,
                                      "last_error": None, "delivered_at": None}
        job = delivered(client, created["id"])
        first, second = receiver.wait_for(2, 10)
    assert job["webhook"]["state"] == "delivered" and job["webhook"]["attempts"] == 2
    assert job["webhook"]["last_status"] == 200 and job["webhook"]["delivered_at"] >= second.at - 1
    for got in (first, second):
        assert got.signed_by(SECRET) and got.headers["Content-Type"] == "application/json"
        assert got.json["event"] == "job.finished"
    sent = second.json["job"]
    shown = client.get(f"/api/v1/jobs/{created['id']}").get_json()
    assert sent["id"] == created["id"] and sent["state"] == "done" and sent["counts"]["done"] == 2
    assert {k: v for k, v in sent.items() if k != "webhook"} == {k: v for k, v in shown.items() if k != "webhook"}
    assert client.get(path_of(sent["tasks"][0]["result_url"])).status_code == 200   # its links work


def test_upload_takes_a_webhook_url_too(client, store, settings):
    with receiving([204]) as receiver, dispatcher(store, settings):
        answer = post_job(client, {"files": files("sk_camera.png"), "operations": ["sepia"],
                                   "webhook_url": receiver.url}, path="/upload")
        assert answer.status_code == 200, answer.get_json()
        job_id = answer.get_json()["job_id"]
        job = delivered(client, job_id)
        [got] = receiver.wait_for(1, 10)
    assert job["webhook"]["state"] == "delivered" and got.json["job"]["id"] == job_id and got.signed_by(SECRET)


def test_a_job_without_a_webhook_shows_null(client, store, settings):
    answer = post_job(client, {"files": files("sk_camera.png"), "pipeline": "grayscale"})
    assert answer.status_code == 202 and answer.get_json()["webhook"] is None


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.2:8000/hook", ["127.0.0.2 is a loopback address", "PIXMILL_WEBHOOK_ALLOW"]),
    ("http://localhost/hook", ["localhost is this machine"]),
    ("http://10.1.1.1/hook", ["10.1.1.1 is a private address"]),
    ("http://192.168.0.1/hook", ["192.168.0.1 is a private address"]),
    ("http://169.254.169.254/latest/meta-data/", ["cloud metadata address"]),
    ("http://[fe80::1]/", ["link-local"]),
    ("gopher://hooks.example.com/", ["http or https"]),
    ("http://admin:pw@hooks.example.com/", ["user name or password"]),
])
def test_refused_destinations_are_refused_before_anything_is_stored(client, settings, url, words):
    for body in ({"webhook_url": url, "files": files("sk_camera.png"), "pipeline": "grayscale"},
                 {"files": files("sk_camera.png"), "pipeline": "grayscale", "webhook_url": url}):
        assert_error(post_job(client, body), 400, "webhook_refused", "webhook_url", *words)
    assert_error(post_job(client, {"files": files("sk_camera.png"), "operations": ["sepia"], "webhook_url": url},
                          path="/upload"), 400, "webhook_refused", *words)
    assert stored_blobs(settings) == []
    assert client.get("/api/v1/jobs").status_code == 404   # (listing is off) and no job was made:
    assert client.application.extensions["pixmill"].store.list_jobs() == []


def test_without_a_secret_webhooks_are_refused(settings, store):
    client = make_client(create_app(replace(settings, webhook_secret=""), store))
    answer = post_job(client, {"files": files("sk_camera.png"), "pipeline": "grayscale",
                               "webhook_url": "https://hooks.example.com/pixmill"})
    assert_error(answer, 400, "webhook_refused", "PIXMILL_WEBHOOK_SECRET")
    assert store.list_jobs() == []


def test_a_blank_webhook_url_is_no_webhook(client):
    answer = post_job(client, {"files": files("sk_camera.png"), "pipeline": "grayscale", "webhook_url": " "})
    assert answer.status_code == 202 and answer.get_json()["webhook"] is None


def test_two_webhook_urls_are_refused(client):
    answer = post_job(client, {"files": files("sk_camera.png"), "pipeline": "grayscale",
                               "webhook_url": ["https://a.example/h", "https://b.example/h"]})
    assert_error(answer, 400, "invalid_request", "webhook_url", "more than once")


def test_the_openapi_document_describes_webhooks(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    form = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["webhook_url"]["type"] == "string"
    upload = spec["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "webhook_url" in upload["properties"]
    webhook = spec["components"]["schemas"]["WebhookOut"]
    assert {"url", "state", "attempts", "last_status", "last_error", "next_attempt_at"} <= set(webhook["properties"])
