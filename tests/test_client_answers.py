"""pixmill.client's handling of answers, on a mock transport: Retry-After honoured, errors typed.
(tests/system/test_client.py runs it against a real service.)"""

from __future__ import annotations

import httpx
import pytest

from pixmill import client as client_module
from pixmill.client import ApiError, Client, StorageFull, TooManyRequests, Unavailable

JOB = {"id": "j1", "state": "queued", "counts": {}, "tasks": []}


def serving(answers: list[httpx.Response], seen: list[httpx.Request]) -> Client:
    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return answers.pop(0)
    return Client("http://pixmill.test", transport=httpx.MockTransport(handle))


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    return slept


def test_a_429_with_retry_after_is_retried_after_it_with_the_whole_upload_again(no_sleep, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG fake bytes")
    seen: list[httpx.Request] = []
    busy = httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "too_many", "message": "busy"})
    with serving([busy, httpx.Response(202, json=JOB)], seen) as client:
        job = client.submit([path, ("b.png", b"second")], pipeline="grayscale")
    assert job.id == "j1" and no_sleep == [2.0]
    assert len(seen) == 2
    for request in seen:                                               # the files were sent again, whole
        body = request.content
        assert b"\x89PNG fake bytes" in body and b"second" in body
    body = seen[1].content
    assert body.index(b'name="pipeline"') < body.index(b'name="files"')   # fields first: work starts early


def test_retries_are_bounded_and_answers_without_retry_after_raise_at_once(no_sleep):
    seen: list[httpx.Request] = []
    busy = [httpx.Response(503, headers={"Retry-After": "1"}, json={"error": "busy", "message": "later"})] * 6
    with serving(busy, seen) as client, pytest.raises(Unavailable) as caught:
        client.job("j1")
    assert len(seen) == 6 and len(no_sleep) == 5 and caught.value.code == "busy"
    with serving([httpx.Response(429, json={"error": "too_many", "message": "queue full"})], []) as client:
        with pytest.raises(TooManyRequests, match="queue full"):
            client.job("j1")
    assert len(no_sleep) == 5


def test_every_error_carries_status_code_and_message_and_unknown_statuses_are_api_errors():
    full = httpx.Response(507, json={"error": "storage_full", "message": "the storage quota is full"})
    with serving([full, httpx.Response(418, text="teapot")], []) as client:
        with pytest.raises(StorageFull) as caught:
            client.job("j1")
        assert (caught.value.status, caught.value.code, caught.value.message) == \
            (507, "storage_full", "the storage quota is full")
        with pytest.raises(ApiError) as other:
            client.job("j1")
    assert type(other.value) is ApiError and other.value.status == 418 and other.value.message == "teapot"
