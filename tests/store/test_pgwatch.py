"""The commit signal on PostgreSQL: a commit NOTIFYs, PgWatch LISTENs; reads and rolled-back writes are silent."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import StorageFull
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output
from pixmill.store import NewTask, Store
from pixmill.store.postgres import PgWatch

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
def store(tmp_path: Path, postgres_url: str):
    with Store.open(Settings(data_dir=tmp_path / "data", database_url=postgres_url, quota_bytes=1000)) as store:
        yield store


@pytest.fixture
def watch(store: Store):
    watch = store.database.watch()
    assert isinstance(watch, PgWatch) and watch.active
    yield watch
    watch.close()


def woken_after(watch: PgWatch, action, timeout: float = 10.0) -> float | None:
    """Seconds from action() (in another thread and connection) until wait() ends; None if it never does."""
    started: list[float] = []

    def act() -> None:
        time.sleep(0.2)
        started.append(time.monotonic())
        action()
    thread = threading.Thread(target=act)
    thread.start()
    try:
        if not watch.wait(timeout):
            return None
        woke = time.monotonic()
    finally:
        thread.join(10)
    return woke - started[0]


def test_a_commit_from_another_connection_wakes_the_watch_at_once(store: Store, watch: PgWatch):
    delay = woken_after(watch, lambda: store.put_blob(b"abc"))
    assert delay is not None and delay < 1.0, delay


def test_nothing_committed_is_a_timeout_and_changed_never_blocks(store: Store, watch: PgWatch):
    store.database.connection().execute("SELECT 1")            # a read sends nothing
    with pytest.raises(StorageFull):
        store.put_blob(b"x" * 2000)                            # refused: rolled back, nothing sent
    started = time.monotonic()
    assert watch.wait(0.5) is False and 0.45 <= time.monotonic() - started < 2.0
    assert watch.changed() is False
    store.create_job([NewTask("a.png", parse_pipeline("grayscale"), store.put_blob(b"abc"), "png")], Output())
    time.sleep(0.2)
    assert watch.changed() is True and watch.changed() is False   # several commits, one look


def test_many_watchers_all_wake(store: Store):
    watches = [store.database.watch() for _ in range(4)]
    try:
        timer = threading.Timer(0.2, lambda: store.put_blob(b"abc"))
        timer.start()
        assert all(w.wait(10.0) for w in watches)
        timer.join(10)
    finally:
        for w in watches:
            w.close()
