"""The store: schema and migrations, blobs, atomic jobs, task state changes, retention, quota, concurrency."""

from __future__ import annotations

import io
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import ImageTooLarge, InvalidRequest, NotFound, PixmillError, StorageFull
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result
from pixmill.store import JobView, NewTask, Store, TaskState, pgschema, schema
from pixmill.store.taskqueue import crash_message
from support.backends import blob_keys, partial_writes, postgres_only, sqlite_only

pytestmark = pytest.mark.both_backends   # each test on SQLite and on PostgreSQL

GRAY = parse_pipeline("grayscale")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    quota_bytes=10_000, lease_seconds=30, max_attempts=3)


def make_job(store: Store, count: int = 3, *, owner: str | None = None, size: int = 10) -> JobView:
    tasks = [NewTask(f"img{i}.png", GRAY, store.put_blob(bytes([i]) * size), "png") for i in range(count)]
    return store.create_job(tasks, Output("png", 80), owner=owner)


def blob_files(store: Store) -> dict[str, bytes]:
    """Every stored blob's bytes by key, in the folder or the bucket."""
    return {key: store.read_blob(key) for key in sorted(blob_keys(store))}


def task_row(store: Store, job_id: str, n: int) -> sqlite3.Row:
    return store.database.connection().execute("SELECT * FROM tasks WHERE job_id = ? AND n = ?", (job_id, n)).fetchone()


@sqlite_only
def test_open_creates_a_wal_database_at_the_current_schema(store: Store, settings: Settings):
    db = sqlite3.connect(settings.db_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert schema.schema_version(db) == schema.SCHEMA_VERSION
    assert int(store.database.connection().execute("PRAGMA busy_timeout").fetchone()[0]) >= 10_000
    assert settings.blob_dir.is_dir()
    Store.open(settings).close()  # opening again migrates nothing and keeps the data


@sqlite_only
def test_migrations_run_forward_and_keep_the_data(settings: Settings, monkeypatch):
    with Store.open(settings) as store:
        job = make_job(store)
    extra = "ALTER TABLE jobs ADD COLUMN label TEXT;\nUPDATE jobs SET label = 'old';"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + (extra,))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    with Store.open(settings) as store:
        assert store.get_job(job.id).counts()["queued"] == 3
        assert store.database.connection().execute("SELECT label FROM jobs").fetchone()[0] == "old"
        assert schema.schema_version(store.database.connection()) == schema.SCHEMA_VERSION


@sqlite_only
def test_a_database_from_a_newer_pixmill_is_refused(settings: Settings):
    Store.open(settings).close()
    db = sqlite3.connect(settings.db_path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(PixmillError, match="newer"):
        Store.open(settings)


@postgres_only
def test_postgres_is_migrated_once_by_nodes_that_open_it_together(settings: Settings):
    opened: list[BaseException | None] = []

    def open_close() -> None:
        try:
            Store.open(settings).close()
            opened.append(None)
        except BaseException as exc:
            opened.append(exc)
    threads = [threading.Thread(target=open_close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert opened == [None] * 4
    with Store.open(settings) as store:
        db = store.database.connection()
        assert [tuple(r) for r in db.execute("SELECT version FROM schema_version")] == [(pgschema.PG_SCHEMA_VERSION,)]
        assert not settings.db_path.exists()        # nothing of the job store in the data dir
        job = make_job(store)
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(PixmillError, match="PostgreSQL database is at schema version 99, newer"):
        Store.open(settings)
    store.database.connection().execute("UPDATE schema_version SET version = ?", (pgschema.PG_SCHEMA_VERSION,))
    with Store.open(settings) as store:
        assert store.get_job(job.id).counts()["queued"] == 3


def test_blobs_are_written_whole_from_bytes_or_streams(store: Store):
    key = store.put_blob(b"abc")
    other = store.put_blob(io.BytesIO(b"x" * 5000))
    assert store.read_blob(key) == b"abc" and store.read_blob(other) == b"x" * 5000
    assert store.blob_usage() == 5003
    assert not partial_writes(store)
    with pytest.raises(NotFound):
        store.read_blob("../../etc/passwd")


def test_an_oversized_blob_leaves_nothing_behind(store: Store):
    with pytest.raises(ImageTooLarge, match="100 B limit"):
        store.put_blob(io.BytesIO(b"x" * 5000), max_bytes=100)
    with pytest.raises(ImageTooLarge):
        store.put_blob(b"x" * 101, max_bytes=100)
    assert blob_files(store) == {} and store.blob_usage() == 0 and not partial_writes(store)


def test_a_full_quota_refuses_new_blobs_and_harms_nothing_stored(store: Store):
    job = make_job(store, 2, size=4000)
    before = blob_files(store)
    with pytest.raises(StorageFull, match="quota is full") as caught:
        store.put_blob(io.BytesIO(b"y" * 4000))
    assert caught.value.status == 507
    assert blob_files(store) == before
    assert store.blob_usage() == 8000 and not partial_writes(store)
    assert store.get_job(job.id).counts()["queued"] == 2
    result = store.put_blob(b"r" * 4000, enforce_quota=False)  # results of accepted jobs still land
    store.delete_job(job.id)
    store.delete_blobs([result])
    assert store.put_blob(b"y" * 4000)  # room again once jobs are deleted


def test_a_job_appears_with_all_its_tasks(store: Store):
    job = make_job(store, 3, owner="alice")
    assert len(job.id) >= 22 and job.owner == "alice" and job.state == "queued"
    assert [t.n for t in job.tasks] == [0, 1, 2] and job.tasks[1].name == "img1.png"
    assert job.output == Output("png", 80) and job.tasks[0].pipeline == "grayscale"
    assert job.counts() == {"queued": 3, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    assert store.get_job(job.id, owner="alice") == job
    with pytest.raises(NotFound):
        store.get_job(job.id, owner="mallory")
    with pytest.raises(NotFound):
        store.get_job("nope")


def test_a_job_that_fails_midway_leaves_no_trace(store: Store):
    class Exploding:
        def text(self) -> str:
            raise RuntimeError("boom")

    keys = [store.put_blob(b"a"), store.put_blob(b"b")]
    with pytest.raises(RuntimeError):
        store.create_job([NewTask("a", GRAY, keys[0]), NewTask("b", Exploding(), keys[1])], Output())
    with pytest.raises(InvalidRequest):
        store.create_job([NewTask("a", GRAY, keys[0]), NewTask("b", GRAY, "0" * 32)], Output())
    db = store.database.connection()
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0


def test_a_task_goes_from_queued_to_running_to_done(store: Store):
    job = make_job(store, 2)
    store.register_dispatcher("d1", host="h", pid=1, pid_started=None, engine="mpi", workers=2)
    claims = store.claim("d1", 10, busy=False)
    assert [c.n for c in claims] == [0, 1] and claims[0].output == Output("png", 80)
    assert store.get_job(job.id).state == "running"
    assert store.renew("d1") == {claims[0].id, claims[1].id}
    assert store.complete("d1", claims[0].id, Result(b"result", "png", 4, 3, ("converted",)))
    assert store.fail("d1", claims[1].id, "step 1 grayscale: bad")
    assert not store.complete("d1", claims[0].id, Result(b"again", "png", 4, 3))  # recorded once only
    done = store.get_job(job.id)
    assert done.state == "done" and done.counts()["done"] == 1 and done.counts()["failed"] == 1
    first = done.tasks[0]
    assert (first.state, first.width, first.height, first.notes, first.attempts) == \
        (TaskState.DONE, 4, 3, ("converted",), 1)
    assert store.read_blob(first.result_blob) == b"result" and len(blob_files(store)) == 3
    assert first.started_at <= first.finished_at and done.tasks[1].error == "step 1 grayscale: bad"
    stats = store.stats()
    assert stats["tasks"]["done"] == 1 and stats["queue_depth"] == 0 and stats["workers"] == 2
    assert len(stats["durations"]) == 1


def test_cancelled_tasks_are_never_started_nor_recorded(store: Store):
    job = make_job(store, 3)
    [running] = store.claim("d1", 1, busy=False)
    cancelled = store.cancel_job(job.id)
    assert cancelled.state == "cancelled" and cancelled.counts()["cancelled"] == 3
    assert store.claim("d1", 10, busy=False) == []
    assert store.renew("d1") == set()
    assert not store.complete("d1", running.id, Result(b"late", "png", 1, 1))
    assert len(blob_files(store)) == 3 and not partial_writes(store)  # the late result left nothing


def test_a_crash_requeues_suspects_that_then_run_alone(store: Store):
    make_job(store, 4)
    claims = store.claim("d1", 3, busy=False)
    assert store.crashed("d1", [c.id for c in claims]) == 3
    assert store.claim("d1", 3, busy=True) == []  # a suspect waits: drain first
    for _ in range(3):
        [alone] = store.claim("d1", 3, busy=False)
        assert alone.suspect and store.claim("d1", 3, busy=True) == []
        store.complete("d1", alone.id, Result(b"ok", "png", 1, 1))
    [last] = store.claim("d1", 3, busy=False)
    assert not last.suspect and last.n == 3


def test_a_task_that_crashes_every_time_fails_after_max_attempts(store: Store):
    job = make_job(store, 1)
    for _ in range(3):
        [claim] = store.claim("d1", 1, busy=False)
        store.crashed("d1", [claim.id])
    task = store.get_job(job.id).tasks[0]
    assert task.state is TaskState.FAILED and task.attempts == 3
    assert task.error == crash_message(3) == "worker crashed while processing this image (3 attempts)"


def test_release_and_timeout_do_not_count_the_attempt_of_the_others(store: Store):
    job = make_job(store, 3)
    claims = store.claim("d1", 3, busy=False)
    store.timed_out("d1", claims[0].id, "processing took longer than 60 s", [c.id for c in claims])
    tasks = store.get_job(job.id).tasks
    assert tasks[0].state is TaskState.FAILED and "60 s" in tasks[0].error
    assert [(t.state, t.attempts) for t in tasks[1:]] == [(TaskState.QUEUED, 0)] * 2
    again = store.claim("d1", 3, busy=False)
    assert store.release("d1", [c.id for c in again]) == 2
    assert task_row(store, job.id, 1)["crashes"] == 0


def test_expired_leases_and_dead_dispatchers_are_requeued_counting_the_attempt(store: Store):
    job = make_job(store, 2)
    store.register_dispatcher("gone", host="h", pid=123, pid_started=1.0, engine="mpi", workers=1)
    store.register_dispatcher("alive", host="h", pid=456, pid_started=2.0, engine="mpi", workers=1)
    store.claim("gone", 1, busy=False)
    store.claim("alive", 1, busy=False)
    assert store.requeue_expired() == 0
    assert store.recover_dead("h", lambda pid, started: pid == 123) == 1
    tasks = store.get_job(job.id).tasks
    assert (tasks[0].state, task_row(store, job.id, 0)["crashes"]) == (TaskState.QUEUED, 1)
    assert tasks[1].state is TaskState.RUNNING
    assert store.requeue_expired(now=time.time() + 31) == 1
    assert store.get_job(job.id).counts()["queued"] == 2


def test_a_silent_dispatcher_on_any_host_is_requeued_by_another_and_left_out_of_the_live_ones(store: Store):
    job = make_job(store, 3)
    store.register_dispatcher("silent", host="node-a", pid=1, pid_started=1.0, engine="mpi", workers=4)
    store.register_dispatcher("beating", host="node-b", pid=2, pid_started=2.0, engine="mpi", workers=2)
    store.claim("silent", 2, busy=False)
    store.claim("beating", 1, busy=False)
    later = time.time() + 11
    assert store.requeue_silent("beating", silent_for=10) == 0                       # a fresh heartbeat
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: later)
        store.renew("beating")
        assert [n["id"] for n in store.live_dispatchers(within=5)] == ["beating"]
        assert store.requeue_silent("beating", silent_for=10) == 2
    tasks = store.get_job(job.id).tasks
    assert [t.state for t in tasks] == [TaskState.QUEUED, TaskState.QUEUED, TaskState.RUNNING]
    assert [task_row(store, job.id, n)["crashes"] for n in range(3)] == [1, 1, 0]   # the attempt counted
    # Marked stopped, so requeued once; and a dispatcher never counts itself silent.
    assert store.requeue_silent("beating", silent_for=10, now=later + 100) == 0
    assert [n["id"] for n in store.live_dispatchers()] == ["beating"]


def test_retention_deletes_old_jobs_with_their_blobs(store: Store, settings: Settings):
    old, new = make_job(store, 2), make_job(store, 1)
    store.database.connection().execute("UPDATE jobs SET created_at = created_at - ? WHERE id = ?",
                                        (settings.ttl_seconds + 1, old.id))
    orphan = store.put_blob(b"never used")
    stale = store.put_blob(b"stale upload")
    store.database.connection().execute("UPDATE blobs SET created_at = created_at - 7200 WHERE key = ?", (stale,))
    assert store.purge_expired() == 1
    with pytest.raises(NotFound):
        store.get_job(old.id)
    assert store.get_job(new.id).tasks[0].input_blob
    remaining = set(blob_files(store))
    assert remaining == {new.tasks[0].input_blob, orphan}
    assert store.blob_usage() == 10 + len(b"never used")


def test_delete_job_removes_rows_and_blobs(store: Store):
    job = make_job(store, 2, owner="alice")
    with pytest.raises(NotFound):
        store.delete_job(job.id, owner="bob")
    store.delete_job(job.id, owner="alice")
    assert blob_files(store) == {} and store.blob_usage() == 0
    with pytest.raises(NotFound):
        store.get_job(job.id)


def test_threads_share_a_store_and_claim_each_task_once(store: Store):
    for _ in range(4):
        make_job(store, 10)
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while batch := store.claim(name, 3, busy=False):
            with lock:
                claimed.extend(c.id for c in batch)
            make_job(store, 1) if len(claimed) < 3 else None

    threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(claimed) == len(set(claimed)) == store.stats()["tasks"]["running"]


def _claim_all(data_dir: str, database_url: str, blob_url: str, name: str, out) -> None:
    with Store.open(Settings(data_dir=Path(data_dir), database_url=database_url, blob_url=blob_url)) as store:
        ids = []
        while batch := store.claim(name, 2, busy=False):
            ids.extend(c.id for c in batch)
        out.put(ids)


def test_processes_share_a_store_and_claim_each_task_once(store: Store, settings: Settings):
    # Four dispatchers claim at once; tasks.claims counts the claims of each task, so 1 everywhere
    # proves that no task was handed out twice, not only that no id was returned twice.
    for _ in range(3):
        make_job(store, 20)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(settings.data_dir), settings.database_url, settings.blob_url,
                                                           f"p{i}", out))
             for i in range(4)]
    for p in procs:
        p.start()
    try:
        claimed = [i for _ in procs for i in out.get(timeout=60)]
    finally:
        for p in procs:
            p.join(timeout=10)
            p.kill()
    assert sorted(claimed) == list(range(1, 61))
    counts = store.database.connection().execute("SELECT claims, COUNT(*) FROM tasks GROUP BY claims").fetchall()
    assert [tuple(row) for row in counts] == [(1, 60)]


def test_a_relative_data_dir_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store.open(Settings(data_dir=Path("data"), inline_bytes=0))   # a file, not a row
    try:
        key = store.put_blob(b"abc")
        path = store.blob_path(key)
        assert path.is_absolute() and path.is_relative_to(tmp_path / "data")
        assert path.read_bytes() == b"abc"
    finally:
        store.close()


def test_job_ids_never_start_with_a_dash_so_a_shell_reads_them_as_arguments(monkeypatch):
    from pixmill.store import jobs

    ids = iter(["-AEnP0ZsaFTR0GH2_z5qAozX", "-x", "AEnP0ZsaFTR0GH2_z5qAozX"])
    monkeypatch.setattr(jobs.secrets, "token_urlsafe", lambda n: next(ids))
    assert jobs.new_job_id() == "AEnP0ZsaFTR0GH2_z5qAozX"


@postgres_only
def test_after_a_postgres_restart_the_next_call_of_each_kind_reconnects_and_succeeds(store: Store, postgres):
    job = make_job(store, 2)
    watch = store.database.watch()
    try:
        postgres.restart("immediate")
        assert store.unfinished(job.id) == 2                          # a statement outside a transaction
        postgres.restart("immediate")
        assert store.get_job(job.id).counts()["queued"] == 2          # a read transaction
        postgres.restart("immediate")
        assert len(store.claim("d1", 2, busy=False)) == 2             # a write transaction
        assert watch.wait(5.0)             # the lost LISTEN ends a wait at once: commits may have been missed
        watch.wait(0.5)                    # listening again, and now woken by a commit
        timer = threading.Timer(0.3, lambda: store.cancel_job(job.id))
        timer.start()
        assert watch.wait(10.0)
        timer.join(10)
    finally:
        watch.close()
