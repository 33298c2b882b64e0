"""Blob bookkeeping: a row in the database beside each file of the blob folder, and the quota on both.

The folder holds the bytes; the `blobs` table says which files exist as far as jobs are concerned,
and its `usage` total is what the quota applies to. A file is renamed into place inside the
transaction that records its row, so a crash leaves at worst a file no row knows of, which the
orphan sweep (Jobs.purge_expired) deletes later. A blob of at most PIXMILL_INLINE_BYTES has no file:
its bytes are in its row (`data`), written in the same transaction, where a few KB cost less than a
file with its fsync (or an S3 request).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import BinaryIO

from ..config import Settings
from ..errors import StorageFull
from ..limits import format_bytes
from .blobs import BlobFolder, Prefixed, limit_size, new_key, read_up_to
from .database import Database

__all__ = ["BlobStore"]


class BlobStore:
    """Uploaded blobs under the quota: storing, deleting unreferenced ones, and the bytes in use."""

    def __init__(self, database: Database, folder: BlobFolder, settings: Settings) -> None:
        self.database = database
        self.folder = folder
        self.settings = settings

    def put(self, source: bytes | BinaryIO, *, max_bytes: int | None = None, enforce_quota: bool = True) -> str:
        """Store bytes or a stream as a new blob and return its key; ImageTooLarge or StorageFull if refused."""
        quota = self.settings.quota_bytes if enforce_quota else None
        used = self.usage() if quota is not None else 0

        def check(size: int) -> None:
            if quota is not None and used + size > quota:
                raise self._full(used)

        small = self.settings.inline_bytes
        if small > 0:   # a small blob goes into its row: no file, no fsync, no object request
            if isinstance(source, (bytes, bytearray, memoryview)):
                data = bytes(source) if len(source) <= small else None
            else:
                head = read_up_to(source, small + 1)
                data, source = (head, None) if len(head) <= small else (None, Prefixed(head, source))
            if data is not None:
                limit_size(len(data), max_bytes)
                key = new_key()
                with self.database.write() as db:
                    used = db.execute(f"SELECT bytes FROM usage{self.database.lock_rows}").fetchone()[0]
                    check(len(data))
                    db.execute("INSERT INTO blobs (key, size, created_at, data) VALUES (?, ?, ?, ?)",
                               (key, len(data), time.time(), data))
                return key
        staged = self.folder.stage(source, max_bytes=max_bytes, check=check)
        try:
            with self.database.write() as db:
                used = db.execute(f"SELECT bytes FROM usage{self.database.lock_rows}").fetchone()[0]
                check(staged.size)
                db.execute("INSERT INTO blobs (key, size, created_at) VALUES (?, ?, ?)",
                           (staged.key, staged.size, time.time()))
                self.folder.publish(staged)
        except BaseException:
            self.folder.discard(staged)  # the transaction rolled back, so nothing refers to it
            raise
        return staged.key

    def delete_unreferenced(self, keys: Iterable[str]) -> None:
        """Delete blobs that no job refers to yet, such as the uploads of a refused request."""
        keys = list(keys)
        with self.database.write() as db:
            db.executemany("DELETE FROM blobs WHERE key = ? AND NOT EXISTS "
                           "(SELECT 1 FROM tasks WHERE input_blob = ? OR result_blob = ?)",
                           [(k, k, k) for k in keys])
        self.folder.delete(k for k in keys if not self.known(k))

    def inline(self, key: str) -> bytes | None:
        """The bytes of a blob kept in its row, or None (a file or object, or no such blob)."""
        row = self.database.connection().execute("SELECT data FROM blobs WHERE key = ?", (key,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def usage(self) -> int:
        """Bytes of blobs stored now, the figure the quota applies to."""
        return self.database.connection().execute("SELECT bytes FROM usage").fetchone()[0]

    def known(self, key: str) -> bool:
        """Whether a row records this blob (a file without one is an orphan)."""
        return self.database.connection().execute("SELECT 1 FROM blobs WHERE key = ?", (key,)).fetchone() is not None

    def _full(self, used: int) -> StorageFull:
        return storage_full(used, self.settings.quota_bytes)


def storage_full(used: int, quota: int) -> StorageFull:
    """The refusal of a blob that the quota has no room for."""
    return StorageFull(f"the storage quota is full ({format_bytes(used)} of {format_bytes(quota)} used); "
                       "new jobs are refused until old ones expire or are deleted")
