"""Long polls (`Prefer: wait=N` on a result or a job) and event streams woken by store commits.

Through Flask's test client. A waiting request runs in a thread of its own (with its own client),
so the test can change the store, or run the real dispatcher, while the request waits.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import Store
from pixmill.web import create_app
from pixmill.web.waiting import MAX_WAIT, requested_wait
from support.web import assert_error, dispatcher, files, make_client, path_of, post_job

REAL = Path(__file__).parents[1] / "data" / "real"
MB = 1024 * 1024
RESULT = "/api/v1/jobs/{}/tasks/{}/result"
JOB = "/api/v1/jobs/{}"
ENDED_TASK = ("done", "failed", "cancelled")

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_backends]   # on SQLite and on PostgreSQL + S3


@pytest.fixture
def pool():
    """Threads for requests that wait; every one is joined at the end of the test."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="long-poll") as executor:
        yield executor


def wait(seconds: int) -> dict:
    return {"Prefer": f"wait={seconds}"}


def new_job(client, names=("pil_hopper.bmp",), pipeline: str = "grayscale") -> dict:
    response = post_job(client, {"files": files(*names), "pipeline": pipeline})
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def timed_get(client, url: str, headers=None):
    """GET url; return the response, the seconds it took and the wall-clock time it came back."""
    started = time.monotonic()
    response = client.get(url, headers=headers)
    return response, time.monotonic() - started, time.time()


def in_thread(pool: ThreadPoolExecutor, app, url: str, headers=None) -> Future:
    """GET url from a thread of the pool, with a client of its own."""
    return pool.submit(timed_get, make_client(app), url, headers)


def slots(app) -> threading.BoundedSemaphore:
    return app.extensions["pixmill"].event_slots


def free_slots(app) -> int:
    return slots(app)._value          # CPython's count of a semaphore; read only, to see waits begin


def until_waiting(app, count: int = 1, timeout: float = 10.0) -> None:
    """Block until `count` requests hold a slot (they are past their first look, waiting)."""
    initial = app.extensions["pixmill"].settings.threads // 2
    deadline = time.monotonic() + timeout
    while free_slots(app) > initial - count:
        assert time.monotonic() < deadline, f"{count} waiting request(s) did not start within {timeout} s"
        time.sleep(0.01)


def ended_at(store: Store, job_id: str) -> float:
    """When the job's last task ended (wall clock, as the store records it)."""
    return max(t.finished_at for t in store.get_job(job_id).tasks)


# ---- without a dispatcher: nothing ends, so a wait lasts as long as asked

def test_a_queued_result_waits_as_asked_then_answers_202(client):
    job = new_job(client)
    url = path_of(job["tasks"][0]["result_url"])
    response, seconds, _ = timed_get(client, url, wait(1))
    assert response.status_code == 202, response.get_json()
    assert 0.8 <= seconds <= 5.0, seconds
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.headers["Retry-After"] and response.get_json()["state"] == "queued"

    plain, seconds, _ = timed_get(client, url)
    assert plain.status_code == 202 and plain.headers["Retry-After"]
    assert seconds < 0.5, seconds
    assert "Preference-Applied" not in plain.headers


def test_a_queued_job_waits_as_asked_then_answers_its_state(client):
    job = new_job(client)
    response, seconds, _ = timed_get(client, JOB.format(job["id"]), wait(1))
    assert response.status_code == 200 and response.get_json()["state"] == "queued"
    assert 0.8 <= seconds <= 5.0, seconds
    assert response.headers["Preference-Applied"] == "wait=1"

    plain, seconds, _ = timed_get(client, JOB.format(job["id"]))
    assert plain.status_code == 200 and seconds < 0.5, seconds
    assert "Preference-Applied" not in plain.headers


def test_other_preferences_and_a_zero_wait_answer_at_once(client):
    job = new_job(client)
    url = path_of(job["tasks"][0]["result_url"])
    for prefer in ("respond-async", "wait=0", "return=minimal", "wait=soon"):
        response, seconds, _ = timed_get(client, url, {"Prefer": prefer})
        assert response.status_code == 202 and seconds < 0.5, (prefer, seconds)
        assert "Preference-Applied" not in response.headers, prefer
    response, seconds, _ = timed_get(client, url, {"Prefer": "respond-async, wait=1"})
    assert response.status_code == 202 and 0.8 <= seconds <= 5.0
    assert response.headers["Preference-Applied"] == "wait=1"


def test_an_ended_result_or_job_never_waits(client, store):
    job = new_job(client)
    store.cancel_job(job["id"])
    response, seconds, _ = timed_get(client, JOB.format(job["id"]), wait(20))
    assert response.get_json()["state"] == "cancelled" and seconds < 0.5
    assert "Preference-Applied" not in response.headers
    cancelled, seconds, _ = timed_get(client, path_of(job["tasks"][0]["result_url"]), wait(20))
    assert_error(cancelled, 404, "not_found", "cancelled")
    assert seconds < 0.5


def test_errors_before_the_wait_are_immediate(client):
    job = new_job(client)
    for url in (RESULT.format(job["id"], 5), RESULT.format("no-such-job", 0), JOB.format("no-such-job")):
        response, seconds, _ = timed_get(client, url, wait(20))
        assert_error(response, 404, "not_found")
        assert seconds < 0.5, (url, seconds)


# ---- with the real dispatcher: one request, answered when the work ends

def test_a_waiting_result_request_gets_the_image_as_soon_as_it_is_done(app, client, store, settings, pool):
    job = new_job(client, ["sk_camera.png"], "blur(ksize=7) | edge_detection")
    url = path_of(job["tasks"][0]["result_url"])
    call = in_thread(pool, app, url, wait(20))
    until_waiting(app)                                 # the request is waiting before any work starts
    with dispatcher(store, settings):
        response, seconds, answered = call.result(timeout=30)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert seconds < 10.0, seconds
    assert response.headers["Preference-Applied"] == "wait=20"
    expected = process((REAL / "sk_camera.png").read_bytes(), parse_pipeline("blur(ksize=7) | edge_detection"),
                       Output())
    assert response.mimetype == expected.media_type and response.data == expected.data
    # woken by the commit, not by a timer (waiting.TICK is 1 s)
    assert answered - ended_at(store, job["id"]) < 0.5
    assert free_slots(app) == settings.threads // 2


def test_a_waiting_job_request_gets_the_ended_job_in_one_request(app, client, store, settings, pool):
    job = new_job(client, ["sk_camera.png", "pil_hopper.bmp", "sk_rocket.jpg"])
    call = in_thread(pool, app, JOB.format(job["id"]), wait(20))
    until_waiting(app)
    with dispatcher(store, settings):
        response, seconds, answered = call.result(timeout=30)
    assert response.status_code == 200 and seconds < 10.0, seconds
    assert response.headers["Preference-Applied"] == "wait=20"
    body = response.get_json()
    assert body["state"] == "done" and body["counts"]["done"] == 3
    assert all(task["state"] in ENDED_TASK for task in body["tasks"])
    assert answered - ended_at(store, job["id"]) < 0.5
    # the job's other results need no wait now
    for task in body["tasks"]:
        result, seconds, _ = timed_get(client, path_of(task["result_url"]), wait(20))
        assert result.status_code == 200 and seconds < 0.5
        assert "Preference-Applied" not in result.headers


def test_a_waiting_result_of_a_task_that_fails_is_422(app, client, store, settings, pool):
    job = new_job(client, ["sk_camera.png"], "crop(x=5000, y=0)")      # outside the 512×512 image
    call = in_thread(pool, app, path_of(job["tasks"][0]["result_url"]), wait(20))
    until_waiting(app)
    with dispatcher(store, settings):
        response, seconds, _ = call.result(timeout=30)
    assert_error(response, 422, "task_failed", "sk_camera.png", "x=5000")
    assert seconds < 10.0 and response.headers["Preference-Applied"] == "wait=20"
    assert response.get_json()["state"] == "failed"


def test_a_result_wait_ends_with_its_own_task_not_the_whole_job(app, client, store, pool):
    job = new_job(client, ["pil_hopper.bmp", "sk_camera.png"])
    first = in_thread(pool, app, path_of(job["tasks"][0]["result_url"]), wait(20))
    second = in_thread(pool, app, path_of(job["tasks"][1]["result_url"]), wait(1))
    whole = in_thread(pool, app, JOB.format(job["id"]), wait(1))
    until_waiting(app, 3)
    [claim, _] = store.claim("by-hand", 2, busy=False)
    assert claim.n == 0
    result = process((REAL / "pil_hopper.bmp").read_bytes(), parse_pipeline("grayscale"), Output())
    assert store.complete("by-hand", claim.id, result)
    response, seconds, _ = first.result(timeout=10)
    assert response.status_code == 200 and response.data == result.data and seconds < 1.0
    other, seconds, _ = second.result(timeout=10)
    assert other.status_code == 202 and other.get_json()["state"] == "running" and seconds >= 0.8
    job_now, seconds, _ = whole.result(timeout=10)
    assert job_now.get_json()["state"] == "running" and seconds >= 0.8
    assert job_now.headers["Preference-Applied"] == "wait=1"


# ---- the job goes away while a client waits

def test_a_job_deleted_while_clients_wait_is_404_at_once(app, client, pool):
    job = new_job(client)
    result = in_thread(pool, app, path_of(job["tasks"][0]["result_url"]), wait(20))
    whole = in_thread(pool, app, JOB.format(job["id"]), wait(20))
    until_waiting(app, 2)
    deleted = time.monotonic()
    assert client.delete(JOB.format(job["id"])).status_code == 204
    for call in (result, whole):
        response, _, _ = call.result(timeout=10)
        assert_error(response, 404, "not_found", job["id"])
    assert time.monotonic() - deleted < 2.0
    assert free_slots(app) == app.extensions["pixmill"].settings.threads // 2     # the slots came back


def test_a_job_cancelled_while_clients_wait_answers_cancelled(app, client, store, pool):
    job = new_job(client)
    result = in_thread(pool, app, path_of(job["tasks"][0]["result_url"]), wait(20))
    whole = in_thread(pool, app, JOB.format(job["id"]), wait(20))
    until_waiting(app, 2)
    cancelled = time.monotonic()
    store.cancel_job(job["id"])
    assert_error(result.result(timeout=10)[0], 404, "not_found", "cancelled")
    response = whole.result(timeout=10)[0]
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    assert response.headers["Preference-Applied"] == "wait=20"
    assert time.monotonic() - cancelled < 2.0


# ---- waits share the event-stream slots

@pytest.fixture
def one_slot(store: Store):
    """An app with two threads, so one slot for event streams and long polls."""
    settings = replace(store.settings, threads=2)
    return create_app(settings, store, sse_poll=0.05, sse_max_seconds=20)


@contextmanager
def holding(app) -> Iterator[None]:
    assert slots(app).acquire(blocking=False), "the slot is already taken"
    try:
        yield
    finally:
        slots(app).release()


def test_with_every_slot_taken_a_wait_answers_at_once_without_the_preference(one_slot):
    client = make_client(one_slot)
    job = new_job(client)
    with holding(one_slot):
        for url in (path_of(job["tasks"][0]["result_url"]), JOB.format(job["id"])):
            response, seconds, _ = timed_get(client, url, wait(20))
            assert response.status_code in (200, 202) and seconds < 0.5, (url, seconds)
            assert "Preference-Applied" not in response.headers
    response, seconds, _ = timed_get(client, JOB.format(job["id"]), wait(1))       # the slot is back
    assert 0.8 <= seconds <= 5.0 and response.headers["Preference-Applied"] == "wait=1"


def test_a_waiting_request_holds_the_slot_against_streams_and_other_waits(one_slot, pool):
    client = make_client(one_slot)
    job = new_job(client)
    waiting = in_thread(pool, one_slot, JOB.format(job["id"]), wait(2))
    until_waiting(one_slot)
    assert_error(client.get(f"/api/v1/jobs/{job['id']}/events"), 503, "busy")
    second, seconds, _ = timed_get(client, path_of(job["tasks"][0]["result_url"]), wait(20))
    assert second.status_code == 202 and seconds < 0.5 and "Preference-Applied" not in second.headers
    first, seconds, _ = waiting.result(timeout=10)
    assert first.headers["Preference-Applied"] == "wait=2" and seconds >= 1.8
    stream = client.get(f"/api/v1/jobs/{job['id']}/events", buffered=False)          # free again
    assert stream.status_code == 200
    stream.close()


def test_an_open_event_stream_holds_the_slot_against_waits(one_slot):
    client = make_client(one_slot)
    job = new_job(client)
    stream = client.get(f"/api/v1/jobs/{job['id']}/events", buffered=False)
    try:
        assert next(stream.response).startswith(b"retry:")
        response, seconds, _ = timed_get(client, JOB.format(job["id"]), wait(20))
        assert seconds < 0.5 and "Preference-Applied" not in response.headers
    finally:
        stream.close()
    response, seconds, _ = timed_get(client, JOB.format(job["id"]), wait(1))
    assert response.headers["Preference-Applied"] == "wait=1"


def test_without_slots_at_all_waits_never_apply(store):
    client = make_client(create_app(replace(store.settings, threads=1), store))
    job = new_job(client)
    response, seconds, _ = timed_get(client, JOB.format(job["id"]), wait(20))
    assert response.status_code == 200 and seconds < 0.5 and "Preference-Applied" not in response.headers


# ---- parsing the header

@pytest.mark.parametrize("prefer, seconds", [
    (None, 0), ("", 0), ("garbage", 0), ("wait", 0), ("wait=", 0), ("wait=abc", 0), ("wait=-3", 0),
    ("wait=0", 0), ("nowait=5", 0), ("wait=5x", 0), ("respond-async", 0),
    ("wait=5", 5), ("respond-async, wait=5", 5), ("wait=5, respond-async", 5), ("WAIT=3", 3),
    ("wait = 7", 7), ('wait="4"', 4), ("handling=lenient, wait=2, respond-async", 2),
    ("wait=30", 30), ("wait=31", MAX_WAIT), ("wait=999", MAX_WAIT), ("wait=999999", MAX_WAIT),
    (" " * 1000 + "wait=5", 0), (" " * 990 + "wait=5", 5),       # only the first 1000 characters are read
])
def test_requested_wait_parses_rfc_7240(prefer, seconds):
    headers = {} if prefer is None else {"Prefer": prefer}
    assert requested_wait(headers) == seconds
    assert MAX_WAIT == 30


def test_requested_wait_reads_werkzeug_headers(app):
    with app.test_request_context(headers=[("Prefer", "respond-async"), ("Prefer", "wait=4")]):
        from flask import request
        assert requested_wait(request.headers) == 4          # repeated headers are joined with commas


# ---- event streams wake on commits, not on their poll timer

def read_stream(response, timeout: float = 30.0) -> list[tuple[float, str, dict]]:
    """(wall-clock time, event, data) of each SSE event, until the stream ends."""
    events = []
    deadline = time.monotonic() + timeout
    for chunk in response.response:
        for kind, data in re.findall(r"event: (\w+)\ndata: (.*)\n\n", chunk.decode()):
            events.append((time.time(), kind, json.loads(data)))
        assert time.monotonic() < deadline, "the stream did not end"
    return events


def test_an_event_stream_with_a_long_poll_sees_the_end_soon_after_the_job_ends(store, settings):
    app = create_app(settings, store, sse_poll=5, sse_max_seconds=30)
    client = make_client(app)
    job = new_job(client, ["sk_camera.png", "pil_hopper.bmp"])
    started = time.monotonic()
    with dispatcher(store, settings):
        response = client.get(f"/api/v1/jobs/{job['id']}/events", buffered=False)
        try:
            events = read_stream(response)
        finally:
            response.close()
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "end" and "gone" not in kinds, kinds
    end_time, _, end = events[-1]
    assert end["state"] == "done" and end["counts"]["done"] == 2
    assert end_time - ended_at(store, job["id"]) < 2.0
    assert time.monotonic() - started < 15.0
    assert free_slots(app) == settings.threads // 2


def slow_stream(store, settings):
    """A new job and its event stream on an app that polls every 5 s: (job, response, chunks after
    the first progress event)."""
    client = make_client(create_app(settings, store, sse_poll=5, sse_max_seconds=30))
    job = new_job(client)
    response = client.get(f"/api/v1/jobs/{job['id']}/events", buffered=False)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry:") and next(chunks).startswith(b"event: progress")
    return job, response, chunks


def test_an_event_stream_with_a_long_poll_says_gone_soon_after_a_delete(store, settings, pool):
    job, response, chunks = slow_stream(store, settings)
    try:
        deleted = time.monotonic()
        later = pool.submit(lambda: (time.sleep(0.2), store.delete_job(job["id"])))
        gone = next(chunks)                                    # sleeps in the stream until the delete
        assert gone.startswith(b"event: gone"), gone
        assert 0.15 <= time.monotonic() - deleted < 2.0
        later.result(timeout=5)
        assert next(chunks, None) is None
    finally:
        response.close()


def test_an_event_stream_sees_a_commit_made_between_its_looks(store, settings):
    """A commit that lands after the stream looked at the job, before it sleeps again, still wakes it.

    The stream is a generator: between two events it is suspended while the server writes the
    last one out, and it only starts waiting when it is resumed. Here the job is cancelled in that
    gap, and the stream must report it at once rather than after its 5 s sse_poll."""
    job, response, chunks = slow_stream(store, settings)
    try:
        store.cancel_job(job["id"])                           # while the stream is between its looks
        started = time.monotonic()
        progress = next(chunks)
        seconds = time.monotonic() - started
        assert progress.startswith(b"event: progress") and b'"state":"cancelled"' in progress
        assert seconds < 0.5, f"the stream saw the commit only after {seconds:.2f} s (its sse_poll is 5 s)"
        assert next(chunks).startswith(b"event: end")
    finally:
        response.close()


def test_a_wait_that_times_out_returns_only_after_the_watcher_has_stopped_looking_for_it(tmp_path: Path):
    # The watching thread may be running a request's check when the request's wait runs out; the
    # request must not return (and its test or app close the store) while that check still runs.
    from pixmill.store.dbwatch import CommitSignal, DbWatch
    from pixmill.web.waiting import Waits

    db_path = tmp_path / "pixmill.db"
    db_path.touch()
    waits, running, calls = Waits(lambda: DbWatch(db_path)), threading.Event(), []

    def check() -> bool:
        calls.append(threading.current_thread().name)
        if len(calls) > 1:            # the watcher's look, after the commit below: slower than the wait
            running.set()
            time.sleep(0.6)
            running.clear()
        return False

    signal = CommitSignal(db_path)
    threading.Timer(0.1, signal.send).start()
    began = time.monotonic()
    assert waits.until(check, 0.3) is False
    assert not running.is_set(), "the request returned while its check was still running"
    assert time.monotonic() - began >= 0.6 and calls[1] == "pixmill-waits"
    signal.close()
