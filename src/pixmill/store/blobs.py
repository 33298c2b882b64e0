"""The blob folder: immutable files named by random keys, written by temp file, fsync and rename.

Its calls are those of every blob backend (S3's in s3blobs.py): `stage` writes new bytes under a
fresh key, `publish` makes them readable once their row is in the transaction, `discard` removes
them if the transaction rolls back; then `read`, `source`, `delete` and the purge's
`keys_older_than` and `sweep_temp`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ..errors import ImageTooLarge, NotFound, StorageFull
from ..limits import format_bytes

__all__ = ["BlobFolder", "Staged", "Prefixed", "new_key", "valid_key", "limit_size", "open_blobs", "read_up_to"]

_KEY = re.compile(r"[0-9a-f]{32}\Z")
CHUNK = 1024 * 1024


def new_key() -> str:
    """A fresh random blob key: 128 bits as 32 hex digits."""
    return secrets.token_hex(16)


def valid_key(key: str) -> bool:
    """Whether key has the shape new_key gives (so it can never name a path outside the folder)."""
    return isinstance(key, str) and bool(_KEY.match(key))


def open_blobs(location: str) -> BlobFolder | Any:
    """The blob backend at a location: s3://bucket/prefix (S3Blobs, boto3 imported only then) or a folder."""
    if location.startswith("s3://"):
        from .s3blobs import S3Blobs

        return S3Blobs(location)
    return BlobFolder(Path(location))


class Staged(NamedTuple):
    """New bytes written under a fresh key, not yet published: its key, its size, and the folder's temp
    file until publish (None where the bytes already sit under the key, as in S3)."""

    key: str
    size: int
    tmp: Path | None


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """The stream's first `size` bytes (fewer only at its end), however little each read returns."""
    parts, got = [], 0
    while got < size and (chunk := stream.read(size - got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class Prefixed:
    """A file-like reader giving head first, then the rest of a stream."""

    def __init__(self, head: bytes, stream: BinaryIO | Any) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        """Up to size bytes; b'' at the end."""
        if self.head:
            if size < 0:
                out, self.head = self.head + self.stream.read(), b""
                return out
            out, self.head = self.head[:size], self.head[size:]
            return out
        return self.stream.read(CHUNK if size < 0 else size)


class BlobFolder:
    """Files under root/ab/abcd...; temporary files under root/tmp until they are complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the blob with this key lives (NotFound for a malformed key)."""
        if not valid_key(key):
            raise NotFound(f"no such blob: {key!r}")
        return self.root / key[:2] / key

    def write_temp(self, source: bytes | BinaryIO, *, max_bytes: int | None,
                   check: Callable[[int], None] = lambda size: None) -> tuple[Path, int]:
        """Copy source to a fsynced temp file; check(size_so_far) may raise to stop. Returns (path, size)."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            limit_size(len(source), max_bytes)
            check(len(source))
        tmp = self.tmp / f"{new_key()}.part"
        size = 0
        try:
            with open(tmp, "xb") as f:
                if isinstance(source, (bytes, bytearray, memoryview)):
                    f.write(source)
                    size = len(source)
                else:
                    while chunk := source.read(CHUNK):
                        size += len(chunk)
                        limit_size(size, max_bytes)
                        check(size)
                        f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the disk that holds the data dir is full") from None
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size

    def stage(self, source: bytes | BinaryIO, *, max_bytes: int | None,
              check: Callable[[int], None] = lambda size: None) -> Staged:
        """Write source to a fsynced temp file for a fresh key (see write_temp)."""
        tmp, size = self.write_temp(source, max_bytes=max_bytes, check=check)
        return Staged(new_key(), size, tmp)

    def publish(self, staged: Staged) -> None:
        """Move a staged blob into place under its key."""
        assert staged.tmp is not None
        self.commit(staged.tmp, staged.key)

    def discard(self, staged: Staged) -> None:
        """Remove what stage wrote, published or not (its transaction rolled back, or it was not recorded)."""
        if staged.tmp is not None:
            staged.tmp.unlink(missing_ok=True)
        self.delete([staged.key])

    def source(self, key: str) -> Path:
        """The file of a blob, for sending or archiving (NotFound for a malformed key)."""
        return self.path(key)

    def commit(self, tmp: Path, key: str) -> None:
        """Move a complete (fsynced) temp file into place under key."""
        final = self.path(key)
        final.parent.mkdir(exist_ok=True)
        # The bytes are on disk before the name appears, so no one ever sees a partial blob. The
        # directory is not fsynced per blob: the rename reaches the disk with the file system's
        # journal, as soon as anything is fsynced, like the database's own commits (synchronous=NORMAL).
        os.replace(tmp, final)

    def read(self, key: str) -> bytes:
        """The blob's bytes (NotFound if it is gone)."""
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no such blob: {key}") from None

    def delete(self, keys: Iterable[str]) -> None:
        """Remove the files of these keys, ignoring those already gone."""
        for key in keys:
            if valid_key(key):
                self.path(key).unlink(missing_ok=True)

    def sweep_temp(self, older_than: float) -> int:
        """Remove temp files left by crashed writers that are older than the given age in seconds."""
        removed, limit = 0, time.time() - older_than
        for tmp in self.tmp.glob("*.part"):
            try:
                if tmp.stat().st_mtime < limit:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def keys_older_than(self, seconds: float) -> list[str]:
        """Keys of the blob files written more than the given number of seconds ago."""
        limit, keys = time.time() - seconds, []
        for folder in self.root.iterdir():
            if folder == self.tmp or not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                try:
                    if valid_key(entry.name) and entry.stat().st_mtime < limit:
                        keys.append(entry.name)
                except FileNotFoundError:
                    pass
        return keys

    def free_bytes(self) -> int:
        """Free space on the file system that holds the folder."""
        return shutil.disk_usage(self.root).free


def limit_size(size: int, max_bytes: int | None) -> None:
    """ImageTooLarge if size is over max_bytes (None: no limit)."""
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLarge(f"the file is over the {format_bytes(max_bytes)} limit")
