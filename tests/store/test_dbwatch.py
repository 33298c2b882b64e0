"""The commit signal: the store touches `<db>-changed` after each write, and DbWatch wakes on it (inotify).

Also Store.unfinished, the cheap count that long polls look at each time they wake.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import InvalidRequest, NotFound
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result
from pixmill.store import NewTask, Store
from pixmill.store.dbwatch import CommitSignal, DbWatch, signal_path

GRAY = parse_pipeline("grayscale")

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DbWatch uses inotify (Linux)")]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def watch(store: Store):
    """A watcher of the store's database, opened after the store (so its folder exists)."""
    watch = DbWatch(store.settings.db_path)
    assert watch.active, "inotify is not available"
    yield watch
    watch.close()


def make_job(store: Store, count: int = 3, *, owner: str | None = None):
    tasks = [NewTask(f"img{i}.png", GRAY, store.put_blob(bytes([i]) * 10), "png") for i in range(count)]
    return store.create_job(tasks, Output("png"), owner=owner)


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """Run action in a thread after a delay; join the thread returned."""
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def signalled_within(watch: DbWatch, seconds: float) -> float | None:
    """Call wait() until it reports a commit, as every caller does; the seconds it took, or None."""
    started = time.monotonic()
    deadline = started + seconds
    while (left := deadline - time.monotonic()) > 0:
        if watch.wait(left):
            return time.monotonic() - started
    return None


def raw_sqlite_write(db_path: Path) -> None:
    """A commit by plain sqlite3, which writes the WAL but sends no signal."""
    db = sqlite3.connect(db_path)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
        db.execute("INSERT INTO scratch VALUES (1)")
        db.commit()
    finally:
        db.close()


# ---- the signal file

def test_the_signal_file_sits_beside_the_database(settings: Settings, store: Store):
    assert signal_path(settings.db_path) == settings.db_path.with_name("pixmill.db-changed")
    store.put_blob(b"x")
    path = signal_path(settings.db_path)
    assert path.read_bytes() == b"\0"                   # one byte, rewritten in place after each commit
    make_job(store)
    assert path.stat().st_size == 1


def test_the_first_signal_creates_the_file_and_wakes_a_watcher(tmp_path: Path):
    db_path = tmp_path / "fresh.db"
    watch = DbWatch(db_path)
    signal = CommitSignal(db_path)
    try:
        assert not signal_path(db_path).exists()
        signal.send()
        assert signal_path(db_path).exists()
        assert watch.wait(1.0) is True
        assert watch.changed() is False                 # drained
        signal.send()
        assert watch.changed() is True
    finally:
        signal.close()
        signal.close()
        watch.close()


def test_a_signal_for_another_database_in_the_folder_does_not_count(tmp_path: Path):
    watch = DbWatch(tmp_path / "mine.db")
    signal = CommitSignal(tmp_path / "other.db")
    try:
        signal.send()
        (tmp_path / "mine.db-changed.tmp").write_bytes(b"\0")     # a name that only starts like the signal
        (tmp_path / "xmine.db-changed").write_bytes(b"\0")
        assert watch.changed() is False
    finally:
        signal.close()
        watch.close()


# ---- waking

@pytest.mark.parametrize("write", ["put_blob", "create_job", "cancel_job", "delete_job", "claim"])
def test_wait_reports_a_store_write_from_another_thread_within_a_second(store: Store, watch: DbWatch, write):
    job = make_job(store, 2)
    watch.changed()                                      # forget the commits of the setup
    actions = {"put_blob": lambda: store.put_blob(b"new"), "create_job": lambda: make_job(store, 1),
               "cancel_job": lambda: store.cancel_job(job.id), "delete_job": lambda: store.delete_job(job.id),
               "claim": lambda: store.claim("d1", 1, busy=False)}
    writer = later(0.2, actions[write])
    seconds = signalled_within(watch, 5.0)
    writer.join(5)
    assert seconds is not None, f"no signal after {write}"
    assert 0.15 <= seconds < 1.2, seconds


def test_a_woken_watcher_sees_the_commit(store: Store, watch: DbWatch):
    """The signal comes after the commit: whoever wakes on it finds the new rows (the reason for the file)."""
    found: list[int] = []
    for _ in range(20):
        task = NewTask("a.png", GRAY, store.put_blob(b"x"), "png")
        watch.changed()                                  # only the job's own commit is waited for
        writer = later(0.01, lambda: store.create_job([task], Output()))  # noqa: B023 (run in this iteration)
        assert signalled_within(watch, 5.0) is not None
        found.append(len(store.list_jobs(limit=100)))
        writer.join(5)
    assert found == list(range(1, 21))


WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from pixmill.config import Settings
    from pixmill.imaging.pipeline import parse_pipeline
    from pixmill.imaging.process import Output
    from pixmill.store import NewTask, Store

    with Store.open(Settings(data_dir=Path(sys.argv[1]))) as store:
        time.sleep(0.3)                                   # let the parent settle into its wait
        written = time.time()
        blob = store.put_blob(b"from another process")
        if sys.argv[2] == "job":
            store.create_job([NewTask("a.png", parse_pipeline("grayscale"), blob, "png")], Output())
        print(json.dumps({"written": written}), flush=True)
""")


@pytest.mark.parametrize("what", ["blob", "job"])
def test_wait_reports_a_store_write_from_another_process_within_a_second(store: Store, watch: DbWatch, what):
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(store.settings.data_dir), what],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seconds = signalled_within(watch, 20.0)
        woken = time.time()
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert child.returncode == 0, err
    assert seconds is not None, "no signal from the other process"
    written = json.loads(out)["written"]
    assert -0.05 <= woken - written < 1.0, woken - written
    if what == "job":
        assert len(store.list_jobs()) == 1                # and its commit is visible here
    else:
        assert store.blob_usage() == len(b"from another process")


def test_wait_times_out_with_false_when_nothing_is_written(store: Store, watch: DbWatch):
    watch.changed()
    started = time.monotonic()
    assert watch.wait(0.3) is False
    assert 0.25 <= time.monotonic() - started < 1.0


def test_writes_to_other_files_in_the_folder_do_not_count(store: Store, watch: DbWatch):
    folder = store.settings.data_dir
    watch.changed()
    (folder / "notes.txt").write_bytes(b"hello")
    raw_sqlite_write(store.settings.db_path)            # the WAL (and the database) change, with no signal
    assert watch.changed() is False
    writers = [later(0.05, lambda: (folder / "notes.txt").write_bytes(b"again")),
               later(0.1, lambda: raw_sqlite_write(store.settings.db_path))]
    assert signalled_within(watch, 0.5) is None
    for writer in writers:
        writer.join(5)


def test_wait_keeps_waiting_through_writes_to_other_files(store: Store, watch: DbWatch):
    """wait(seconds) blocks "until a commit is signalled or for seconds": another file is not a commit.

    Fails today: select() wakes on any event in the folder and wait() returns False at once. So a
    store commit, which writes the WAL just before it signals, usually ends a wait with False before
    the commit is visible (the callers loop, so they only look once more than they need to)."""
    watch.changed()
    writer = later(0.1, lambda: raw_sqlite_write(store.settings.db_path))
    started = time.monotonic()
    signalled = watch.wait(1.0)
    seconds = time.monotonic() - started
    writer.join(5)
    assert signalled is False
    assert seconds >= 0.9, f"wait(1.0) returned after {seconds:.2f} s, woken by a write to the WAL"


def test_changed_never_blocks(store: Store, watch: DbWatch):
    watch.changed()
    started = time.monotonic()
    assert [watch.changed() for _ in range(100)] == [False] * 100
    assert time.monotonic() - started < 0.1
    store.put_blob(b"x")                                 # the signal is written before put_blob returns
    assert watch.changed() is True
    assert watch.changed() is False


def test_reads_and_refused_writes_send_no_signal(store: Store, watch: DbWatch):
    job = make_job(store)
    watch.changed()
    store.get_job(job.id)
    store.list_jobs()
    store.unfinished(job.id)
    store.stats()
    assert watch.changed() is False
    with pytest.raises(InvalidRequest):
        store.create_job([NewTask("a.png", GRAY, "no-such-blob", "png")], Output())     # rolled back
    assert watch.changed() is False


def test_many_watchers_all_wake(store: Store):
    watches = [DbWatch(store.settings.db_path) for _ in range(5)]
    try:
        store.put_blob(b"x")
        assert [w.changed() for w in watches] == [True] * 5
    finally:
        for w in watches:
            w.close()


def test_close_twice_and_use_after_close(store: Store):
    watch = DbWatch(store.settings.db_path)
    watch.close()
    watch.close()
    assert not watch.active
    store.put_blob(b"x")
    assert watch.changed() is False
    started = time.monotonic()
    assert watch.wait(0.2) is False                      # only sleeps
    assert 0.15 <= time.monotonic() - started < 1.0


def test_closing_frees_the_inotify_descriptor(store: Store):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        DbWatch(store.settings.db_path).close()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_watch_on_a_missing_folder_only_sleeps(tmp_path: Path):
    watch = DbWatch(tmp_path / "missing" / "pixmill.db")
    try:
        assert not watch.active and watch.changed() is False
        started = time.monotonic()
        assert watch.wait(0.1) is False
        assert time.monotonic() - started >= 0.08
    finally:
        watch.close()


def test_the_store_signals_again_after_it_is_closed_and_reopened(settings: Settings):
    Store.open(settings).close()
    watch = DbWatch(settings.db_path)
    try:
        store = Store.open(settings)
        store.put_blob(b"x")
        store.close()
        assert watch.changed() is True
        store.put_blob(b"y")                             # a closed store reconnects and signals on its own
        assert watch.changed() is True
        store.close()
    finally:
        watch.close()


# ---- Store.unfinished

def test_unfinished_counts_queued_and_running_tasks(store: Store):
    job = make_job(store, 3)
    assert store.unfinished(job.id) == 3
    assert [store.unfinished(job.id, n=n) for n in range(3)] == [1, 1, 1]
    first, second = store.claim("d1", 2, busy=False)
    assert (first.n, second.n) == (0, 1)
    assert store.unfinished(job.id) == 3                 # running still counts
    assert store.complete("d1", first.id, Result(b"png", "png", 1, 1))
    assert store.unfinished(job.id) == 2 and store.unfinished(job.id, n=0) == 0
    assert store.fail("d1", second.id, "it broke")
    assert store.unfinished(job.id) == 1 and store.unfinished(job.id, n=1) == 0
    assert store.unfinished(job.id, n=2) == 1


def test_unfinished_is_zero_for_a_cancelled_job(store: Store):
    job = make_job(store, 2)
    store.claim("d1", 1, busy=False)
    store.cancel_job(job.id)
    assert store.unfinished(job.id) == 0
    assert store.unfinished(job.id, n=0) == 0 and store.unfinished(job.id, n=1) == 0


def test_unfinished_refuses_what_get_job_refuses(store: Store):
    job = make_job(store, 2, owner="alice")
    assert store.unfinished(job.id, owner="alice") == 2
    for kwargs in ({"owner": "bob"}, {"owner": "bob", "n": 0}):
        with pytest.raises(NotFound):
            store.unfinished(job.id, **kwargs)
    with pytest.raises(NotFound):
        store.unfinished("no-such-job")
    for n in (2, 5, -1):
        with pytest.raises(NotFound, match="no image number"):
            store.unfinished(job.id, n=n)
    store.delete_job(job.id)
    with pytest.raises(NotFound):
        store.unfinished(job.id)
