"""Blobs in S3-compatible storage (AWS S3, MinIO...), through boto3: the blob folder's calls, over a bucket.

Chosen with `PIXMILL_BLOB_URL=s3://bucket/prefix`. boto3 configures itself as usual (the `AWS_*`
variables, profiles, instance roles, and `AWS_ENDPOINT_URL` for another S3-compatible store). An
object is written under its final key at once, since a PUT or a completed multipart upload is
atomic and no reader knows the key before the database records it; a blob whose transaction
rolls back is deleted again (`discard`), and one left by a process killed in between is found by
`keys_older_than` and purged like the folder's orphans. Streams of more than one part go up as
multipart uploads, and a stream refused midway (over a limit, the quota) aborts its upload.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO
from urllib.parse import urlparse

from ..errors import NotFound, PixmillError, StoreUnavailable
from .blobs import Staged, limit_size, new_key, valid_key

__all__ = ["S3Blobs", "PART_BYTES"]

PART_BYTES = 8 * 1024 * 1024     # multipart part size (S3's least is 5 MiB but for the last part)


def _unavailable(method: Callable) -> Callable:
    """Turn botocore's errors (no endpoint, a timeout, a 5xx once retries ran out, access denied) into
    StoreUnavailable, which the dispatcher treats as "try the task again later" and the web as 503."""
    @functools.wraps(method)
    def call(self: S3Blobs, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(self, *args, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"no such blob in s3://{self.bucket}") from None
            raise StoreUnavailable(f"the image storage s3://{self.bucket} refused the request: "
                                   f"{exc.response.get('Error', {}).get('Code', 'error')}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"the image storage s3://{self.bucket} does not answer: "
                                   f"{type(exc).__name__}") from None
    return call


def _client() -> Any:
    import boto3
    from botocore.config import Config

    # Standard retries ride out an endpoint that restarts or throttles for a few seconds.
    config = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                    max_pool_connections=32)
    return boto3.session.Session().client("s3", config=config)


class S3Blobs:
    """Blobs as objects under s3://bucket/prefix/, one per key."""

    def __init__(self, url: str, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise PixmillError(f"the blob URL must look like s3://bucket/prefix, got {url!r}")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = client if client is not None else _client()

    def name(self, key: str) -> str:
        """The object name of a blob (NotFound for a malformed key)."""
        if not valid_key(key):
            raise NotFound(f"no such blob: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    @_unavailable
    def stage(self, source: bytes | BinaryIO, *, max_bytes: int | None,
              check: Callable[[int], None] = lambda size: None) -> Staged:
        """Upload source under a fresh key; check(size_so_far) may raise to stop (and abort the upload)."""
        key = new_key()
        if isinstance(source, (bytes, bytearray, memoryview)):
            limit_size(len(source), max_bytes)
            check(len(source))
            source = io.BytesIO(source)
        first = _read_part(source, max_bytes, check, 0)
        if len(first) < PART_BYTES:
            self.client.put_object(Bucket=self.bucket, Key=self.name(key), Body=first)
            return Staged(key, len(first), None)
        return Staged(key, self._multipart(key, first, source, max_bytes, check), None)

    def publish(self, staged: Staged) -> None:
        """Nothing to do: the object is under its key already."""

    def discard(self, staged: Staged) -> None:
        """Delete what stage wrote (its transaction rolled back, or its result was not recorded)."""
        self.delete([staged.key])

    @_unavailable
    def read(self, key: str) -> bytes:
        """The blob's bytes (NotFound if it is gone)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.name(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise NotFound(f"no such blob: {key}") from None

    def source(self, key: str) -> BinaryIO:
        """The blob as a seekable file, for sending (ranges and all) or archiving."""
        return io.BytesIO(self.read(key))

    @_unavailable
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects of these keys, ignoring those already gone."""
        names = [self.name(k) for k in keys if valid_key(k)]
        for i in range(0, len(names), 1000):     # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(Bucket=self.bucket,
                       Delete={"Objects": [{"Key": n} for n in names[i:i + 1000]], "Quiet": True})

    @_unavailable
    def sweep_temp(self, older_than: float) -> int:
        """Abort multipart uploads left by crashed writers that began more than older_than seconds ago."""
        aborted, limit = 0, time.time() - older_than
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                             Prefix=self._list_prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < limit:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                               UploadId=upload["UploadId"])
                    aborted += 1
        return aborted

    @_unavailable
    def keys_older_than(self, seconds: float) -> list[str]:
        """Keys of the objects written more than the given number of seconds ago."""
        limit, keys = time.time() - seconds, []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._list_prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"].rsplit("/", 1)[-1]
                if valid_key(key) and item["LastModified"].timestamp() < limit:
                    keys.append(key)
        return keys

    @property
    def _list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _multipart(self, key: str, first: bytes, source: BinaryIO, max_bytes: int | None,
                   check: Callable[[int], None]) -> int:
        name = self.name(key)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        parts, size, part = [], 0, first
        try:
            while part:
                number = len(parts) + 1
                answer = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload,
                                    PartNumber=number, Body=part)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                size += len(part)
                part = _read_part(source, max_bytes, check, size)
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except Exception:  # sweep_temp aborts it later
                pass
            raise
        return size


def _read_part(source: BinaryIO, max_bytes: int | None, check: Callable[[int], None], before: int) -> bytes:
    """Up to PART_BYTES of source, checking the limit and the quota as the bytes come."""
    chunks, size = [], 0
    while size < PART_BYTES:
        chunk = source.read(min(1024 * 1024, PART_BYTES - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        limit_size(before + size, max_bytes)
        check(before + size)
    return b"".join(chunks)
