"""The dispatcher on a local process pool, in a thread of the test: results, crashes, timeouts, cancel, stop.

The same dispatcher on MPI, under its supervisor, is tested in test_jobs_mpi.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixmill.cli.jobs import status, submit
from pixmill.config import Settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import JobView, NewTask, Store, TaskState
from pixmill.worker.dispatcher import STOPPED, Dispatcher
from pixmill.worker.engine import make_executor
from support.backends import blob_keys
from support.jobs_tasks import CRASH, HANG, SLOW, make_png, misbehaving_process, slow_process

pytestmark = pytest.mark.both_backends   # each test on SQLite and on PostgreSQL

PIPELINE = parse_pipeline("grayscale | blur(ksize=5)")
WAIT = 90.0


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    engine="local", workers=2, task_timeout=60.0, lease_seconds=30.0)


@contextlib.contextmanager
def dispatching(store: Store, settings: Settings, *, task: Callable = process, workers: int = 2):
    """A dispatcher on a local pool, running in a thread until the block ends."""
    stop = threading.Event()
    dispatcher = Dispatcher(store, settings, lambda: make_executor("local", workers), workers=workers,
                            engine="local", task=task, drain_seconds=5.0)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(dispatcher.run(stop)), daemon=True)
    thread.start()
    try:
        yield dispatcher
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the dispatcher did not stop"
        assert outcome == [STOPPED]


def submit_job(store: Store, images: list[bytes], output: Output = Output()) -> JobView:
    tasks = [NewTask(f"img{i}.png", PIPELINE, store.put_blob(data), "png") for i, data in enumerate(images)]
    return store.create_job(tasks, output)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def wait_for_job(store: Store, job_id: str) -> JobView:
    wait_until(lambda: store.get_job(job_id).state in ("done", "cancelled"))
    return store.get_job(job_id)


def test_a_job_completes_with_the_results_process_gives(store: Store, settings: Settings):
    images = [make_png(i) for i in range(10)]
    job = submit_job(store, images, Output("jpeg", 85))
    with dispatching(store, settings):
        done = wait_for_job(store, job.id)
    assert done.counts()["done"] == 10
    for task in done.tasks:
        expected = process(images[task.n], PIPELINE, Output("jpeg", 85))
        assert store.read_blob(task.result_blob) == expected.data
        assert (task.result_format, task.width, task.height, task.attempts) == ("jpeg", 128, 96, 1)
        assert task.started_at <= task.finished_at
    assert store.stats()["tasks"]["done"] == 10


def test_a_bad_image_fails_its_task_and_the_rest_go_on(store: Store, settings: Settings):
    job = submit_job(store, [make_png(0), make_png(1)[:200], make_png(2)])
    with dispatching(store, settings):
        done = wait_for_job(store, job.id)
    assert [t.state for t in done.tasks] == [TaskState.DONE, TaskState.FAILED, TaskState.DONE]
    assert done.tasks[1].error and done.tasks[1].result_blob is None


def test_a_task_that_crashes_its_worker_every_time_fails_after_three_attempts(store: Store, settings: Settings):
    images = [make_png(i, marker=CRASH if i == 4 else None) for i in range(10)]
    job = submit_job(store, images)
    with dispatching(store, settings, task=misbehaving_process):
        done = wait_for_job(store, job.id)
    crashed = done.tasks[4]
    assert crashed.state is TaskState.FAILED and crashed.attempts == 3
    assert crashed.error == "worker crashed while processing this image (3 attempts)"
    for task in done.tasks[:4] + done.tasks[5:]:
        assert task.state is TaskState.DONE
        assert store.read_blob(task.result_blob) == process(images[task.n], PIPELINE).data


def test_a_runaway_task_times_out_and_the_others_are_requeued_uncounted(store: Store, settings: Settings):
    settings = Settings(**{**settings.__dict__, "task_timeout": 2.0})
    images = [make_png(i, marker=HANG if i == 1 else SLOW if i in (0, 2, 3) else None) for i in range(6)]
    job = submit_job(store, images)
    started = time.monotonic()
    with dispatching(store, settings, task=misbehaving_process):
        done = wait_for_job(store, job.id)
    assert time.monotonic() - started < 40
    runaway = done.tasks[1]
    assert runaway.state is TaskState.FAILED and "longer than 2 s" in runaway.error
    others = [t for t in done.tasks if t.n != 1]
    assert all(t.state is TaskState.DONE for t in others)
    assert all(t.attempts == 1 for t in others), [t.attempts for t in others]


def test_tasks_of_a_cancelled_job_are_not_started(store: Store, settings: Settings):
    cancelled = submit_job(store, [make_png(i) for i in range(3)])
    store.cancel_job(cancelled.id)
    running = submit_job(store, [make_png(i) for i in range(30)])
    with dispatching(store, settings, task=slow_process):
        wait_until(lambda: store.get_job(running.id).counts()["done"] >= 2)
        store.cancel_job(running.id)
        time.sleep(1.0)
    assert all(t.attempts == 0 and t.state is TaskState.CANCELLED for t in store.get_job(cancelled.id).tasks)
    after = store.get_job(running.id)
    assert after.counts()["cancelled"] >= 20 and after.counts()["running"] == after.counts()["queued"] == 0
    assert all(t.result_blob is None for t in after.tasks if t.state is TaskState.CANCELLED)


def test_a_clean_stop_leaves_every_task_done_or_queued(store: Store, settings: Settings):
    job = submit_job(store, [make_png(i) for i in range(40)])
    with dispatching(store, settings, task=slow_process):
        wait_until(lambda: store.get_job(job.id).counts()["done"] >= 3)
    after = store.get_job(job.id)
    assert after.counts()["running"] == 0 and after.counts()["done"] >= 3
    for task in after.tasks:
        assert (task.state, task.result_blob is not None) in ((TaskState.DONE, True), (TaskState.QUEUED, False))
        assert task.attempts == (1 if task.state is TaskState.DONE else 0)
    referenced = {t.result_blob for t in after.tasks} | {t.input_blob for t in after.tasks}
    stored = blob_keys(store)
    assert stored == referenced - {None}  # no result blob left behind half-recorded


def test_tasks_of_a_dead_dispatcher_are_requeued_at_start(store: Store, settings: Settings):
    settings = Settings(**{**settings.__dict__, "lease_seconds": 3600.0})
    job = submit_job(store, [make_png(i) for i in range(4)])
    store.register_dispatcher("dead", host=__import__("socket").gethostname(), pid=2 ** 22 + 7, pid_started=1.0,
                              engine="mpi", workers=2)
    assert len(store.claim("dead", 2, busy=False)) == 2
    with dispatching(store, settings):
        done = wait_for_job(store, job.id)
    assert done.counts()["done"] == 4 and [t.attempts for t in done.tasks[:2]] == [2, 2]


def test_the_tasks_of_a_node_whose_heartbeat_stops_run_again_before_their_lease_ends(store: Store, settings: Settings):
    # A node on another host died with two tasks leased for an hour: no pid can be checked there, so its
    # silence is what tells; this dispatcher requeues them after heartbeat_timeout of its own beating.
    settings = settings.with_overrides(lease_seconds=3600.0, heartbeat_timeout=1.0)
    job = submit_job(store, [make_png(i) for i in range(4)])
    store.register_dispatcher("elsewhere", host="another-host", pid=1, pid_started=1.0, engine="mpi", workers=2)
    assert len(store.claim("elsewhere", 2, busy=False)) == 2
    began = time.monotonic()
    with dispatching(store, settings):
        done = wait_for_job(store, job.id)
    assert done.counts()["done"] == 4 and [t.attempts for t in done.tasks[:2]] == [2, 2]
    assert time.monotonic() - began < 30
    assert [n["id"] for n in store.live_dispatchers()] == []      # "elsewhere" stopped, the test's dispatcher too


def test_submit_and_status_from_the_command_line(store: Store, settings: Settings, tmp_path: Path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"in{i}.png")
        files[-1].write_bytes(make_png(i))
    runner = CliRunner(env={"PIXMILL_DATABASE_URL": settings.database_url,     # as a node is configured
                            "PIXMILL_BLOB_URL": settings.blob_url})
    data_dir = str(settings.data_dir)
    with dispatching(store, settings):
        result = runner.invoke(submit, [*map(str, files), "-p", "grayscale | blur(ksize=5)", "--data-dir", data_dir,
                                        "--wait", "--timeout", "60", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    job_id = result.output.splitlines()[0]
    assert "done (3 done)" in result.output
    outputs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outputs] == ["0000-in0.png", "0001-in1.png", "0002-in2.png"]
    assert outputs[1].read_bytes() == process(make_png(1), PIPELINE).data
    shown = runner.invoke(status, [job_id, "--data-dir", data_dir, "--database-url", settings.database_url,
                                   "--blob-url", settings.blob_url, "--json"])
    assert shown.exit_code == 0 and '"state": "done"' in shown.output
    missing = runner.invoke(status, ["nope", "--data-dir", data_dir])
    assert missing.exit_code == 1 and "no such job" in missing.output


def test_submit_refuses_a_bad_file_and_queues_nothing(store: Store, settings: Settings, tmp_path: Path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(make_png(0))
    bad.write_bytes(b"<svg></svg>")
    result = CliRunner().invoke(submit, [str(good), str(bad), "-p", "grayscale", "--data-dir", str(settings.data_dir),
                                         "--database-url", settings.database_url, "--blob-url", settings.blob_url])
    assert result.exit_code == 2 and "bad.png" in result.output and "nothing was queued" in result.output
    assert store.list_jobs() == [] and store.blob_usage() == 0
    bad_pipeline = CliRunner().invoke(submit, [str(good), "-p", "grayscale | nope",
                                               "--data-dir", str(settings.data_dir)])
    assert bad_pipeline.exit_code == 2 and "step 2" in bad_pipeline.output
