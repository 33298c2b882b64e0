"""The blob folder: atomic writes, size limits, keys that cannot name a path, sweeping, a full disk."""

from __future__ import annotations

import errno
import io
import os
import time
from pathlib import Path

import pytest

from pixmill.errors import ImageTooLarge, NotFound, StorageFull
from pixmill.limits import format_bytes
from pixmill.store.blobs import BlobFolder, new_key, valid_key

DATA = bytes(range(256)) * 16


@pytest.fixture
def blobs(tmp_path: Path) -> BlobFolder:
    return BlobFolder(tmp_path / "blobs")


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def put(blobs: BlobFolder, data: bytes) -> str:
    tmp, _ = blobs.write_temp(data, max_bytes=None)
    key = new_key()
    blobs.commit(tmp, key)
    return key


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_new_keys_are_valid_and_distinct():
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000 and all(valid_key(k) for k in keys)


@pytest.mark.parametrize("source", [DATA, bytearray(DATA), memoryview(DATA), io.BytesIO(DATA)],
                         ids=["bytes", "bytearray", "memoryview", "stream"])
def test_a_blob_appears_whole_at_commit_and_its_temp_file_is_gone(blobs: BlobFolder, source):
    tmp, size = blobs.write_temp(source, max_bytes=len(DATA))
    key = new_key()
    assert size == len(DATA) and tmp.parent == blobs.tmp and tmp.read_bytes() == DATA
    assert not blobs.path(key).exists()                   # nothing under the key until the commit
    with pytest.raises(NotFound):
        blobs.read(key)
    blobs.commit(tmp, key)
    assert blobs.read(key) == DATA and blobs.path(key).read_bytes() == DATA
    assert not tmp.exists() and list(blobs.tmp.iterdir()) == []
    assert blobs.path(key).parent.parent == blobs.root


def test_a_stream_longer_than_one_chunk_is_copied_whole_and_checked_as_it_grows(blobs: BlobFolder):
    data = os.urandom(2 * 1024 * 1024 + 12345)
    seen: list[int] = []
    tmp, size = blobs.write_temp(io.BytesIO(data), max_bytes=None, check=seen.append)
    assert size == len(data) and tmp.read_bytes() == data
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == len(data)


@pytest.mark.parametrize("stream", [False, True], ids=["bytes", "stream"])
def test_over_max_bytes_is_refused_naming_the_limit_and_leaves_no_temp_file(blobs: BlobFolder, stream):
    data = b"x" * 101
    with pytest.raises(ImageTooLarge) as caught:
        blobs.write_temp(io.BytesIO(data) if stream else data, max_bytes=100)
    assert format_bytes(100) in caught.value.message
    assert files_in(blobs.root) == []
    tmp, size = blobs.write_temp(data[:100], max_bytes=100)    # exactly the limit is allowed
    assert size == 100 and tmp.exists()


def test_a_check_that_raises_stops_the_copy_and_leaves_no_temp_file(blobs: BlobFolder):
    def quota(size: int) -> None:
        if size > 1024 * 1024:
            raise StorageFull("over the quota")

    with pytest.raises(StorageFull, match="quota"):
        blobs.write_temp(io.BytesIO(os.urandom(3 * 1024 * 1024)), max_bytes=None, check=quota)
    assert files_in(blobs.root) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("stream", [False, True], ids=["bytes", "stream"])
def test_a_full_disk_becomes_storage_full_and_leaves_no_temp_file(blobs: BlobFolder, monkeypatch, code, stream):
    def full(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFull) as caught:
        blobs.write_temp(io.BytesIO(DATA) if stream else DATA, max_bytes=None)
    assert caught.value.status == 507 and "full" in caught.value.message
    assert files_in(blobs.root) == []


def test_another_os_error_is_raised_as_it_is_and_leaves_no_temp_file(blobs: BlobFolder, monkeypatch):
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError) as caught:
        blobs.write_temp(DATA, max_bytes=None)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, StorageFull)
    assert files_in(blobs.root) == []


def test_an_interrupted_stream_leaves_no_temp_file(blobs: BlobFolder):
    class Dropped(io.RawIOBase):
        def readinto(self, buffer) -> int:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        blobs.write_temp(Dropped(), max_bytes=None)
    assert files_in(blobs.root) == []


MALFORMED = ["", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 32 + "\n", "\n" + "0" * 32, "../" + "0" * 29,
             "../../etc/passwd", "/etc/passwd", "00/" + "0" * 29, "0" * 30 + "/.", "..", None, b"0" * 32, 12]


@pytest.mark.parametrize("key", MALFORMED, ids=repr)
def test_a_malformed_key_is_not_found_and_never_a_path(blobs: BlobFolder, key):
    assert not valid_key(key)
    with pytest.raises(NotFound):
        blobs.path(key)
    with pytest.raises(NotFound):
        blobs.read(key)


def test_traversal_keys_cannot_read_or_delete_files_outside_the_folder(blobs: BlobFolder, tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"keep me")
    tmp, _ = blobs.write_temp(b"temp", max_bytes=None)
    keys = ["../secret", "../../secret", str(secret), "tmp/" + tmp.name, "../" + tmp.name]
    blobs.delete(keys)
    for key in keys:
        with pytest.raises(NotFound):
            blobs.read(key)
    assert secret.read_bytes() == b"keep me" and tmp.exists()


def test_every_valid_key_is_a_file_two_levels_under_the_root(blobs: BlobFolder):
    for _ in range(100):
        key = new_key()
        path = blobs.path(key)
        assert path.resolve().parent.parent == blobs.root.resolve() and path.name == key


def test_delete_removes_the_files_and_ignores_missing_and_malformed_keys(blobs: BlobFolder):
    kept, gone = put(blobs, b"kept"), put(blobs, b"gone")
    blobs.delete([gone, gone, new_key(), "nope", None])
    assert blobs.read(kept) == b"kept"
    with pytest.raises(NotFound):
        blobs.read(gone)
    blobs.delete(iter([]))


def test_sweep_temp_removes_only_temp_files_older_than_the_age(blobs: BlobFolder):
    old, _ = blobs.write_temp(b"old", max_bytes=None)
    fresh, _ = blobs.write_temp(b"fresh", max_bytes=None)
    other = blobs.tmp / "notes.txt"
    other.write_text("not a temp blob")
    committed = put(blobs, b"blob")
    for path in (old, other, blobs.path(committed)):
        age(path, 7200)
    assert blobs.sweep_temp(3600) == 1
    assert not old.exists() and fresh.exists() and other.exists() and blobs.read(committed) == b"blob"
    assert blobs.sweep_temp(3600) == 0


def test_keys_older_than_lists_old_committed_blobs_only(blobs: BlobFolder):
    old, fresh = put(blobs, b"old"), put(blobs, b"fresh")
    stray = blobs.path(old).parent / "not-a-key"
    stray.write_text("x")
    temp, _ = blobs.write_temp(b"temp", max_bytes=None)
    (blobs.root / "loose-file").write_text("x")
    for path in (blobs.path(old), stray, temp, blobs.root / "loose-file"):
        age(path, 7200)
    assert blobs.keys_older_than(3600) == [old]
    assert sorted(blobs.keys_older_than(-60)) == sorted([old, fresh])


def test_a_new_folder_is_created_with_its_temp_folder_and_reports_free_space(tmp_path: Path):
    blobs = BlobFolder(tmp_path / "a" / "b")
    assert blobs.tmp.is_dir() and blobs.keys_older_than(0) == []
    assert isinstance(blobs.free_bytes(), int) and blobs.free_bytes() > 0
    BlobFolder(tmp_path / "a" / "b")                      # opening it again is fine
