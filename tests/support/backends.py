"""Narrowing a both_backends test to one store backend, and looking at blobs on either one."""

from __future__ import annotations

import pytest

from pixmill.store import Store
from pixmill.store.s3blobs import S3Blobs

__all__ = ["postgres_only", "sqlite_only", "blob_keys", "partial_writes"]

# A test of SQLite itself (its file, WAL, migrations) or of PostgreSQL itself.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                                        indirect=True)


def blob_keys(store: Store) -> set[str]:
    """The keys of every blob stored: files of the folder or objects of the bucket, and the small blobs whose
    bytes their rows hold (PIXMILL_INLINE_BYTES)."""
    inline = {r[0] for r in store.database.connection().execute("SELECT key FROM blobs WHERE data IS NOT NULL")}
    return set(store.blobs.keys_older_than(-86400.0)) | inline


def partial_writes(store: Store) -> list[str]:
    """What half-written blobs there are: the folder's temp files, or the bucket's open multipart uploads."""
    blobs = store.blobs
    if isinstance(blobs, S3Blobs):
        answer = blobs.client.list_multipart_uploads(Bucket=blobs.bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
    return [p.name for p in blobs.tmp.iterdir()]
