"""Durable jobs on real MPI: `pixmill worker` (a supervisor, its dispatcher, spawned MPI workers) against a store.

Every process is started in a session of its own and killed, with all its descendants, at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pixmill.config import Settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import JobView, NewTask, Store, TaskState
from pixmill.worker.backoff import FAST_SECONDS
from support.idle import measure
from support.jobs_tasks import CRASH, HANG, make_png

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

PIPELINE = parse_pipeline("grayscale | blur(ksize=5)")
TESTS = Path(__file__).parents[1]
WAIT = 120.0


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url, engine="mpi",
                    workers=3, lease_seconds=600.0)


def environment(settings: Settings) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # mpiexec of the mpich wheel
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "PIXMILL_DATA_DIR": str(settings.data_dir), "PIXMILL_ENGINE": settings.engine,
            "PIXMILL_WORKERS": str(settings.workers), "PIXMILL_LEASE_SECONDS": str(settings.lease_seconds),
            "PIXMILL_TASK_TIMEOUT": str(settings.task_timeout), "PIXMILL_DATABASE_URL": settings.database_url,
            "PIXMILL_BLOB_URL": settings.blob_url}


@contextlib.contextmanager
def started(cmd: list[str], settings: Settings) -> Iterator[subprocess.Popen]:
    """Run cmd in its own session; at the end SIGTERM it, then kill it and everything it started."""
    proc = subprocess.Popen(cmd, env=environment(settings), start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        yield proc
    finally:
        kill_tree(proc, seen)


def kill_tree(proc: subprocess.Popen, seen: dict[int, psutil.Process] | None = None) -> None:
    """Stop proc (SIGTERM, then SIGKILL) and kill every process it started."""
    family = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    for p in family + [psutil.Process(proc.pid)] if proc.poll() is None else family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def find(pid: int, marker: str) -> list[psutil.Process]:
    """Descendants of pid whose command line contains marker."""
    found = []
    for p in descendants(pid):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(p.cmdline()):
                found.append(p)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def submit_job(store: Store, images: list[bytes]) -> JobView:
    tasks = [NewTask(f"img{i}.png", PIPELINE, store.put_blob(data), "png") for i, data in enumerate(images)]
    return store.create_job(tasks, Output())


def done_count(store: Store, job_id: str) -> int:
    return store.get_job(job_id).counts()["done"]


def ended(store: Store, job_id: str) -> bool:
    return store.get_job(job_id).state == "done"


def assert_results_match(store: Store, job: JobView, images: list[bytes], skip: set[int] = frozenset()) -> None:
    """Every task but those in skip is done once, with exactly the bytes process() gives in-process."""
    results = [t.result_blob for t in job.tasks if t.n not in skip]
    assert len(set(results)) == len(results) == len(images) - len(skip)
    for task in job.tasks:
        if task.n not in skip:
            assert task.state is TaskState.DONE
            assert store.read_blob(task.result_blob) == process(images[task.n], PIPELINE).data, task.n
    rows = store.database.connection().execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
    assert rows == len(images) + len(results), "a result was recorded twice"


WORKER = [sys.executable, "-m", "pixmill", "worker"]


def test_sixty_images_on_three_mpi_workers_equal_in_process_results(store: Store, settings: Settings):
    images = [make_png(i, size=(64 + i, 96)) for i in range(60)]
    job = submit_job(store, images)
    with started(WORKER, settings) as worker:
        wait_until(lambda: ended(store, job.id), what="the job")
        assert len(find(worker.pid, "mpi4py.futures.server")) == 3
        assert store.workers_alive() == 3
    assert_results_match(store, store.get_job(job.id), images)


def test_killing_one_mpi_worker_mid_job_loses_and_duplicates_nothing(store: Store, settings: Settings):
    images = [make_png(i) for i in range(60)]
    job = submit_job(store, images)
    with started([sys.executable, "-m", "support.jobs_tasks", "slow_process"], settings) as worker:
        wait_until(lambda: done_count(store, job.id) >= 10, what="10 tasks")
        victims = find(worker.pid, "mpi4py.futures.server")
        assert len(victims) == 3
        victims[1].kill()
        wait_until(lambda: ended(store, job.id), what="the job")
        assert all(not v.is_running() or v.status() == psutil.STATUS_ZOMBIE for v in victims)
    assert_results_match(store, store.get_job(job.id), images)


@pytest.mark.both_backends
def test_killing_the_dispatcher_mid_job_then_starting_again_completes_it(store: Store, settings: Settings):
    images = [make_png(i) for i in range(60)]
    job = submit_job(store, images)
    cmd = [sys.executable, "-m", "support.jobs_tasks", "slow_process"]
    with started(cmd, settings) as worker:
        wait_until(lambda: done_count(store, job.id) >= 10, what="10 tasks")
        [dispatcher] = find(worker.pid, "pixmill.worker.dispatcher")
        dispatcher.kill()  # the supervisor requeues its tasks and starts another
        wait_until(lambda: done_count(store, job.id) >= 25, what="25 tasks")
        for p in [psutil.Process(worker.pid)] + descendants(worker.pid):
            p.kill()  # now the whole `pixmill worker` dies at once: nobody requeues its tasks
        worker.wait(10)
    stranded = store.get_job(job.id).counts()["running"]
    with started(cmd, settings):  # leases last 600 s: a new worker must requeue them at start
        wait_until(lambda: ended(store, job.id), timeout=60, what="the job after a restart")
    after = store.get_job(job.id)
    assert_results_match(store, after, images)
    assert stranded > 0 and sum(t.attempts > 1 for t in after.tasks) >= stranded


def test_a_task_crashing_its_mpi_worker_fails_after_three_attempts_and_a_runaway_times_out(store: Store,
                                                                                            settings: Settings):
    settings = Settings(**{**settings.__dict__, "task_timeout": 4.0})
    images = [make_png(i, marker={5: CRASH, 14: HANG}.get(i)) for i in range(20)]
    job = submit_job(store, images)
    with started([sys.executable, "-m", "support.jobs_tasks", "misbehaving_process"], settings):
        wait_until(lambda: ended(store, job.id), what="the job")
    after = store.get_job(job.id)
    crashed, runaway = after.tasks[5], after.tasks[14]
    assert crashed.state is TaskState.FAILED and crashed.attempts == 3
    assert crashed.error == "worker crashed while processing this image (3 attempts)"
    assert runaway.state is TaskState.FAILED and "longer than 4 s" in runaway.error
    assert_results_match(store, after, images, skip={5, 14})


def test_an_idle_dispatcher_and_pool_neither_spin_nor_poll_faster_than_their_back_off(store: Store, settings: Settings):
    with started(WORKER, settings) as worker:
        wait_until(lambda: store.workers_alive() == 3 and len(find(worker.pid, "mpi4py.futures.server")) == 3,
                   what="the pool")
        time.sleep(FAST_SECONDS + settings.warm_seconds + 1)  # past the quick polling after the workers' start
        uses = measure([psutil.Process(worker.pid)] + descendants(worker.pid), 10)
    print("\n".join(map(str, uses)))
    print(f"idle: {sum(u.cpu for u in uses):.1%} of one core for {len(uses)} processes (target < 5%: make bench)")
    assert sum("mpi4py.futures.server" in use.command for use in uses) == 3
    for use in uses:
        assert use.wakeups < 150, f"{use}: polls faster than the 20 ms back-off"
        assert use.cpu < 0.05, f"{use}: more than 5% of a core while idle"
    assert sum(u.cpu for u in uses) < 0.15


@pytest.mark.both_backends    # on PostgreSQL + S3, the ranks read and write the bucket themselves
def test_a_static_pool_under_mpiexec_processes_jobs_and_stops_cleanly(store: Store, settings: Settings):
    images = [make_png(i) for i in range(12)]
    job = submit_job(store, images)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    # As the README says: MPICH's intra-node shared-memory path is ~10x slower for image-sized
    # messages under mpi4py.futures' polling than its network module, so NOLOCAL.
    cmd = [mpiexec, "-genv", "MPIR_CVAR_NOLOCAL", "1", "-n", "3", sys.executable, "-m", "mpi4py.futures",
           "-m", "pixmill", "worker"]
    with started(cmd, settings) as pool:
        wait_until(lambda: ended(store, job.id), what="the job")
        assert store.workers_alive() == 2  # rank 0 dispatches to ranks 1 and 2
        pool.send_signal(signal.SIGTERM)  # mpiexec passes it to every rank; only rank 0 acts on it
        assert pool.wait(30) == 0
    assert_results_match(store, store.get_job(job.id), images)
