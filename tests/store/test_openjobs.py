"""Open jobs ("early start"): an upload's tasks run while the rest of its body is still being read.

The store level (open_job, add_tasks, seal_job, discard_job, purge, the schema migration), then
uploads whose body is a `GatedBody`: it hands out its bytes up to a cut, then blocks until the
test opens that cut's gate, so the test looks at the store while the upload is paused there,
without any sleep standing in for synchronisation.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import ImageTooLarge, InvalidRequest, NotFound, UnsupportedFormat
from pixmill.imaging import codec
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result, process
from pixmill.store import schema
from pixmill.store.facade import ORPHAN_GRACE, NewTask, Store, TaskState
from pixmill.web.jobstart import JobStart
from pixmill.web.uploads import read_upload
from support.backends import blob_keys, partial_writes, sqlite_only
from support.web import assert_error, dispatcher, make_client, path_of, wait_job

REAL = Path(__file__).parents[1] / "data" / "real"
MB = 1024 * 1024
GRAY = parse_pipeline("grayscale")
FAKE = Result(b"a result from a fake dispatcher", "png", 1, 1)
BOUNDARY = "open-j0bs-b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
GATE_SECONDS = 20.0        # a gate never opened by the test ends the upload with an error after this

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_backends]   # each test on SQLite and on PostgreSQL


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    engine="local", workers=1, max_files=8,
                    max_file_bytes=1 * MB, max_request_bytes=3 * MB, lease_seconds=30, max_attempts=3)


# ---- helpers

def new_tasks(store: Store, count: int, *, first: int = 0) -> list[NewTask]:
    return [NewTask(f"img{i}.png", GRAY, store.put_blob(bytes([i]) * 10), "png") for i in range(first, first + count)]


def rows(store: Store, table: str) -> int:
    return store.database.connection().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def task_numbers(store: Store, job_id: str) -> list[int]:
    rows = store.database.connection().execute("SELECT n FROM tasks WHERE job_id = ? ORDER BY n", (job_id,))
    return [r[0] for r in rows]


def blob_rows(store: Store) -> set[str]:
    return {r[0] for r in store.database.connection().execute("SELECT key FROM blobs")}


def blob_files(store: Store) -> set[str]:
    """Every blob stored, and every half-written one (a temp file's or an open multipart upload's name)."""
    return blob_keys(store) | set(partial_writes(store))


def assert_nothing_stored(store: Store, settings: Settings) -> None:
    assert store.list_jobs() == []
    assert (rows(store, "jobs"), rows(store, "tasks"), rows(store, "blobs")) == (0, 0, 0)
    assert blob_files(store) == set() and store.blob_usage() == 0


def open_job_ids(store: Store) -> list[str]:
    return [r[0] for r in store.database.connection().execute("SELECT id FROM jobs WHERE sealed = 0")]


Part = tuple[str, bytes, "str | None"]      # (form field name, value, file name or None)


def image(name: str) -> Part:
    return ("files", (REAL / name).read_bytes(), name)


def field(name: str, value: str) -> Part:
    return (name, value.encode(), None)


def encode(parts: list[Part]) -> tuple[bytes, list[int]]:
    """A multipart body as browsers write it, and the offset where each part's data begins."""
    body, starts = bytearray(), []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        kind = "\r\nContent-Type: application/octet-stream" if filename is not None else ""
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}{kind}\r\n\r\n".encode()
        starts.append(len(body))
        body += value + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return bytes(body), starts


class GatedBody:
    """A request body that stops before the data of some parts until the test opens that gate.

    Each part's headers come before its gate, so when read() blocks at gate i, every part before
    it has been read whole and handled. read() puts i in `paused` as it starts to wait."""

    def __init__(self, parts: list[Part], *, stop_before: list[int]) -> None:
        self.data, starts = encode(parts)
        self.cuts = [starts[i] for i in stop_before]
        self.gates = [threading.Event() for _ in self.cuts]
        self.paused: queue.Queue[int] = queue.Queue()
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        for i, cut in enumerate(self.cuts):
            if self.pos == cut and not self.gates[i].is_set():
                self.paused.put(i)
                if not self.gates[i].wait(GATE_SECONDS):
                    raise RuntimeError(f"the test never opened gate {i}")
        upto = min([c for c in self.cuts if c > self.pos] + [len(self.data)])
        if size is not None and size >= 0:
            upto = min(upto, self.pos + size)
        out = self.data[self.pos:upto]
        self.pos = upto
        return out

    def tell(self) -> int:               # werkzeug's test client measures the body with seek and tell
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: len(self.data)}[whence] + offset
        return self.pos

    def wait_paused(self, gate: int, timeout: float = 10.0) -> None:
        assert self.paused.get(timeout=timeout) == gate

    def open(self, gate: int) -> None:
        self.gates[gate].set()

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


class Uploads:
    """Runs uploads in threads; at the end every gate is opened and every thread joined."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
        self.bodies: list[GatedBody] = []

    def body(self, parts: list[Part], *, stop_before: list[int]) -> GatedBody:
        body = GatedBody(parts, stop_before=stop_before)
        self.bodies.append(body)
        return body

    def run(self, fn: Callable, *args) -> Future:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        for body in self.bodies:
            body.open_all()
        self.pool.shutdown(wait=True)


@pytest.fixture
def uploads():
    running = Uploads()
    try:
        yield running
    finally:
        running.close()


def receive(body, settings: Settings, store: Store, *, strict: bool = True):
    """What receive_upload does, without Flask: read the upload with early start, then record its job."""
    start = JobStart(store)
    upload = read_upload(body, CONTENT_TYPE, settings, store, strict=strict, job=start)
    try:
        return start.finish(upload.tasks, upload.output)
    except BaseException:
        start.abandon()
        store.delete_blobs(upload.blobs)
        raise


def post_gated(app, body: GatedBody, path: str = "/api/v1/jobs"):
    return make_client(app).post(path, input_stream=body, content_type=CONTENT_TYPE)


# ---- the store: open, add, seal, discard, purge

def test_an_open_jobs_tasks_run_but_the_job_is_hidden_until_sealed(store: Store):
    job_id = store.open_job(Output("png", 80), owner="alice")
    store.add_tasks(job_id, new_tasks(store, 2), start=0)
    claims = store.claim("d1", 10, busy=False)
    assert [(c.job_id, c.n, c.name) for c in claims] == [(job_id, 0, "img0.png"), (job_id, 1, "img1.png")]
    assert claims[0].output == Output("png", 80) and claims[0].pipeline == "grayscale"
    assert store.complete("d1", claims[0].id, FAKE)              # results are recorded while it is open

    for owner in (None, "alice"):
        with pytest.raises(NotFound):
            store.get_job(job_id, owner=owner)
        assert store.list_jobs(owner=owner) == []
        with pytest.raises(NotFound):
            store.unfinished(job_id, owner=owner)
        with pytest.raises(NotFound):
            store.unfinished(job_id, n=0, owner=owner)
        with pytest.raises(NotFound):
            store.cancel_job(job_id, owner=owner)
        with pytest.raises(NotFound):
            store.delete_job(job_id, owner=owner)
    assert task_numbers(store, job_id) == [0, 1]                 # the refused cancel and delete changed nothing
    assert store.renew("d1") == {claims[1].id}

    store.add_tasks(job_id, new_tasks(store, 1, first=2), start=2)
    job = store.seal_job(job_id, new_tasks(store, 2, first=3), Output("png", 80), start=3)
    assert job.id == job_id and job.owner == "alice" and job.output == Output("png", 80)
    assert [(t.n, t.name) for t in job.tasks] == [(n, f"img{n}.png") for n in range(5)]
    assert [t.state for t in job.tasks] == [TaskState.DONE, TaskState.RUNNING] + [TaskState.QUEUED] * 3
    assert store.read_blob(job.tasks[0].result_blob) == FAKE.data    # the same output: the result is kept
    assert store.get_job(job_id, owner="alice") == job
    assert store.list_jobs() == [job] and store.list_jobs(owner="alice") == [job]
    assert store.unfinished(job_id) == 4 and store.unfinished(job_id, n=0) == 0
    with pytest.raises(NotFound):
        store.get_job(job_id, owner="mallory")
    assert store.cancel_job(job_id).state == "cancelled"


def test_sealing_with_another_output_requeues_the_tasks_added_before(store: Store, settings: Settings):
    job_id = store.open_job(Output())
    store.add_tasks(job_id, new_tasks(store, 3), start=0)
    first, second, third = store.claim("d1", 3, busy=False)
    assert first.output == Output()
    assert store.complete("d1", first.id, Result(b"made as jpeg", "jpeg", 4, 3, ("converted",)))
    assert store.fail("d1", second.id, "step 1 grayscale: bad")
    stale = store.database.connection().execute("SELECT result_blob FROM tasks WHERE id = ?", (first.id,)).fetchone()[0]
    assert stale in blob_rows(store) and stale in blob_keys(store)
    used = store.blob_usage()

    job = store.seal_job(job_id, new_tasks(store, 2, first=3), Output("png", 50), start=3)
    assert job.output == Output("png", 50) and [t.n for t in job.tasks] == [0, 1, 2, 3, 4]
    for task in job.tasks:
        assert (task.state, task.attempts, task.error, task.result_blob, task.result_format) == \
            (TaskState.QUEUED, 0, None, None, None), task
        assert (task.width, task.height, task.notes, task.started_at, task.finished_at) == (None, None, (), None, None)
    assert [t.input_blob for t in job.tasks[:3]] == [first.input_blob, second.input_blob, third.input_blob]
    assert stale not in blob_rows(store) and stale not in blob_keys(store)
    assert store.blob_usage() == used - len(b"made as jpeg") + 20          # the two new inputs are 10 B each
    assert store.renew("d1") == set()
    assert not store.complete("d1", third.id, FAKE)                       # the old claim is no longer held
    assert not partial_writes(store)
    again = store.claim("d2", 10, busy=False)
    assert [c.n for c in again] == [0, 1, 2, 3, 4] and {c.output for c in again} == {Output("png", 50)}
    assert [c.attempts for c in again] == [1] * 5


def test_discard_removes_the_job_its_tasks_and_every_blob(store: Store):
    keep = store.create_job(new_tasks(store, 1), Output())                # another job is untouched
    job_id = store.open_job(Output())
    store.add_tasks(job_id, new_tasks(store, 2, first=1), start=0)
    done, running = [c for c in store.claim("d1", 10, busy=False) if c.job_id == job_id]
    assert store.complete("d1", done.id, FAKE)
    assert len(blob_files(store)) == 4                                     # 3 inputs and one result
    store.discard_job(job_id)
    assert task_numbers(store, job_id) == [] and open_job_ids(store) == []
    assert blob_files(store) == {keep.tasks[0].input_blob} and blob_rows(store) == {keep.tasks[0].input_blob}
    assert store.blob_usage() == 10
    assert not store.complete("d1", running.id, FAKE)                      # a late result leaves nothing
    assert blob_files(store) == {keep.tasks[0].input_blob}
    assert store.get_job(keep.id).tasks[0].state is TaskState.RUNNING


def test_purge_deletes_open_jobs_older_than_the_grace_with_their_blobs(store: Store, settings: Settings):
    old = store.open_job(Output())
    store.add_tasks(old, new_tasks(store, 2), start=0)
    [claim, _] = store.claim("d1", 2, busy=False)
    store.complete("d1", claim.id, FAKE)
    young = store.open_job(Output())
    store.add_tasks(young, new_tasks(store, 1, first=2), start=0)
    sealed = store.create_job(new_tasks(store, 1, first=3), Output())
    kept = blob_files(store) - {k for r in store.database.connection().execute(
        "SELECT input_blob, result_blob FROM tasks WHERE job_id = ?", (old,)) for k in r if k}
    now = time.time()
    db = store.database.connection()
    db.execute("UPDATE jobs SET created_at = ? WHERE id IN (?, ?)", (now - ORPHAN_GRACE - 10, old, sealed.id))
    db.execute("UPDATE jobs SET created_at = ? WHERE id = ?", (now - ORPHAN_GRACE + 60, young))

    assert store.purge_expired(now=now) == 1
    assert open_job_ids(store) == [young] and task_numbers(store, old) == []
    assert blob_files(store) == kept == blob_rows(store) and len(kept) == 2
    assert task_numbers(store, young) == [0]
    assert store.get_job(sealed.id).tasks[0].state is TaskState.QUEUED     # a sealed job waits for its TTL
    assert store.purge_expired(now=now + 61) == 1 and open_job_ids(store) == []
    assert blob_files(store) == {sealed.tasks[0].input_blob}


def test_adding_to_or_sealing_a_job_that_is_not_open_is_not_found(store: Store):
    sealed = store.create_job(new_tasks(store, 1), Output())
    job_id = store.open_job(Output())
    store.seal_job(job_id, new_tasks(store, 1, first=1), Output(), start=0)
    for target in (sealed.id, job_id, "no-such-job"):
        with pytest.raises(NotFound):
            store.add_tasks(target, new_tasks(store, 1, first=5), start=1)
        with pytest.raises(NotFound):
            store.seal_job(target, new_tasks(store, 1, first=6), Output(), start=1)
        with pytest.raises(NotFound):
            store.seal_job(target, [], Output("png"), start=1)
    assert rows(store, "tasks") == 2 and store.get_job(job_id).output == Output()
    assert store.get_job(sealed.id).state == "queued"


def test_a_task_whose_input_is_not_stored_is_refused_and_nothing_is_added(store: Store):
    job_id = store.open_job(Output())
    tasks = new_tasks(store, 1) + [NewTask("ghost.png", GRAY, "0" * 32, "png")]
    with pytest.raises(InvalidRequest, match="not in the store"):
        store.add_tasks(job_id, tasks, start=0)
    with pytest.raises(InvalidRequest):
        store.seal_job(job_id, tasks, Output(), start=0)
    assert task_numbers(store, job_id) == [] and open_job_ids(store) == [job_id]


@sqlite_only
def test_a_version_1_database_migrates_and_its_jobs_stay_visible(settings: Settings):
    settings.data_dir.mkdir(parents=True)
    db = sqlite3.connect(settings.db_path)
    db.executescript(schema.MIGRATIONS[0])
    db.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);")
    now = time.time()
    db.execute("INSERT INTO jobs (id, owner, created_at, output) VALUES ('old-job', 'alice', ?, ?)",
               (now, '{"format": "png", "quality": 80}'))
    db.execute("INSERT INTO blobs (key, size, created_at) VALUES (?, 3, ?)", ("a" * 32, now))
    db.execute("INSERT INTO tasks (job_id, n, name, pipeline, state, created_at, input_blob) "
               "VALUES ('old-job', 0, 'a.png', 'grayscale', 'queued', ?, ?)", (now, "a" * 32))
    db.commit()
    db.close()

    with Store.open(settings) as store:
        db = store.database.connection()
        assert schema.schema_version(db) == schema.SCHEMA_VERSION == 4
        assert "sealed" in {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
        assert db.execute("SELECT sealed FROM jobs WHERE id = 'old-job'").fetchone()[0] == 1
        job = store.get_job("old-job", owner="alice")
        assert job.output == Output("png", 80) and [(t.n, t.name, t.state) for t in job.tasks] == \
            [(0, "a.png", TaskState.QUEUED)]
        assert [j.id for j in store.list_jobs()] == ["old-job"] and store.unfinished("old-job") == 1
        [claim] = store.claim("d1", 5, busy=False)
        assert claim.job_id == "old-job"
        hidden = store.open_job(Output())                      # open jobs work in the migrated database
        assert [j.id for j in store.list_jobs()] == ["old-job"]
        assert store.seal_job(hidden, [], Output(), start=0).tasks == ()
    with Store.open(settings) as store:                         # opening again migrates nothing
        assert schema.schema_version(store.database.connection()) == 4 and len(store.list_jobs()) == 2


# ---- uploads that start early: read_upload with a JobStart

def test_with_the_pipeline_first_each_task_is_claimable_while_the_upload_is_read(store, settings, uploads):
    names = ["sk_coins.png", "pil_hopper.bmp", "sk_rocket.jpg", "pil_flower.jpg"]
    parts = [field("pipeline", "blur(ksize=3) | grayscale")] + [image(n) for n in names]
    body = uploads.body(parts, stop_before=[2, 3, 4])            # before the data of files 1, 2 and 3
    call = uploads.run(receive, body, settings, store)
    claimed = []
    for gate in range(3):
        body.wait_paused(gate)
        [job_id] = open_job_ids(store)
        assert task_numbers(store, job_id) == list(range(gate + 1))
        with pytest.raises(NotFound):
            store.get_job(job_id)
        [claim] = store.claim("fake", 10, busy=False)           # the file just stored, and only it
        assert (claim.job_id, claim.n, claim.name, claim.pipeline) == \
            (job_id, gate, names[gate], "blur(ksize=3) | grayscale")
        assert store.read_blob(claim.input_blob) == (REAL / names[gate]).read_bytes()
        claimed.append(claim)
        body.open(gate)
    job = call.result(timeout=20)
    assert job.id == claimed[0].job_id and open_job_ids(store) == []
    assert [(t.n, t.name, t.pipeline) for t in job.tasks] == \
        [(n, name, "blur(ksize=3) | grayscale") for n, name in enumerate(names)]
    assert [t.state for t in job.tasks] == [TaskState.RUNNING] * 3 + [TaskState.QUEUED]
    assert [t.source_format for t in job.tasks] == ["png", "bmp", "jpeg", "jpeg"]
    assert store.list_jobs() == [job]


def test_operations_interleaved_with_files_pair_each_file_with_its_own(store, settings, uploads):
    specs = ["grayscale", "blur(ksize=5)", "threshold"]
    names = ["pil_hopper.bmp", "sk_coins.png", "sk_horse.png"]
    parts = []
    for spec, name in zip(specs, names):
        parts += [field("operations", spec), image(name)]
    body = uploads.body(parts, stop_before=[3, 5])              # before files 1 and 2
    call = uploads.run(receive, body, settings, store)
    for gate in range(2):
        body.wait_paused(gate)
        [claim] = store.claim("fake", 10, busy=False)
        assert (claim.n, claim.name, claim.pipeline) == (gate, names[gate], parse_pipeline(specs[gate]).text())
        assert store.complete("fake", claim.id, FAKE)
        body.open(gate)
    job = call.result(timeout=20)
    assert [(t.n, t.name, t.pipeline) for t in job.tasks] == \
        [(n, name, parse_pipeline(spec).text()) for n, (name, spec) in enumerate(zip(names, specs))]
    assert [t.state for t in job.tasks] == [TaskState.DONE, TaskState.DONE, TaskState.QUEUED]


def test_operations_after_the_files_start_each_file_as_its_operation_arrives(store, settings, uploads):
    names = ["pil_hopper.bmp", "sk_coins.png"]
    parts = [image(n) for n in names] + [field("operations", "grayscale"), field("operations", "blur")]
    body = uploads.body(parts, stop_before=[1, 2, 3])
    call = uploads.run(receive, body, settings, store)
    for gate in range(2):                                        # the files are in, no operation yet
        body.wait_paused(gate)
        assert open_job_ids(store) == [] and store.claim("fake", 10, busy=False) == []
        body.open(gate)
    body.wait_paused(2)                                          # the first operation is in
    [claim] = store.claim("fake", 10, busy=False)
    assert (claim.n, claim.name, claim.pipeline) == (0, "pil_hopper.bmp", "grayscale")
    body.open(2)
    job = call.result(timeout=20)
    assert [(t.n, t.pipeline, t.state) for t in job.tasks] == \
        [(0, "grayscale", TaskState.RUNNING), (1, "blur", TaskState.QUEUED)]


@pytest.mark.parametrize("where", ["last", "between"])
def test_files_wait_for_a_pipeline_that_comes_after_them(store, settings, uploads, where):
    names = ["pil_hopper.bmp", "sk_coins.png", "sk_horse.png"]
    if where == "last":     # the job is created whole, at the end; paused before the pipeline's text
        parts, started = [image(n) for n in names] + [field("pipeline", "grayscale")], 0
    else:                   # the files before the pipeline start when it arrives; paused before file 1
        parts, started = [image(names[0]), field("pipeline", "grayscale"), image(names[1]), image(names[2])], 1
    body = uploads.body(parts, stop_before=[3 if where == "last" else 2])
    call = uploads.run(receive, body, settings, store)
    body.wait_paused(0)
    claims = store.claim("fake", 10, busy=False)
    assert [c.name for c in claims] == names[:started] and len(open_job_ids(store)) == started
    if where == "last":
        assert rows(store, "jobs") == 0 and rows(store, "tasks") == 0
    body.open(0)
    job = call.result(timeout=20)
    assert [(t.n, t.name, t.pipeline) for t in job.tasks] == [(n, name, "grayscale") for n, name in enumerate(names)]
    assert [t.state for t in job.tasks] == [TaskState.RUNNING] * started + [TaskState.QUEUED] * (3 - started)
    assert open_job_ids(store) == []


def test_without_a_job_start_nothing_is_stored_as_a_job_before_the_end(store, settings, uploads):
    body = uploads.body([field("pipeline", "grayscale"), image("pil_hopper.bmp"), image("sk_coins.png")],
                        stop_before=[2])
    call = uploads.run(read_upload, body, CONTENT_TYPE, settings, store)
    body.wait_paused(0)
    assert rows(store, "jobs") == 0 and store.claim("fake", 10, busy=False) == []
    body.open(0)
    upload = call.result(timeout=20)
    assert [t.name for t in upload.tasks] == ["pil_hopper.bmp", "sk_coins.png"] and rows(store, "jobs") == 0


def test_a_request_over_the_limit_after_early_start_leaves_nothing(store, settings, uploads):
    parts = [field("pipeline", "grayscale"), image("pil_hopper.bmp"), ("files", bytes(400_000), "big.png")]
    body = uploads.body(parts, stop_before=[2])
    small = replace(settings, max_request_bytes=len(encode(parts[:2])[0]) + 100_000)
    call = uploads.run(receive, body, small, store)
    body.wait_paused(0)
    [claim] = store.claim("fake", 10, busy=False)
    assert store.complete("fake", claim.id, FAKE)
    body.open(0)
    with pytest.raises(ImageTooLarge, match="per-request limit"):
        call.result(timeout=20)
    assert_nothing_stored(store, settings)
    assert not partial_writes(store)


def test_a_later_format_that_changes_nothing_keeps_the_results(store, settings, uploads):
    parts = [field("pipeline", "grayscale"), image("pil_hopper.bmp"), field("format", "auto"),
             field("quality", "90")]
    body = uploads.body(parts, stop_before=[2])
    call = uploads.run(receive, body, settings, store)
    body.wait_paused(0)
    [claim] = store.claim("fake", 10, busy=False)
    assert store.complete("fake", claim.id, FAKE)
    body.open(0)
    job = call.result(timeout=20)
    assert job.output == Output() and job.tasks[0].state is TaskState.DONE
    assert store.read_blob(job.tasks[0].result_blob) == FAKE.data


# ---- over HTTP: refusals after early start leave nothing, even results

REFUSED_LATE = {
    "not an image": ([field("pipeline", "grayscale"), image("pil_hopper.bmp"), image("sk_coins.png"),
                      ("files", b"hello, this is text", "notes.png")], 3,
                     415, "unsupported_format", ["notes.png"]),
    "pipeline and operations": ([field("pipeline", "grayscale"), image("pil_hopper.bmp"),
                                 field("operations", "blur")], 2, 400, "invalid_request", ["not both"]),
    "count mismatch": ([field("operations", "grayscale"), image("pil_hopper.bmp"), image("sk_coins.png")], 2,
                       400, "invalid_request", ["2 files but 1 operation"]),
    "bad second operation": ([field("operations", "grayscale"), image("pil_hopper.bmp"),
                              field("operations", "greyscale"), image("sk_coins.png")], 3,
                             400, "invalid_pipeline", ["sk_coins.png", "did you mean grayscale"]),
    "bad format": ([field("pipeline", "grayscale"), image("pil_hopper.bmp"), field("format", "gif")], 2,
                   400, "invalid_request", ["format must be one of"]),
    "unknown field": ([field("pipeline", "grayscale"), image("pil_hopper.bmp"), field("colour", "red")], 2,
                      400, "invalid_request", ["'colour'"]),
    "corrupt last file": ([field("pipeline", "grayscale"), image("pil_hopper.bmp"),
                           ("files", (REAL / "sk_coins.png").read_bytes()[:40], "cut.png")], 2,
                          422, "corrupt_image", ["cut.png"]),
}


@pytest.mark.parametrize("case", list(REFUSED_LATE), ids=list(REFUSED_LATE))
def test_a_refusal_after_early_start_leaves_nothing(app, store, settings, uploads, case):
    parts, gate_before, status, code, words = REFUSED_LATE[case]
    body = uploads.body(parts, stop_before=[gate_before])
    call = uploads.run(post_gated, app, body)
    body.wait_paused(0)
    claims = store.claim("fake", 10, busy=False)                 # a fake dispatcher takes what has started
    assert claims and len(open_job_ids(store)) == 1
    assert store.complete("fake", claims[0].id, FAKE)            # ... and finishes one
    assert len(blob_keys(store)) == len(claims) + 1
    body.open(0)
    assert_error(call.result(timeout=20), status, code, *words)
    assert_nothing_stored(store, settings)
    assert open_job_ids(store) == []
    for claim in claims[1:]:                                     # results that come after the refusal
        assert not store.complete("fake", claim.id, FAKE)
    assert_nothing_stored(store, settings)
    assert not partial_writes(store)


def test_a_refusal_at_seal_time_leaves_nothing(app, store, settings, uploads, monkeypatch):
    def refuse(*args, **kwargs):
        raise UnsupportedFormat("refused at the end")

    monkeypatch.setattr(store, "seal_job", refuse)
    body = uploads.body([field("pipeline", "grayscale"), image("pil_hopper.bmp"), image("sk_coins.png")],
                        stop_before=[2])
    call = uploads.run(post_gated, app, body)
    body.wait_paused(0)
    [claim] = store.claim("fake", 10, busy=False)
    assert store.complete("fake", claim.id, FAKE)
    body.open(0)
    assert_error(call.result(timeout=20), 415, "unsupported_format", "refused at the end")
    assert_nothing_stored(store, settings)


def test_a_job_posted_over_http_is_claimable_before_the_request_ends(app, client, store, settings, uploads):
    body = uploads.body([field("pipeline", "grayscale"), image("pil_hopper.bmp"), image("sk_coins.png")],
                        stop_before=[2])
    call = uploads.run(post_gated, app, body)
    body.wait_paused(0)
    [job_id] = open_job_ids(store)
    assert_error(client.get(f"/api/v1/jobs/{job_id}"), 404, "not_found")
    assert_error(client.get(f"/api/v1/jobs/{job_id}/tasks/0/result"), 404, "not_found")
    assert_error(client.delete(f"/api/v1/jobs/{job_id}"), 404, "not_found")
    [claim] = store.claim("fake", 10, busy=False)
    assert (claim.job_id, claim.n, claim.name) == (job_id, 0, "pil_hopper.bmp")
    body.open(0)
    response = call.result(timeout=20)
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["id"] == job_id and [t["name"] for t in job["tasks"]] == ["pil_hopper.bmp", "sk_coins.png"]
    assert [t["state"] for t in job["tasks"]] == ["running", "queued"]
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_the_original_upload_form_starts_early_too(app, client, store, settings, uploads):
    parts = [field("operations", "grayscale"), image("pil_hopper.bmp"), field("operations", "threshold"),
             image("sk_coins.png"), field("extra", "ignored")]
    body = uploads.body(parts, stop_before=[3])
    call = uploads.run(post_gated, app, body, "/upload")
    body.wait_paused(0)
    [claim] = store.claim("fake", 10, busy=False)
    assert (claim.n, claim.pipeline) == (0, "grayscale")
    body.open(0)
    response = call.result(timeout=20)
    assert response.status_code == 200, response.get_json()
    job = store.get_job(response.get_json()["job_id"])
    assert [(t.n, t.name, t.pipeline) for t in job.tasks] == [(0, "pil_hopper.bmp", "grayscale"),
                                                              (1, "sk_coins.png", "threshold")]


# ---- with the real dispatcher

def test_a_later_format_requeues_the_tasks_that_ran_and_their_results_follow_it(app, client, store, settings,
                                                                                uploads):
    names = ["sk_rocket.jpg", "pil_hopper.bmp", "sk_coins.png"]
    parts = [field("pipeline", "grayscale"), image(names[0]), field("format", "png"), image(names[1]),
             image(names[2])]
    body = uploads.body(parts, stop_before=[2, 4])
    call = uploads.run(post_gated, app, body)
    body.wait_paused(0)                                          # before the format: file 0 runs as auto
    [claim] = store.claim("fake", 10, busy=False)
    assert claim.output == Output()
    as_jpeg = process((REAL / names[0]).read_bytes(), GRAY, claim.output)
    assert as_jpeg.format == "jpeg" and store.complete("fake", claim.id, as_jpeg)
    stale = store.database.connection().execute("SELECT result_blob FROM tasks WHERE id = ?", (claim.id,)).fetchone()[0]
    body.open(0)
    body.wait_paused(1)                                          # file 1 is in, but waits for the end
    [job_id] = open_job_ids(store)
    assert task_numbers(store, job_id) == [0] and store.claim("fake", 10, busy=False) == []
    body.open(1)
    response = call.result(timeout=20)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["output"] == {"format": "png", "quality": 90, "color": "srgb", "accept": []}
    job = store.get_job(job_id)
    assert [(t.n, t.name, t.state, t.attempts, t.result_blob) for t in job.tasks] == \
        [(n, name, TaskState.QUEUED, 0, None) for n, name in enumerate(names)]
    assert stale not in blob_rows(store) and stale not in blob_keys(store)

    with dispatcher(store, settings):
        done = wait_job(client, job_id, timeout=40)
    assert done["counts"]["done"] == 3
    for name, task in zip(names, done["tasks"]):
        result = client.get(path_of(task["result_url"]))
        expected = process((REAL / name).read_bytes(), GRAY, Output("png"))
        assert result.mimetype == "image/png" and codec.sniff(result.data) == "png"
        assert result.data == expected.data, name
    assert stale not in blob_keys(store)


def test_six_files_with_the_pipeline_first_give_what_process_gives(app, client, store, settings, uploads):
    names = ["sk_coins.png", "pil_hopper.bmp", "sk_rocket.jpg", "pil_flower.jpg", "sk_horse.png", "pil_rgb24.bmp"]
    spec = "blur(ksize=3) | resize(scale=0.5)"
    body = uploads.body([field("pipeline", spec)] + [image(n) for n in names], stop_before=[6])
    with dispatcher(store, settings):
        call = uploads.run(post_gated, app, body)
        body.wait_paused(0)                                      # five files in, the sixth not yet
        [job_id] = open_job_ids(store)
        deadline = time.monotonic() + 40
        while not store.database.connection().execute("SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state = 'done'",
                                      (job_id,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the dispatcher processed nothing while the upload was paused"
            time.sleep(0.02)
        body.open(0)
        response = call.result(timeout=20)
        assert response.status_code == 202, response.get_json()
        done = wait_job(client, job_id, timeout=40)
    assert done["counts"]["done"] == 6 and [t["name"] for t in done["tasks"]] == names
    assert [t["n"] for t in done["tasks"]] == list(range(6))
    for name, task in zip(names, done["tasks"]):
        expected = process((REAL / name).read_bytes(), parse_pipeline(spec), Output())
        result = client.get(path_of(task["result_url"]))
        assert result.status_code == 200 and result.mimetype == expected.media_type
        assert result.data == expected.data, name
        assert (task["width"], task["height"]) == (expected.width, expected.height)


def test_a_body_read_whole_records_its_job_in_one_transaction(client, store, monkeypatch):
    """Once every byte of the body has been read, nothing starts early: a one-file POST (the usual API
    call) records its job in one transaction, not in an open, an add and a seal."""
    opened: list[str] = []
    real_open = Store.open_job
    monkeypatch.setattr(Store, "open_job", lambda self, *a, **kw: opened.append(real_open(self, *a, **kw))
                        or opened[-1])
    data, _ = encode([field("pipeline", "grayscale"), image("sk_coins.png")])
    response = client.post("/api/v1/jobs", data=data, content_type=CONTENT_TYPE)
    assert response.status_code == 202, response.get_json()
    assert opened == [] and open_job_ids(store) == []
    job = store.get_job(response.get_json()["id"])
    assert [(t.name, t.pipeline, t.state) for t in job.tasks] == [("sk_coins.png", "grayscale", TaskState.QUEUED)]


def test_read_upload_with_its_length_starts_only_the_files_read_before_the_end(store, settings, uploads):
    """With the body's length known, files read while more of it is to come start at once; those found
    after its last byte was read wait for the end (nothing would start sooner)."""
    parts = [field("pipeline", "grayscale"), image("pil_hopper.bmp"), image("sk_coins.png")]
    body = uploads.body(parts, stop_before=[2])
    start = JobStart(store)
    call = uploads.run(lambda: read_upload(body, CONTENT_TYPE, settings, store, job=start, length=len(body.data)))
    body.wait_paused(0)
    [claim] = store.claim("fake", 10, busy=False)             # the first file: more was to come
    assert claim.name == "pil_hopper.bmp"
    body.open(0)
    upload = call.result(timeout=20)
    assert start.started == 1                                   # the second file came with the body's end
    job = start.finish(upload.tasks, upload.output)
    assert [(t.name, t.state) for t in job.tasks] == [("pil_hopper.bmp", TaskState.RUNNING),
                                                       ("sk_coins.png", TaskState.QUEUED)]
