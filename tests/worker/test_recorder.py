"""The recorder: results stored several per transaction (TaskQueue.complete_many), in a thread of the dispatcher."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import StorageFull
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result
from pixmill.store import Finished, JobView, NewTask, Store, StoredResult, TaskState
from pixmill.worker import recorder as recorder_module
from pixmill.worker.dispatcher import Dispatcher
from pixmill.worker.recorder import Recorder
from support.backends import blob_keys, partial_writes

GRAY = parse_pipeline("grayscale")
FULL = "the disk that holds the data dir is full"

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_backends]   # each test on SQLite and on PostgreSQL


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    # inline_bytes=0: results are files or objects here, whose writes the tests make fail (small results
    # kept in their rows are tested in tests/store/test_inline_blobs.py).
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    lease_seconds=30, max_attempts=3, inline_bytes=0)


@pytest.fixture
def recorders():
    """Recorders made by a test; each one is closed (its thread joined) at the end."""
    made: list[Recorder] = []

    def make(store: Store, dispatcher_id: str = "d1") -> Recorder:
        made.append(Recorder(store, dispatcher_id))
        return made[-1]

    yield make
    for rec in made:
        rec.close(timeout=10)
        assert not rec._thread.is_alive(), "a recorder thread did not stop"


def make_job(store: Store, count: int, *, output: Output = Output()) -> JobView:
    tasks = [NewTask(f"img{i}.png", GRAY, store.put_blob(bytes([i % 256]) * 10), "png") for i in range(count)]
    return store.create_job(tasks, output)


def result(i: int) -> Result:
    return Result(f"result {i}".encode() * 3, "png", 4 + i, 3, (f"note {i}",))


def all_files(store: Store) -> list[str]:
    """Every blob stored and every half-written one, in the folder (tmp/ included) or the bucket."""
    return sorted(blob_keys(store) | set(partial_writes(store)))


def blob_rows(store: Store) -> set[str]:
    return {r[0] for r in store.database.connection().execute("SELECT key FROM blobs")}


def assert_blobs_consistent(store: Store) -> None:
    """The blobs stored are exactly those the table knows, none is half-written, the usage adds up."""
    assert set(all_files(store)) == blob_rows(store)
    assert not partial_writes(store)
    assert store.blob_usage() == sum(len(store.read_blob(key)) for key in all_files(store))


class Gate:
    """Wraps store.complete_many: the first call waits until released; records each call's task ids."""

    def __init__(self, store: Store, monkeypatch) -> None:
        self.original = store.complete_many
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[int]] = []
        monkeypatch.setattr(store, "complete_many", self)

    def __call__(self, dispatcher_id, done):
        self.batches.append([item[0] for item in done])
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(20), "the test never released the first batch"
        return self.original(dispatcher_id, done)


# ---- complete_many

def test_results_a_worker_staged_are_published_for_their_claim_and_deleted_for_any_other(store: Store):
    job = make_job(store, 2)
    first, second = store.claim("d1", 2, busy=False)
    store.release("d1", [first.id, second.id])                # d1's claims are over; d2 claims both again
    again = {c.id: c for c in store.claim("d2", 2, busy=False)}
    staged = [StoredResult(store.blobs.stage(result(n).data, max_bytes=None), "png", 4 + n, 3, (f"note {n}",))
              for n in range(3)]
    keys = [s.staged.key for s in staged]
    done = [Finished(first.id, staged[0], None, first.claims),            # the old claim's: refused
            Finished(first.id, staged[1], None, again[first.id].claims),  # the current claim's: recorded
            Finished(second.id, staged[2], None, again[second.id].claims)]
    assert store.complete_many("d2", done) == [False, True, True]
    tasks = store.get_job(job.id).tasks
    assert [t.result_blob for t in tasks] == keys[1:]
    assert store.read_blob(tasks[0].result_blob) == result(1).data and tasks[0].notes == ("note 1",)
    assert keys[0] not in blob_keys(store)                      # the refused one is deleted, not left
    assert_blobs_consistent(store)


def test_complete_many_stores_every_held_result_in_one_transaction(store: Store, monkeypatch):
    job = make_job(store, 3)
    claims = store.claim("d1", 3, busy=False)
    writes = []
    original = store.database.write
    monkeypatch.setattr(store.database, "write", lambda: (writes.append(1), original())[1])
    started = time.time() - 5
    assert store.complete_many("d1", [(c.id, result(c.n), started) for c in claims]) == [True] * 3
    assert len(writes) == 1
    done = store.get_job(job.id)
    assert done.state == "done"
    for task in done.tasks:
        expected = result(task.n)
        assert task.state is TaskState.DONE and store.read_blob(task.result_blob) == expected.data
        assert (task.result_format, task.width, task.height, task.notes) == \
            (expected.format, expected.width, expected.height, expected.notes)
        assert task.started_at == started and task.finished_at >= started and task.error is None
    assert len({t.result_blob for t in done.tasks}) == 3
    assert_blobs_consistent(store)
    assert store.renew("d1") == set()
    assert store.complete_many("d1", []) == []


@pytest.mark.parametrize("how", ["cancelled", "released", "deleted", "another dispatcher's"])
def test_a_task_no_longer_held_is_not_stored_and_leaves_no_blob(store: Store, how: str):
    held_job, lost_job = make_job(store, 1), make_job(store, 1)
    held, lost = store.claim("d1", 2, busy=False)
    assert (held.job_id, lost.job_id) == (held_job.id, lost_job.id)
    if how == "cancelled":
        store.cancel_job(lost_job.id)
    elif how == "released":
        store.release("d1", [lost.id])
    elif how == "deleted":
        store.delete_job(lost_job.id)
    else:
        store.release("d1", [lost.id])
        assert [c.id for c in store.claim("d2", 1, busy=False)] == [lost.id]
    files_before = len(all_files(store))
    assert store.complete_many("d1", [(held.id, result(0), None), (lost.id, result(1), None)]) == [True, False]
    assert len(all_files(store)) == files_before + 1                   # the held task's result only
    assert store.get_job(held_job.id).tasks[0].state is TaskState.DONE
    if how != "deleted":
        task = store.get_job(lost_job.id).tasks[0]
        assert task.result_blob is None
        assert task.state is {"cancelled": TaskState.CANCELLED, "released": TaskState.QUEUED,
                               "another dispatcher's": TaskState.RUNNING}[how]
    assert_blobs_consistent(store)


def test_a_result_the_disk_cannot_hold_fails_its_task_and_the_others_are_stored(store: Store, monkeypatch):
    job = make_job(store, 3)
    claims = store.claim("d1", 3, busy=False)
    results = [result(c.n) for c in claims]
    stage = store.blobs.stage

    def full_for_one(source, **kwargs):
        if source == results[1].data:
            raise StorageFull(FULL)
        return stage(source, **kwargs)

    monkeypatch.setattr(store.blobs, "stage", full_for_one)
    started = time.time() - 1
    done = [(c.id, r, started) for c, r in zip(claims, results)]
    assert store.complete_many("d1", done) == [True, False, True]
    tasks = store.get_job(job.id).tasks
    assert [t.state for t in tasks] == [TaskState.DONE, TaskState.FAILED, TaskState.DONE]
    assert tasks[1].error == f"could not store the result: {FULL}"
    assert tasks[1].result_blob is None and tasks[1].started_at == started and tasks[1].finished_at
    assert store.read_blob(tasks[0].result_blob) == results[0].data
    assert store.read_blob(tasks[2].result_blob) == results[2].data
    assert store.renew("d1") == set()                                   # the failed task is not held either
    assert_blobs_consistent(store)
    assert not store.complete("d1", claims[1].id, results[1])           # complete() goes the same way


def test_complete_fails_the_task_when_the_disk_is_full(store: Store, monkeypatch):
    job = make_job(store, 1)
    [claim] = store.claim("d1", 1, busy=False)

    def full(source, **kwargs):
        raise StorageFull(FULL)

    monkeypatch.setattr(store.blobs, "stage", full)
    assert store.complete("d1", claim.id, result(0)) is False
    task = store.get_job(job.id).tasks[0]
    assert task.state is TaskState.FAILED and task.error == f"could not store the result: {FULL}"


def test_a_store_error_in_the_transaction_stores_nothing_of_the_batch(store: Store, monkeypatch):
    job = make_job(store, 3)
    claims = store.claim("d1", 3, busy=False)
    publish = store.blobs.publish
    calls = []

    def fail_second(staged):
        calls.append(staged.key)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return publish(staged)

    monkeypatch.setattr(store.blobs, "publish", fail_second)
    with pytest.raises(OSError):
        store.complete_many("d1", [(c.id, result(c.n), None) for c in claims])
    assert [t.state for t in store.get_job(job.id).tasks] == [TaskState.RUNNING] * 3
    assert_blobs_consistent(store)                                      # the first result's file went too
    assert len(all_files(store)) == 3


# ---- the Recorder thread

def test_results_that_arrive_together_are_stored_in_few_transactions(store: Store, recorders, monkeypatch):
    job = make_job(store, 50)
    claims = store.claim("d1", 50, busy=False)
    assert len(claims) == 50
    gate = Gate(store, monkeypatch)
    rec = recorders(store)
    rec.put(claims[0].id, result(0), None)
    assert gate.entered.wait(10)                      # the first result is being stored alone ...
    for claim in claims[1:]:                          # ... while the other 49 arrive
        rec.put(claim.id, result(claim.n), None)
    assert rec.waiting == 50
    assert rec.flush(timeout=0.05) is False           # not stored yet: flush says so when its time is up
    writes = []
    original = store.database.write
    monkeypatch.setattr(store.database, "write", lambda: (writes.append(1), original())[1])
    gate.release.set()
    assert rec.flush(timeout=20) is True and rec.waiting == 0 and rec.error is None
    batch = recorder_module.BATCH
    assert [len(b) for b in gate.batches] == [1, batch, 49 - batch]
    assert [i for b in gate.batches for i in b] == [c.id for c in claims]
    assert len(writes) == 3                           # one transaction per batch, not one per result
    done = store.get_job(job.id)
    assert done.counts()["done"] == 50
    assert all(store.read_blob(t.result_blob) == result(t.n).data for t in done.tasks)
    assert_blobs_consistent(store)


def test_fifty_results_are_all_stored(store: Store, recorders, monkeypatch):
    job = make_job(store, 50)
    claims = store.claim("d1", 50, busy=False)
    calls = []
    original = store.complete_many
    monkeypatch.setattr(store, "complete_many", lambda d, done: (calls.append(len(done)), original(d, done))[1])
    rec = recorders(store)
    for claim in claims:
        rec.put(claim.id, result(claim.n), None)
    assert rec.flush(timeout=20) is True
    assert sum(calls) == 50 and max(calls) <= recorder_module.BATCH
    assert store.get_job(job.id).counts()["done"] == 50
    assert_blobs_consistent(store)


def test_close_stores_what_is_still_queued(store: Store, recorders, monkeypatch):
    job = make_job(store, 10)
    claims = store.claim("d1", 10, busy=False)
    gate = Gate(store, monkeypatch)
    rec = recorders(store)
    rec.put(claims[0].id, result(0), None)
    assert gate.entered.wait(10)
    for claim in claims[1:]:
        rec.put(claim.id, result(claim.n), None)
    closing = threading.Thread(target=rec.close, kwargs={"timeout": 20})
    closing.start()
    try:
        deadline = time.monotonic() + 10
        while rec._queue.qsize() < 10:                # 9 results and the stop mark are queued
            assert time.monotonic() < deadline, "close() did not queue its stop mark"
            time.sleep(0.005)
        assert store.get_job(job.id).counts()["done"] == 0
    finally:
        gate.release.set()
        closing.join(20)
    assert not closing.is_alive() and not rec._thread.is_alive()
    assert store.get_job(job.id).counts()["done"] == 10 and rec.waiting == 0
    assert_blobs_consistent(store)


def test_a_store_error_sets_the_recorders_error_and_it_goes_on(store: Store, recorders, monkeypatch):
    job = make_job(store, 2)
    first, second = store.claim("d1", 2, busy=False)
    broken = sqlite3.OperationalError("disk I/O error")
    original = store.complete_many
    failing = [True]

    def complete_many(dispatcher_id, done):
        if failing[0]:
            raise broken
        return original(dispatcher_id, done)

    monkeypatch.setattr(store, "complete_many", complete_many)
    rec = recorders(store)
    rec.put(first.id, result(0), None)
    assert rec.flush(timeout=10) is True                # counted as handled, so waits end
    assert rec.error is broken
    assert store.get_job(job.id).tasks[0].state is TaskState.RUNNING   # still leased: it will run again
    assert store.renew("d1") == {first.id, second.id}
    failing[0] = False
    rec.put(second.id, result(1), None)
    assert rec.flush(timeout=10) is True and rec.error is broken
    assert [t.state for t in store.get_job(job.id).tasks] == [TaskState.RUNNING, TaskState.DONE]
    assert_blobs_consistent(store)


def test_a_result_of_an_earlier_claim_is_not_stored_over_a_new_one(store: Store, recorders, monkeypatch):
    """A result put in the recorder, then the task requeued (its upload's format changed at seal)
    and claimed again by the same dispatcher before the result was committed: the old result,
    encoded for the old format, must not become the task's result."""
    job_id = store.open_job(Output())
    store.add_tasks(job_id, [NewTask("a.jpg", GRAY, store.put_blob(b"input"), "jpeg")], start=0)
    other = make_job(store, 1)
    first, blocker = store.claim("d1", 2, busy=False)
    assert first.job_id == job_id and blocker.job_id == other.id
    gate = Gate(store, monkeypatch)
    rec = recorders(store)
    rec.put(blocker.id, result(9), None)              # the recorder is busy with another result ...
    assert gate.entered.wait(10)
    rec.put(first.id, Result(b"encoded as jpeg", "jpeg", 1, 1), None, first.claims)   # ... when this one arrives
    store.seal_job(job_id, [], Output("png"), start=1)                    # requeued for PNG
    [again] = store.claim("d1", 1, busy=False)                            # the same dispatcher runs it anew
    assert again.id == first.id and again.output == Output("png") and again.claims == first.claims + 1
    gate.release.set()
    assert rec.flush(timeout=20) is True
    task = store.get_job(job_id).tasks[0]
    assert task.result_format != "jpeg", "the result of the claim made before the requeue was stored"
    assert task.state is TaskState.RUNNING and task.result_blob is None


# ---- the dispatcher's loop

def fake_task(data: bytes, pipeline, output: Output, *, max_pixels: int) -> Result:
    return Result(b"done:" + data, "png", 1, 1)


def run_dispatcher(store: Store, settings: Settings, stop: threading.Event):
    """Run a Dispatcher over a thread pool in a thread; return (dispatcher, thread, outcome dict)."""
    worker = Dispatcher(store, settings, lambda: ThreadPoolExecutor(2), workers=2, engine="local",
                        task=fake_task, drain_seconds=5)
    outcome: dict = {}

    def target():
        try:
            outcome["returned"] = worker.run(stop)
        except BaseException as exc:
            outcome["raised"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return worker, thread, outcome


def test_the_dispatcher_records_through_the_recorder(store: Store, settings: Settings):
    job = make_job(store, 20)
    stop = threading.Event()
    worker, thread, outcome = run_dispatcher(store, settings, stop)
    try:
        deadline = time.monotonic() + 20
        while store.get_job(job.id).state != "done":
            assert time.monotonic() < deadline, "the dispatcher did not finish the job"
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive() and outcome == {"returned": "stopped"}
    assert not worker.recorder._thread.is_alive()
    done = store.get_job(job.id)
    assert all(store.read_blob(t.result_blob) == b"done:" + store.read_blob(t.input_blob) for t in done.tasks)
    assert_blobs_consistent(store)


def test_a_store_error_in_the_recorder_ends_the_dispatcher_with_it(store: Store, settings: Settings, monkeypatch):
    job = make_job(store, 2)
    broken = sqlite3.OperationalError("disk I/O error")

    def complete_many(dispatcher_id, done):
        raise broken

    monkeypatch.setattr(store, "complete_many", complete_many)
    stop = threading.Event()
    worker, thread, outcome = run_dispatcher(store, settings, stop)
    try:
        thread.join(20)
        assert not thread.is_alive(), "the dispatcher went on although its results could not be stored"
    finally:
        stop.set()
        thread.join(20)
        if worker.pool is not None:
            worker.pool.shutdown(wait=True, cancel_futures=True)
    assert outcome.get("raised") is broken, outcome
    assert worker.recorder.error is broken and not worker.recorder._thread.is_alive()
    # Left as running, so the next dispatcher on this host requeues its tasks at once (not after the lease).
    assert store.database.connection().execute("SELECT stopped_at FROM dispatchers WHERE id = ?",
                               (worker.id,)).fetchone()[0] is None
    tasks = store.get_job(job.id).tasks
    assert TaskState.DONE not in {t.state for t in tasks}
    assert all(t.result_blob is None for t in tasks)
    held = sum(t.state is TaskState.RUNNING for t in tasks)
    assert store.recover_dead(worker.host, lambda pid, started: True) == held
    assert {t.state for t in store.get_job(job.id).tasks} == {TaskState.QUEUED}
    assert_blobs_consistent(store)
