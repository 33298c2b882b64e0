"""A zip of a job's results, streamed as it is written."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import PixmillError
from ..imaging.codec import EXTENSIONS
from ..imaging.pipeline import parse_pipeline
from ..store import JobView, Store
from .security import download_name

__all__ = ["archive_names", "stream_archive", "pipeline_slug"]

CHUNK = 256 * 1024


class _Sink:
    """A write-only file that collects what zipfile writes, to be handed out in pieces."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def archive_names(job: JobView) -> list[tuple[str, str]]:
    """(name in the zip, result blob key) for each finished task; names are unique and safe."""
    names = []
    for task in job.tasks:
        if task.result_blob and task.result_format:
            name = download_name(task.name, EXTENSIONS[task.result_format], pipeline_slug(task.pipeline))
            names.append((f"{task.n + 1:03d}-{name}", task.result_blob))
    return names


def _failures(job: JobView) -> str:
    lines = [f"{t.n + 1:03d} {t.name!r}: {t.error or t.state}" for t in job.tasks if not t.result_blob]
    return "These images have no result:\n" + "\n".join(lines) + "\n" if lines else ""


def stream_archive(store: Store, job: JobView) -> Iterator[bytes]:
    """Yield the bytes of a zip holding every result of the job, and a note of those that failed."""
    sink = _Sink()
    # Deflate rather than store: a streamed zip needs data descriptors, which every reader
    # supports for deflated members; level 1 costs little on images that are already compressed.
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for arcname, key in archive_names(job):
            blob = store.blob_source(key)
            with (open(blob, "rb") if isinstance(blob, Path) else blob) as source, zf.open(arcname, "w") as member:
                while chunk := source.read(CHUNK):
                    member.write(chunk)
                    if sum(map(len, sink.parts)) >= CHUNK:
                        yield sink.take()
            yield sink.take()
        failures = _failures(job)
        if failures:
            zf.writestr("FAILED.txt", failures)
    yield sink.take()


def pipeline_slug(pipeline: str) -> str:
    """The operations of a stored pipeline text joined by '+', for file names."""
    try:
        return parse_pipeline(pipeline).slug()[:60]
    except PixmillError:
        return "result"
