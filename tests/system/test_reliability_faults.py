"""Faults against a real `pixmill serve` on 127.0.0.1: kill -9 a worker, the dispatcher, the whole service.

For each seed (three on MPI workers, one on the local process pool), three 100-image jobs (64×64
PNGs) go in through the API. At a random point of the first a worker is SIGKILLed, of the second the
dispatcher, of the third the whole service (web process, dispatcher and workers at once); then the
service is started again on the same data dir. Every accepted job must complete, each result
byte-identical to process() run in-process (what a run without faults gives: the worker path is
byte-identical to it, see tests/system/test_web_server.py). Then retention runs, and the blob folder
must hold exactly the blobs the database knows, each referenced by a task: no orphan. Finally a
small quota: new jobs get 507, nothing is stored for them, and the database and the jobs already
accepted are unharmed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import requests

from pixmill.config import Settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store.facade import ORPHAN_GRACE, Store
from support.jobs_tasks import make_png
from support.servers import Server, _descendants, running_server, wait_for

PIPELINE = "grayscale | blur(ksize=5) | threshold(mode=otsu)"
IMAGES = 100
SEEDS = [1, 2, 3]


def images_for(seed: int) -> list[bytes]:
    return [make_png(seed * 1000 + i, size=(64, 64)) for i in range(IMAGES)]


def submit(server: Server, images: list[bytes], tag: str) -> str:
    files = [("files", (f"{tag}-{i:03d}.png", data)) for i, data in enumerate(images)]
    response = server.post("/api/v1/jobs", files=files, data={"pipeline": PIPELINE})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def done_count(settings: Settings, job_id: str) -> int:
    """The job's tasks done, read straight from its database (SQLite's file, or PostgreSQL)."""
    if settings.database_url:
        with psycopg.connect(settings.database_url) as conn:
            return conn.execute("SELECT COUNT(*) FROM tasks WHERE job_id = %s AND state = 'done'",
                                (job_id,)).fetchone()[0]
    with contextlib.closing(sqlite3.connect(settings.db_path, timeout=30)) as conn:
        return conn.execute("SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state = 'done'", (job_id,)).fetchone()[0]


def kill_at(settings: Settings, job_id: str, point: int, victims) -> int:
    """Wait until `point` tasks of the job are done, then SIGKILL what victims() returns; the count at the kill."""
    deadline = time.monotonic() + 120
    while (done := done_count(settings, job_id)) < point:
        assert time.monotonic() < deadline, f"job {job_id}: {done} of {point} tasks done after 120 s"
        time.sleep(0.005)
    targets = victims()
    assert targets, "nothing to kill"
    for proc in targets:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return done


def processes(server: Server, marker: str) -> list[psutil.Process]:
    found = []
    for pid in _descendants(server.proc.pid):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def whole_service(server: Server) -> list[psutil.Process]:
    """The web process and everything under it (the dispatcher runs in a session of its own)."""
    family = [psutil.Process(server.proc.pid)]
    for pid in _descendants(server.proc.pid):
        with contextlib.suppress(psutil.Error):
            family.append(psutil.Process(pid))
    return family


def wait_done(server: Server, job_id: str, timeout: float = 180) -> dict:
    def ended():
        job = server.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["state"] == "done" else None
    return wait_for(ended, timeout, f"job {job_id} to complete", interval=0.1)


def blob_files(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp"}


def stored_blobs(settings: Settings) -> set[str]:
    """Every blob: the files, and the small ones whose rows hold their bytes (PIXMILL_INLINE_BYTES)."""
    with Store.open(settings) as store:
        rows = {r[0] for r in store.database.connection().execute("SELECT key FROM blobs WHERE data IS NOT NULL")}
    return blob_files(settings.data_dir) | rows


def assert_no_orphans(settings: Settings) -> None:
    """Every blob file is in the blobs table and every row has its file (or holds the bytes itself, for a small
    blob); every blob is some task's."""
    with Store.open(settings) as store:
        db = store.database.connection()
        rows = {r[0] for r in db.execute("SELECT key FROM blobs WHERE data IS NULL")}
        every = {r[0] for r in db.execute("SELECT key FROM blobs")}
        used = {k for row in db.execute("SELECT input_blob, result_blob FROM tasks") for k in row if k}
        if not settings.database_url:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    files = blob_files(settings.data_dir)
    assert files == rows, (f"files without rows: {sorted(files - rows)[:5]}; "
                           f"rows without files: {sorted(rows - files)[:5]}")
    assert every == used, f"blobs no task refers to: {sorted(every - used)[:5]}"


WORKER_MARKER = {"mpi": "mpi4py.futures.server", "local": "multiprocessing.spawn"}


@pytest.mark.slow
@pytest.mark.parametrize("engine, seed, database, inline",
                         [pytest.param("mpi", s, "sqlite", 0, marks=pytest.mark.mpi) for s in SEEDS]
                         + [("local", 4, "sqlite", 0),
                            pytest.param("local", 5, "postgresql", 0, marks=pytest.mark.postgres)]
                         # the same with the tiny images kept in their rows (the default PIXMILL_INLINE_BYTES)
                         + [pytest.param("mpi", 6, "sqlite", 65536, marks=pytest.mark.mpi),
                            pytest.param("local", 7, "postgresql", 65536, marks=pytest.mark.postgres)])
def test_kill_worker_dispatcher_and_service_then_every_job_completes_identically(tmp_path, engine, seed, database,
                                                                                 inline, request):
    # On PostgreSQL the images stay in the blob folder, so that retention can be run an hour later
    # by ageing the files (S3 objects cannot be aged); tests/system/test_cluster.py kills nodes on S3.
    rng = random.Random(seed)
    images = images_for(seed)
    pipeline = parse_pipeline(PIPELINE)
    expected = [process(data, pipeline, Output()).data for data in images]
    folder = tmp_path / "serve"
    data_dir = folder / "data"
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else ""
    settings = Settings(data_dir=data_dir, database_url=url, inline_bytes=inline)
    env = {"PIXMILL_DATABASE_URL": url, "PIXMILL_INLINE_BYTES": str(inline)}
    jobs, points, kills = {}, {}, {}
    with running_server(folder, engine=engine, workers=2, env=env) as server:
        first_dispatcher = server.dispatcher_pids()
        for fault, victims in (("worker", lambda: processes(server, WORKER_MARKER[engine])[:1]),
                               ("dispatcher", lambda: processes(server, "pixmill.worker.dispatcher")),
                               ("service", lambda: whole_service(server))):
            if fault != "worker":     # the next fault waits for a live pool, so each lands mid-work
                wait_for(lambda: server.get("/healthz").status_code == 200, 120, "workers alive again")
            jobs[fault] = submit(server, images, fault)
            points[fault] = rng.randint(3, IMAGES - 15)
            kills[fault] = kill_at(settings, jobs[fault], points[fault], victims)
            if fault == "worker" and engine == "mpi":    # a local pool is rebuilt inside the dispatcher
                wait_for(lambda: server.dispatcher_pids() not in ([], first_dispatcher), 60,
                         "the supervisor to start a new dispatcher after MPI aborted the old one")
        wait_for(lambda: server.proc.poll() is not None, 10, "the service to die")
    print(f"{engine} seed {seed} on {database}: kill points {points}, tasks done at each kill {kills}")
    with running_server(folder, engine=engine, workers=2, env=env) as server:
        for fault, job_id in jobs.items():
            job = wait_done(server, job_id)
            assert job["counts"]["done"] == IMAGES, (fault, job["counts"])
            for task in job["tasks"]:
                result = requests.get(task["result_url"], timeout=30)
                assert result.status_code == 200 and result.content == expected[task["n"]], (fault, task)
        retried = sum(t["attempts"] > 1 for job_id in jobs.values()
                      for t in server.get(f"/api/v1/jobs/{job_id}").json()["tasks"])
        assert retried > 0, "no task was in flight at any kill"
    with Store.open(settings) as store:     # retention, as a dispatcher runs it every minute, an hour later
        known = {r[0] for r in store.database.connection().execute("SELECT key FROM blobs")}
        unknown = blob_files(data_dir) - known    # a kill between a blob's rename and its commit
        parts = list((data_dir / "blobs" / "tmp").glob("*.part"))      # a kill while writing one
        print(f"before retention: {len(unknown)} blob files without a row, {len(parts)} temp files")
        old = time.time() - 2 * ORPHAN_GRACE
        for path in (data_dir / "blobs").rglob("*"):
            if path.is_file():
                os.utime(path, (old, old))
        store.purge_expired(now=time.time() + ORPHAN_GRACE + 60)
    assert_no_orphans(settings)
    assert not list((data_dir / "blobs" / "tmp").glob("*.part"))
    assert len(stored_blobs(settings)) == 2 * IMAGES * len(jobs)      # inputs and results, each once
    with Store.open(settings) as store:     # and once the jobs expire, nothing at all is left
        assert store.purge_expired(now=time.time() + settings.ttl_seconds + 60) == len(jobs)
    assert stored_blobs(settings) == set()
    assert_no_orphans(settings)


@pytest.mark.slow
def test_a_full_quota_refuses_new_jobs_with_507_and_corrupts_nothing(tmp_path):
    images = images_for(7)[:20]
    pipeline = parse_pipeline(PIPELINE)
    expected = [process(data, pipeline, Output()).data for data in images]
    quota = sum(map(len, images)) + 100           # room for one job's inputs and not one image more
    folder = tmp_path / "serve"
    settings = Settings(data_dir=folder / "data", quota_bytes=quota)
    with running_server(folder, engine="local", workers=2, env={"PIXMILL_QUOTA_BYTES": str(quota)}) as server:
        first = submit(server, images, "first")
        job = wait_done(server, first)        # results of an accepted job are still written, over quota
        refused = []
        for _ in range(3):
            before = blob_files(settings.data_dir)
            response = server.post("/api/v1/jobs", files=[("files", (f"more{i}.png", d)) for i, d in enumerate(images)],
                                   data={"pipeline": PIPELINE})
            legacy = server.post("/upload", files=[("files", ("one.png", images[0])), ("operations", (None, "blur"))])
            refused += [response, legacy]
            assert blob_files(settings.data_dir) == before, "a refused upload left blobs behind"
        for response in refused:
            assert response.status_code == 507, response.text
            body = response.json()
            assert body["error"] == "storage_full" and "quota" in body["message"]
        for task in job["tasks"]:
            result = requests.get(task["result_url"], timeout=30)
            assert result.status_code == 200 and result.content == expected[task["n"]]
        assert server.get("/healthz").status_code == 200
        assert requests.delete(job["status_url"], timeout=30).status_code == 204
        again = submit(server, images[:5], "again")   # room again once a job is deleted
        assert wait_done(server, again)["counts"]["done"] == 5
    with Store.open(settings) as store:
        assert store.database.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [j.id for j in store.list_jobs()] == [again]
    assert_no_orphans(settings)


KILLED_AFTER_RENAME = """
import os, signal, sys
from pathlib import Path
from pixmill.config import Settings
from pixmill.store import Store
store = Store.open(Settings(data_dir=Path(sys.argv[1]), inline_bytes=0))   # a file, as large blobs are
commit = store.blobs.commit
def commit_then_die(tmp, key):
    commit(tmp, key)
    os.kill(os.getpid(), signal.SIGKILL)
store.blobs.commit = commit_then_die
store.put_blob(b"pixmill" * 1000)
"""


def test_a_blob_renamed_by_a_process_killed_before_its_commit_is_purged(tmp_path):
    """kill -9 between a blob's rename and its transaction's commit: the file has no row; retention removes it."""
    settings = Settings(data_dir=tmp_path / "data", inline_bytes=0)
    with Store.open(settings) as store:
        kept = store.put_blob(b"kept")
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_RENAME, str(settings.data_dir)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    orphans = blob_files(settings.data_dir) - {kept}
    assert len(orphans) == 1
    with Store.open(settings) as store:
        assert not store.blob_store.known(next(iter(orphans)))
        store.purge_expired()                               # young: it may still be committing
        assert blob_files(settings.data_dir) == {kept, *orphans}
        old = time.time() - 2 * ORPHAN_GRACE                # an hour later
        for path in (settings.data_dir / "blobs").rglob("*"):
            if path.is_file():
                os.utime(path, (old, old))
        store.purge_expired()
        assert store.read_blob(kept) == b"kept"             # a blob in the table is kept, however old
    assert blob_files(settings.data_dir) == {kept}
