"""The supervisor on the local engine: it runs a dispatcher child, restarts it when it dies, and stops it cleanly.

Every dispatcher it starts runs in a session of its own; each test kills whatever is left of those
sessions at the end. The same supervisor on MPI is tested in tests/system/test_jobs_mpi.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pixmill.config import Settings, load_settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import JobView, NewTask, Store, TaskState
from pixmill.worker.supervisor import Supervisor, settings_environment
from support.jobs_tasks import HANG, make_png

pytestmark = pytest.mark.both_backends   # each test on SQLite and on PostgreSQL

TESTS = Path(__file__).parents[1]
PIPELINE = parse_pipeline("grayscale | blur(ksize=5)")
WAIT = 60.0


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    # Leases far longer than any test: tasks go back to the queue only because the supervisor puts them back.
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    engine="local", workers=1, lease_seconds=600.0)


class Watched:
    """A started Supervisor, and the process groups of every dispatcher it was seen to run."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.groups: set[int] = set()

    def pid(self) -> int | None:
        pid = self.supervisor.pid
        if pid is not None:
            self.groups.add(pid)
        return pid


@contextlib.contextmanager
def supervised(settings: Settings, task: str | None = None) -> Iterator[Watched]:
    """A started Supervisor (with tests/ importable in its children); stopped, and its sessions killed, at the end."""
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    supervisor = Supervisor(settings, task=task, env=env)
    watched = Watched(supervisor)
    supervisor.start()
    watched.pid()
    try:
        yield watched
    finally:
        supervisor.stop(timeout=10)
        for group in watched.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def submit_job(store: Store, images: list[bytes]) -> JobView:
    tasks = [NewTask(f"img{i}.png", PIPELINE, store.put_blob(data), "png") for i, data in enumerate(images)]
    return store.create_job(tasks, Output())


def counts(store: Store, job_id: str) -> dict[str, int]:
    return store.get_job(job_id).counts()


def ended(store: Store, job_id: str) -> bool:
    return store.get_job(job_id).state == "done"


def group_alive(pgid: int) -> list[psutil.Process]:
    """The processes of a process group that still run (zombies are dead)."""
    alive = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def assert_results_match(store: Store, job: JobView, images: list[bytes]) -> None:
    for task in job.tasks:
        assert task.state is TaskState.DONE, (task.n, task.state, task.error)
        assert store.read_blob(task.result_blob) == process(images[task.n], PIPELINE).data, task.n


def test_settings_environment_rebuilds_the_settings_without_the_tokens(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "d", engine="local", workers=3, port=1234, task_timeout=2.5,
                        lease_seconds=600.0, max_file_bytes=12345, api_tokens=("secret-one", "secret-two"),
                        webhook_secret="signing-key", webhook_allow=("127.0.0.1", "10.0.0.0/8", "hooks.internal"))
    env = settings_environment(settings)
    assert all(name.startswith("PIXMILL_") and isinstance(value, str) for name, value in env.items())
    assert not any("secret" in value for value in env.values()) and "PIXMILL_API_TOKENS" not in env
    assert env["PIXMILL_WEBHOOK_ALLOW"] == "127.0.0.1,10.0.0.0/8,hooks.internal"   # the dispatcher sends webhooks
    assert load_settings(env) == dataclasses.replace(settings, api_tokens=())


def test_a_relative_data_dir_reaches_the_child_as_an_absolute_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = settings_environment(Settings(data_dir=Path("here")))
    assert Path(env["PIXMILL_DATA_DIR"]) == tmp_path.resolve() / "here"


@pytest.mark.slow
def test_a_job_runs_under_the_supervisor_and_a_clean_stop_ends_every_process(store: Store, settings: Settings):
    images = [make_png(i) for i in range(4)]
    job = submit_job(store, images)
    with supervised(settings) as watched:
        wait_until(lambda: ended(store, job.id), "the job")
        assert store.workers_alive() == 1
        child = watched.supervisor.child
        group = watched.pid()
        started = time.monotonic()
        watched.supervisor.stop(timeout=30)
        assert time.monotonic() - started < 15
        assert child.returncode == 0                                  # SIGTERM is a clean stop
        assert watched.supervisor.pid is None and watched.supervisor.restarts == 0
        wait_until(lambda: not group_alive(group), "the pool to be gone", timeout=10)
    assert store.workers_alive() == 0                                 # the dispatcher recorded its stop
    assert_results_match(store, store.get_job(job.id), images)


@pytest.mark.slow
def test_a_killed_dispatcher_is_replaced_and_its_tasks_run_again(store: Store, settings: Settings):
    images = [make_png(i) for i in range(16)]
    job = submit_job(store, images)
    with supervised(settings, task="support.jobs_tasks:slow_process") as watched:
        wait_until(lambda: counts(store, job.id)["done"] >= 2, "two tasks")
        old = watched.pid()
        pool = psutil.Process(old).children(recursive=True)
        assert pool, "the dispatcher has no pool processes"
        running = counts(store, job.id)["running"]
        os.kill(old, signal.SIGKILL)
        new = wait_until(lambda: (pid := watched.pid()) not in (None, old) and pid, "a new dispatcher", timeout=20)
        assert watched.supervisor.restarts == 1 and new != old
        wait_until(lambda: not group_alive(old), "the old pool to be killed", timeout=10)
        assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in pool)
        wait_until(lambda: ended(store, job.id), "the job after the restart")
    after = store.get_job(job.id)
    assert_results_match(store, after, images)
    assert running >= 1 and sum(t.attempts == 2 for t in after.tasks) >= 1       # the killed tasks ran again
    assert all(t.attempts in (1, 2) for t in after.tasks)


@pytest.mark.slow
def test_stop_kills_a_dispatcher_that_does_not_stop_in_time_and_requeues_its_task(store: Store, settings: Settings):
    job = submit_job(store, [make_png(0, marker=HANG)])
    with supervised(settings, task="support.jobs_tasks:misbehaving_process") as watched:
        wait_until(lambda: counts(store, job.id)["running"] == 1, "the task to start")
        child, group = watched.supervisor.child, watched.pid()
        started = time.monotonic()
        watched.supervisor.stop(timeout=1)      # the dispatcher would wait for the hung task longer than that
        took = time.monotonic() - started
        assert took < 8, f"stop() took {took:.1f} s"
        assert child.returncode == -signal.SIGKILL
        wait_until(lambda: not group_alive(group), "the hung worker to be killed", timeout=10)
    [task] = store.get_job(job.id).tasks
    assert task.state is TaskState.QUEUED and task.attempts == 1
    assert store.workers_alive() == 0


@pytest.mark.slow
def test_a_dispatcher_that_dies_at_start_is_restarted_ever_more_slowly_and_stop_is_prompt(settings: Settings):
    with supervised(settings, task="support.no_such_module:nothing") as watched:
        supervisor = watched.supervisor
        gaps: list[float] = []
        child, died = supervisor.child, None
        deadline = time.monotonic() + WAIT
        while len(gaps) < 3:                  # from each death to the next start
            assert time.monotonic() < deadline, f"only {len(gaps)} restarts: {gaps}"
            now = time.monotonic()
            if died is None and child.poll() is not None:
                died = now
            elif supervisor.child is not child:
                gaps.append(now - (died if died is not None else now))
                child, died = supervisor.child, None
                watched.pid()
            time.sleep(0.02)
        assert gaps[0] >= 0.3 and gaps[1] >= 1.5 * gaps[0] and gaps[2] >= 1.5 * gaps[1], gaps
        wait_until(lambda: child.poll() is not None, "the last child to die")
        started = time.monotonic()
        supervisor.stop(timeout=10)          # while it waits to restart: no need to wait for the delay
        assert time.monotonic() - started < 2.5
        restarts = supervisor.restarts
        time.sleep(1)
        assert supervisor.restarts == restarts and supervisor.pid is None
