"""Chunks: a long queue of small tasks goes to the workers several per message, with the results of one at
a time; a bad image or a runaway in a chunk fails alone and its chunk-mates are not charged for it. On a
local pool in a thread of the test, on both backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import replace
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import NewTask, Store, TaskState
from pixmill.worker.dispatcher import CHUNK
from pixmill.worker.engine import make_executor
from support.jobs_tasks import HANG, make_png, misbehaving_process
from support.web import dispatcher

pytestmark = [pytest.mark.both_backends, pytest.mark.timeout(120)]

PIPELINE = parse_pipeline("flip")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    engine="local", workers=2, task_timeout=60.0, lease_seconds=30.0)


class Counting(Executor):
    """A pool that counts the tasks of each message it is handed."""

    def __init__(self, inner: Executor) -> None:
        self.inner, self.sizes = inner, []

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        self.sizes.append(len(args[1]) if fn.__name__ == "run_many" else 1)
        return self.inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait=wait, cancel_futures=cancel_futures)


def dispatching(store: Store, settings: Settings, make_pool: Callable[[], Executor], task: Callable = process):
    return dispatcher(store, settings, workers=2, make_pool=make_pool, task=task, drain_seconds=5.0)


def wait_ended(store: Store, job_id: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while store.get_job(job_id).state not in ("done", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.05)
    return store.get_job(job_id)


def tiny_job(store: Store, images: list[bytes]):
    tasks = [NewTask(f"t{i}.png", PIPELINE, store.put_blob(data), "png") for i, data in enumerate(images)]
    return store.create_job(tasks, Output("png"))


def test_a_long_queue_of_tiny_images_goes_in_chunks_with_the_same_results(store: Store, settings: Settings):
    images = [make_png(i, size=(24, 32)) for i in range(120)]
    pool = Counting(make_executor("local", 2))
    job = tiny_job(store, images)
    with dispatching(store, settings, lambda: pool):
        done = wait_ended(store, job.id)
    assert done.counts()["done"] == 120 and all(t.attempts == 1 for t in done.tasks)
    for task, data in zip(done.tasks, images):
        assert store.read_blob(task.result_blob) == process(data, PIPELINE, Output("png")).data
    assert sum(pool.sizes) == 120 and pool.sizes[0] == 1          # no estimate of their time yet: alone
    assert max(pool.sizes) > 1 and max(pool.sizes) <= CHUNK
    assert len(pool.sizes) < 120 / 2                              # fewer hand-offs than tasks, by far


def test_inputs_kept_as_files_go_one_per_message(store: Store, settings: Settings, tmp_path: Path):
    files = Store.open(Settings(data_dir=settings.data_dir, database_url=settings.database_url,
                                blob_url=settings.blob_url, inline_bytes=0))
    try:
        job = tiny_job(files, [make_png(i, size=(24, 32)) for i in range(40)])
    finally:
        files.close()
    pool = Counting(make_executor("local", 2))
    with dispatching(store, settings, lambda: pool):
        assert wait_ended(store, job.id).counts()["done"] == 40
    assert pool.sizes == [1] * 40


def test_a_bad_image_in_a_chunk_fails_alone(store: Store, settings: Settings):
    images = [make_png(i, size=(24, 32)) for i in range(60)]
    images[40] = images[40][:60]                                   # truncated
    pool = Counting(make_executor("local", 2))
    job = tiny_job(store, images)
    with dispatching(store, settings, lambda: pool):
        done = wait_ended(store, job.id)
    assert max(pool.sizes) > 1
    failed = [t for t in done.tasks if t.state is TaskState.FAILED]
    assert [t.n for t in failed] == [40] and "truncated" in failed[0].error
    assert all(t.attempts == 1 for t in done.tasks)


def test_a_runaway_in_a_chunk_fails_alone_and_its_chunk_mates_are_not_charged(store: Store, settings: Settings,
                                                                            caplog):
    settings = replace(settings, task_timeout=1.0)
    images = [make_png(i, size=(24, 32)) for i in range(80)]
    images[60] = make_png(60, size=(24, 32), marker=HANG)
    job = tiny_job(store, images)
    with caplog.at_level(logging.WARNING, logger="pixmill.worker.dispatcher"), \
            dispatching(store, settings, lambda: make_executor("local", 2), task=misbehaving_process):
        done = wait_ended(store, job.id)
    assert any("a chunk of" in r.message for r in caplog.records), "the hanging image was not in a chunk"
    hung = done.tasks[60]
    assert hung.state is TaskState.FAILED and "longer than 1 s" in hung.error
    others = [t for t in done.tasks if t.n != 60]
    assert all(t.state is TaskState.DONE for t in others)
    assert all(t.attempts == 1 for t in others), [t.attempts for t in others if t.attempts != 1]
