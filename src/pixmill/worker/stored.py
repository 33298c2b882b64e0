"""The work as a pool worker runs it: read the input blob, process it, write the result blob.

The dispatcher hands a worker a task's input key and the blob location, never the bytes, and gets
back the staged result's key and a few numbers: the images go between the workers and the blob
backend (the folder, or S3 from any host), and the dispatcher moves only ids and metadata. Small
blobs (PIXMILL_INLINE_BYTES) are the exception: they live in the database, so their bytes travel
with the task and its result, costing less than a file's fsync or an S3 request. The
result is published only when the dispatcher records it under the claim it ran under; if it is not
recorded, the dispatcher discards it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import PixmillError, StoreUnavailable
from ..imaging.pipeline import Pipeline
from ..imaging.process import Output, Result, process
from ..store.blobs import open_blobs
from ..store.taskqueue import StoredResult

__all__ = ["StoredResult", "run_stored", "run_many"]

_backends: dict[str, Any] = {}    # one blob backend per location in each worker process (boto3 clients are costly)


def run_stored(location: str, input_key: str, pipeline: Pipeline, output: Output, *, max_pixels: int,
               task: Callable[..., Result] = process, data: bytes | None = None,
               inline_bytes: int = 0) -> StoredResult | Result:
    """Run task on the input blob (its bytes given as data when its row holds them) and stage its result in
    the same backend; a result of at most inline_bytes comes back whole, for the store to keep in its row."""
    blobs = _backends.get(location)
    if blobs is None:
        blobs = _backends[location] = open_blobs(location)
    result = task(blobs.read(input_key) if data is None else data, pipeline, output, max_pixels=max_pixels)
    if len(result.data) <= inline_bytes:
        return result
    try:
        staged = blobs.stage(result.data, max_bytes=None)
    except StoreUnavailable:
        raise                                    # for now only: the dispatcher puts the task back
    except PixmillError as exc:                  # the disk is full: the task fails, saying so
        raise PixmillError(f"could not store the result: {exc.message}") from None
    return StoredResult(staged, result.format, result.width, result.height, tuple(result.notes))


def run_many(location: str, tasks: list[tuple[str, Pipeline, Output, bytes | None]], *, max_pixels: int,
             task: Callable[..., Result] = process, inline_bytes: int = 0) -> list[StoredResult | Result | Exception]:
    """run_stored for several tasks (input key, pipeline, output, inline input) handed over in one message:
    each task's result, or the error it ended with, in order (one bad image never fails the others)."""
    outcomes: list[StoredResult | Result | Exception] = []
    for key, pipeline, output, data in tasks:
        try:
            outcomes.append(run_stored(location, key, pipeline, output, max_pixels=max_pixels, task=task,
                                       data=data, inline_bytes=inline_bytes))
        except Exception as exc:  # noqa: BLE001 - returned, and raised for its own task by the dispatcher
            outcomes.append(exc)
    return outcomes
