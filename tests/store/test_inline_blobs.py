"""Small blobs inside their database row (PIXMILL_INLINE_BYTES): no file or object, one transaction, the
same answers as a file; larger ones stay files or objects. On both backends."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import ImageTooLarge, StorageFull
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result, process
from pixmill.store import NewTask, Store, StoredResult
from pixmill.web import create_app
from pixmill.worker.stored import run_stored
from support.web import REAL, dispatcher, make_client, path_of, post_job, wait_job

pytestmark = [pytest.mark.timeout(90), pytest.mark.both_backends]

SMALL = 1000
GRAY = parse_pipeline("grayscale")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url, engine="local",
                    workers=1, inline_bytes=SMALL, quota_bytes=10_000)


def files_and_objects(store: Store) -> set[str]:
    return set(store.blobs.keys_older_than(-86400.0))


class Trickle(io.RawIOBase):
    """A stream that hands out at most 7 bytes per read, as a slow upload does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        out, self.data = self.data[:min(7, size if size >= 0 else 7)], self.data[min(7, size if size >= 0 else 7):]
        return out


@pytest.mark.parametrize("source", [bytes, io.BytesIO, Trickle], ids=["bytes", "stream", "trickle"])
def test_a_small_blob_is_kept_in_its_row_and_read_back(store: Store, source):
    for size, inline in [(1, True), (SMALL, True), (SMALL + 1, False), (5 * SMALL, False)]:
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        key = store.put_blob(source(data))
        assert (key in files_and_objects(store)) is not inline, size
        assert store.read_blob(key) == data
        source_of = store.blob_source(key)
        with (open(source_of, "rb") if isinstance(source_of, Path) else source_of) as f:
            assert f.read() == data
    assert store.blob_usage() == 1 + SMALL + SMALL + 1 + 5 * SMALL


def test_limits_apply_to_small_blobs(store: Store):
    with pytest.raises(ImageTooLarge):
        store.put_blob(io.BytesIO(b"x" * 600), max_bytes=500)
    store.put_blob(b"x" * 900)
    store.put_blob(b"x" * 9000)
    with pytest.raises(StorageFull):
        store.put_blob(b"x" * 200)          # 10,100 of a 10,000-byte quota
    assert store.blob_usage() == 9900


def test_a_claim_carries_a_small_input_and_a_small_result_goes_into_a_row(store: Store):
    small, large = store.put_blob(b"s" * 100), store.put_blob(b"L" * 3000)
    job = store.create_job([NewTask("a.png", GRAY, small, "png"), NewTask("b.png", GRAY, large, "png")],
                           Output("png"))
    first, second = store.claim("d1", 2, busy=False)
    assert first.input_data == b"s" * 100 and second.input_data is None
    assert store.complete("d1", first.id, Result(b"r" * 50, "png", 1, 1))
    staged = store.blobs.stage(b"R" * 3000, max_bytes=None)
    assert store.complete("d1", second.id, StoredResult(staged, "png", 1, 1))
    done = store.get_job(job.id)
    assert [store.read_blob(t.result_blob) for t in done.tasks] == [b"r" * 50, b"R" * 3000]
    assert done.tasks[0].result_blob not in files_and_objects(store)
    assert done.tasks[1].result_blob in files_and_objects(store)
    store.delete_job(job.id)
    assert files_and_objects(store) == set() and store.blob_usage() == 0


def test_the_worker_returns_a_small_result_whole_and_stages_a_large_one(store: Store, settings: Settings):
    data = (REAL / "sk_coins.png").read_bytes()
    location = str(settings.blob_dir) if not settings.blob_url else settings.blob_url
    small = run_stored(location, "0" * 32, parse_pipeline("resize(width=8)"), Output("png"), max_pixels=10**8,
                       data=data, inline_bytes=SMALL)
    assert isinstance(small, Result) and small.data == process(data, parse_pipeline("resize(width=8)"),
                                                              Output("png")).data
    large = run_stored(location, "0" * 32, GRAY, Output("png"), max_pixels=10**8, data=data, inline_bytes=SMALL)
    assert isinstance(large, StoredResult) and large.staged.size > SMALL
    store.blobs.discard(large.staged)


def test_tiny_images_through_the_service_leave_no_file_and_answer_as_files_do(store: Store, settings: Settings):
    images = {name: (REAL / name).read_bytes() for name in ("sk_camera.png", "pil_flower.jpg")}
    tiny = {name: process(data, parse_pipeline("resize(width=12)"), Output("png")).data
            for name, data in images.items()}
    app = create_app(replace(settings, inline_bytes=64 * 1024), store)
    client = make_client(app)
    with dispatcher(store, settings):
        answer = post_job(client, {"files": [(io.BytesIO(d), f"{n}.png") for n, d in tiny.items()],
                                   "pipeline": "flip", "format": "png"})
        assert answer.status_code == 202, answer.get_json()
        job = wait_job(client, answer.get_json()["id"])
    assert job["counts"]["done"] == 2 and files_and_objects(store) == set()
    for task, data in zip(job["tasks"], tiny.values()):
        got = client.get(path_of(task["result_url"]))
        assert got.status_code == 200 and got.data == process(data, parse_pipeline("flip"), Output("png")).data
        again = client.get(path_of(task["result_url"]), headers={"If-None-Match": got.headers["ETag"]})
        assert again.status_code == 304
        assert client.get(path_of(task["source_url"])).data == data
    archive = zipfile.ZipFile(io.BytesIO(client.get(path_of(job["archive_url"])).data))
    assert len(archive.namelist()) == 2


def test_small_uploads_are_stored_with_their_tasks_or_not_at_all(store: Store, settings: Settings):
    client = make_client(create_app(settings, store))
    tiny = [process((REAL / "sk_camera.png").read_bytes(), parse_pipeline(f"resize(width={w})"), Output("png")).data
            for w in (8, 9, 10)]
    rows = lambda: store.database.connection().execute("SELECT COUNT(*) FROM blobs").fetchone()[0]  # noqa: E731

    def form(**fields):
        return {"pipeline": "flip", "files": [(io.BytesIO(d), f"{i}.png") for i, d in enumerate(tiny)], **fields}

    refused = post_job(client, form(format="bogus"))
    assert refused.status_code == 400 and rows() == 0
    small = replace(settings, quota_bytes=sum(map(len, tiny)) - 1)
    with Store.open(small) as tight:
        full = post_job(make_client(create_app(small, tight)),
                        form())
    assert full.status_code == 507 and full.get_json()["error"] == "storage_full" and rows() == 0
    accepted = post_job(client, form())
    assert accepted.status_code == 202 and rows() == 3 and files_and_objects(store) == set()
    job = store.get_job(accepted.get_json()["id"])
    assert [store.read_blob(t.input_blob) for t in job.tasks] == tiny
