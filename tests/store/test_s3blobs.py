"""Blobs in S3 (moto's server over real HTTP): whole objects, multipart streams, refusals that leave nothing."""

from __future__ import annotations

import io
import os
import time

import pytest

from pixmill.config import Settings
from pixmill.errors import ImageTooLarge, NotFound, PixmillError, StorageFull
from pixmill.store import Store
from pixmill.store.s3blobs import PART_BYTES, S3Blobs
from support.backends import partial_writes

MiB = 1024 * 1024
pytestmark = pytest.mark.postgres   # needs the S3 endpoint and, for the Store tests, PostgreSQL


@pytest.fixture
def blobs(s3, s3_bucket, monkeypatch) -> S3Blobs:
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    return S3Blobs(f"s3://{s3_bucket}/pre/fix")


def objects(blobs: S3Blobs) -> dict[str, int]:
    answer = blobs.client.list_objects_v2(Bucket=blobs.bucket)
    return {o["Key"]: o["Size"] for o in answer.get("Contents", [])}


def open_uploads(blobs: S3Blobs) -> list[str]:
    return [u["Key"] for u in blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", [])]


def test_small_blobs_are_one_object_each_under_the_prefix(blobs: S3Blobs):
    staged = blobs.stage(b"abc", max_bytes=None)
    assert (staged.size, staged.tmp) == (3, None)
    assert objects(blobs) == {f"pre/fix/{staged.key}": 3}
    assert blobs.read(staged.key) == b"abc" and blobs.source(staged.key).read() == b"abc"
    blobs.delete([staged.key, "../../etc/passwd"])
    assert objects(blobs) == {}
    with pytest.raises(NotFound, match=staged.key):
        blobs.read(staged.key)


def test_a_large_stream_goes_up_in_parts_and_reads_back_whole(blobs: S3Blobs):
    data = os.urandom(2 * PART_BYTES + 12345)
    sizes: list[int] = []
    staged = blobs.stage(io.BytesIO(data), max_bytes=3 * PART_BYTES, check=sizes.append)
    assert staged.size == len(data) and blobs.read(staged.key) == data
    head = blobs.client.head_object(Bucket=blobs.bucket, Key=blobs.name(staged.key))
    assert head["ETag"].strip('"').endswith("-3")          # a multipart object of three parts
    assert sizes == sorted(sizes) and sizes[-1] == len(data) and not open_uploads(blobs)


@pytest.mark.parametrize("refusal", ["limit", "quota"])
def test_a_stream_refused_midway_aborts_its_multipart_upload_and_leaves_nothing(blobs: S3Blobs, refusal: str):
    def quota(size: int) -> None:
        if refusal == "quota" and size > PART_BYTES + MiB:
            raise StorageFull("the storage quota is full")

    limit = PART_BYTES + MiB if refusal == "limit" else None
    with pytest.raises(ImageTooLarge if refusal == "limit" else StorageFull):
        blobs.stage(io.BytesIO(os.urandom(3 * PART_BYTES)), max_bytes=limit, check=quota)
    assert objects(blobs) == {} and open_uploads(blobs) == []


def test_orphans_are_listed_by_age_and_stale_uploads_aborted(blobs: S3Blobs):
    staged = blobs.stage(b"orphan", max_bytes=None)
    assert blobs.keys_older_than(3600) == [] and blobs.keys_older_than(-60) == [staged.key]
    # moto says every multipart upload was initiated in 2010, so the age is not tested here; the abort is.
    blobs.client.create_multipart_upload(Bucket=blobs.bucket, Key=blobs.name(staged.key) + "-left")
    assert len(open_uploads(blobs)) == 1
    assert blobs.sweep_temp(-60) == 1 and open_uploads(blobs) == []


def test_a_blob_url_must_name_a_bucket():
    for url in ("s3:///nobucket", "https://bucket/prefix", "bucket/prefix"):
        with pytest.raises(PixmillError, match="s3://bucket/prefix"):
            S3Blobs(url, client=object())


def test_a_store_on_postgres_and_s3_keeps_nothing_in_its_data_dir(tmp_path, postgres_url, blobs: S3Blobs):
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, blob_url=blobs.url,
                        quota_bytes=PART_BYTES + 2 * MiB)
    with Store.open(settings) as store:
        key = store.put_blob(io.BytesIO(os.urandom(PART_BYTES + MiB)))       # two parts
        with pytest.raises(StorageFull, match="quota is full"):          # the quota, counted in the database
            store.put_blob(io.BytesIO(os.urandom(2 * MiB)))
        assert list(objects(blobs).values()) == [PART_BYTES + MiB] and not partial_writes(store)
        assert store.blob_usage() == PART_BYTES + MiB
        store.delete_blobs([key])
        assert objects(blobs) == {} and store.blob_usage() == 0
        old = store.put_blob(b"never used")
        store.database.connection().execute("UPDATE blobs SET created_at = created_at - 7200")
        store.purge_expired(now=time.time())
        assert objects(blobs) == {}                                       # retention deletes the objects
        assert old not in store.blobs.keys_older_than(-60)
    assert [p for p in settings.data_dir.rglob("*") if p.is_file()] == []
