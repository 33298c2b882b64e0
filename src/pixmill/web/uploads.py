"""Read a multipart upload as a stream, validate it at the edge and turn it into new tasks.

Each file goes straight from the request body to the blob store: only its head is held in
memory, to check its magic bytes and its header dimensions before anything is written.
If any file or field is refused, the blobs already written are deleted, so a refused request
leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from werkzeug.http import parse_options_header

from ..config import Settings
from ..destinations import Destinations, WebhookRefused
from ..errors import CorruptImage, ImageTooLarge, InvalidPipeline, InvalidRequest, PixmillError
from ..imaging import codec
from ..imaging.pipeline import Pipeline, parse_pipeline
from ..imaging.process import COLOR_MODES, NEGOTIABLE_FORMATS, OUTPUT_FORMATS, Output
from ..limits import format_bytes
from ..store import NewTask, Store
from ..store.blobs import Prefixed, new_key
from . import multipart
from .jobstart import JobStart

__all__ = ["Upload", "read_upload", "accepted_formats"]

CHUNK = 64 * 1024          # bytes read from the request at a time
HEAD_BYTES = 256 * 1024           # enough for the header of every format we accept, in practice
MAX_FIELD_BYTES = 16 * 1024       # a pipeline is at most 4000 characters
MAX_NAME_CHARS = 255
FIELDS = ("files", "operations", "pipeline", "format", "quality", "color", "negotiate", "webhook_url")
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


@dataclass
class Upload:
    """What a valid upload asked for: one new task per file, and how to encode the results."""

    tasks: list[NewTask]
    output: Output
    blobs: list[str] = field(default_factory=list)
    webhook_url: str | None = None


def read_upload(stream: BinaryIO, content_type: str | None, settings: Settings, store: Store, *,
                strict: bool = True, job: JobStart | None = None, length: int | None = None,
                accept: tuple[str, ...] = ()) -> Upload:
    """Stream a multipart body into the blob store and validate it; on any refusal delete what was written.

    accept holds the formats the client's Accept header names (see accepted_formats); `format=auto`
    uses them only if the form asks for it with `negotiate=true`.

    With job, tasks are handed to it as soon as their file and pipeline are known (see openjobs),
    while the body (of length bytes, if known) has more to come: once all of it has been read, the
    tasks left wait for the end, so that a one-file upload makes its job in one transaction."""
    mimetype, options = parse_options_header(content_type or "")
    boundary = options.get("boundary", "")
    if mimetype != "multipart/form-data" or not boundary:
        raise InvalidRequest("send the images as multipart/form-data, with 'files' repeated and "
                             "'operations' (one per file) or one 'pipeline'")
    upload = Upload(tasks=[], output=Output())
    try:
        _Reader(stream, boundary.encode(), settings, store, upload, strict, job, length, accept).run()
    except BaseException:
        if job is not None:
            job.abandon()
        store.delete_blobs(upload.blobs)
        raise
    return upload


class _Reader:
    """One pass over the multipart events of one request."""

    def __init__(self, stream: BinaryIO, boundary: bytes, settings: Settings, store: Store,
                 upload: Upload, strict: bool, job: JobStart | None, length: int | None,
                 accept: tuple[str, ...]) -> None:
        self.stream, self.settings, self.store, self.upload, self.strict = stream, settings, store, upload, strict
        self.boundary, self.job, self.length, self.accept = boundary, job, length, accept
        self.received = 0
        self.files: list[tuple[str, str, str, bytes | None]] = []   # (name, blob, format, bytes of a small one)
        self.fields: dict[str, list[str]] = {}
        self._shared: Pipeline | None = None                 # the parsed `pipeline` field
        self._pipelines: dict[int, Pipeline] = {}            # parsed `operations`, by file number

    def run(self) -> None:
        events = multipart.events(self._read, self.boundary)
        for event in events:
            if isinstance(event, multipart.Part):
                if event.name == "files":
                    self._take_file(event, _PartReader(events))
                else:
                    self._take_field(event.name, _PartReader(events))
        self._finish()

    def _read(self) -> bytes:
        self._offer(waiting=True)
        chunk = self.stream.read(CHUNK)
        self.received += len(chunk)
        if self.received > self.settings.max_request_bytes:
            raise ImageTooLarge(f"the request is over the {format_bytes(self.settings.max_request_bytes)} "
                                f"per-request limit")
        return chunk

    def _take_field(self, name: str, part: _PartReader) -> None:
        value = part.read(MAX_FIELD_BYTES + 1)
        if len(value) > MAX_FIELD_BYTES or not part.eof:
            raise InvalidRequest(f"form field {name!r} is over the {format_bytes(MAX_FIELD_BYTES)} limit")
        part.drain()
        if name not in FIELDS:
            if self.strict:
                raise InvalidRequest(f"unknown form field {name!r}; the fields are {', '.join(FIELDS)}")
            return
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"form field {name!r} is not UTF-8 text") from None
        self.fields.setdefault(name, []).append(text)
        if name in ("operations", "pipeline"):
            self._offer()
        elif name == "webhook_url":
            self._webhook_url()   # refused before the files that follow are read

    def _take_file(self, event: multipart.Part, part: _PartReader) -> None:
        filename = event.filename or ""
        head = part.read(HEAD_BYTES)
        if not head and part.eof and not filename:
            return                   # an empty file input: browsers send a part with no name and no data
        # A NUL is never part of a real file name, and PostgreSQL's text cannot hold one: U+FFFD marks it.
        name = (filename or f"file{len(self.files) + 1}").replace("\0", "\ufffd")[:MAX_NAME_CHARS]
        if len(self.files) >= self.settings.max_files:
            raise ImageTooLarge(f"{name}: too many files, the limit is {self.settings.max_files} per job")
        if not head:
            raise InvalidRequest(f"{name}: the file is empty")
        info = None
        try:
            fmt = codec.sniff(head)
            info = codec.probe(head, max_pixels=self.settings.max_pixels)
        except CorruptImage as exc:
            if part.exhausted:       # the whole file was in the head: it really is damaged
                raise _named(name, exc) from None
        except PixmillError as exc:
            raise _named(name, exc) from None
        limit = self.settings.max_file_bytes
        if len(head) > limit:
            raise ImageTooLarge(f"{name}: the file is over the {format_bytes(limit)} per-file limit")
        if part.exhausted and len(head) <= self.settings.inline_bytes:
            # A small file whole in its head: its row goes in with its task, in that task's transaction.
            self.files.append((name, new_key(), getattr(info, "format", None) or fmt, head))
            return
        try:
            blob = self.store.put_blob(Prefixed(head, part), max_bytes=limit)
        except ImageTooLarge:
            raise ImageTooLarge(f"{name}: the file is over the {format_bytes(limit)} per-file limit") from None
        self.upload.blobs.append(blob)
        part.drain()
        if info is None:             # the header reaches past the head: read the stored file
            try:
                info = codec.probe(self.store.read_blob(blob), max_pixels=self.settings.max_pixels)
            except PixmillError as exc:
                raise _named(name, exc) from None
        self.files.append((name, blob, getattr(info, "format", None) or fmt, None))
        self._offer()

    def _offer(self, *, waiting: bool = False) -> None:
        """Hand the job the tasks whose file and pipeline are both known, if the form is sound so far: the
        first at once, the others when the reader is about to wait for more of the body (waiting), so that
        small files parsed from one read start in one transaction."""
        if self.job is None or (self.length is not None and self.received >= self.length):
            return  # the whole body is in: what is left of it is parsed at once, and finish() records the rest
        pipelines, operations = self.fields.get("pipeline", []), self.fields.get("operations", [])
        if len(pipelines) > 1 or (pipelines and operations) or (not pipelines and not operations):
            return  # nothing to run yet, or _finish will refuse the form
        ready = len(self.files) if pipelines else min(len(self.files), len(operations))
        if ready <= self.job.started:
            return
        if self.job.started and not waiting:
            return  # more may be parsed from the bytes at hand: hand them over together, before the next read
        try:
            self.job.offer(self._tasks(ready), self._output())
        except PixmillError:
            self.job = None  # _finish says what is wrong, in its order; nothing more starts early

    def _finish(self) -> None:
        if not self.files:
            raise InvalidRequest("no images: send one or more image files in the 'files' field")
        operations = self.fields.get("operations", [])
        pipelines = self.fields.get("pipeline", [])
        if len(pipelines) > 1:
            raise InvalidRequest("'pipeline' is given more than once; give one pipeline for all files, "
                                 "or 'operations' with one per file")
        if pipelines and operations:
            raise InvalidRequest("give either 'pipeline' (one for all files) or 'operations' (one per file), "
                                 "not both")
        if not pipelines and not operations:
            raise InvalidRequest("no operation: give 'operations' (one per file, in the same order) "
                                 "or one 'pipeline' for all files")
        if operations and len(operations) != len(self.files):
            raise InvalidRequest(f"{_count(len(self.files), 'file')} but {_count(len(operations), 'operation')}: "
                                 f"give one operation per file, in the same order, or one 'pipeline' for all files")
        self.upload.tasks = self._tasks(len(self.files))
        self.upload.output = self._output()
        self.upload.webhook_url = self._webhook_url()

    def _tasks(self, count: int) -> list[NewTask]:
        """The first count files as tasks, each with its pipeline (parsed once)."""
        pipelines, operations = self.fields.get("pipeline", []), self.fields.get("operations", [])
        if pipelines and self._shared is None:
            self._shared = _parse("pipeline", pipelines[0])
        tasks = []
        for n, (name, blob, fmt, data) in enumerate(self.files[:count]):
            if not pipelines and n not in self._pipelines:
                self._pipelines[n] = _parse(name, operations[n])
            pipeline = self._shared if pipelines else self._pipelines[n]
            tasks.append(NewTask(name=name, pipeline=pipeline, blob=blob, source_format=fmt, data=data))
        return tasks

    def _output(self) -> Output:
        fmt = self._single("format") or "auto"
        quality_text = self._single("quality")
        if fmt.strip().lower() not in OUTPUT_FORMATS:
            raise InvalidRequest(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt[:40]!r}")
        quality = 90
        if quality_text not in (None, ""):
            try:
                quality = int(quality_text)
            except ValueError:
                quality = 0
            if not 1 <= quality <= 100:
                raise InvalidRequest(f"quality must be an integer in 1..100, got {quality_text[:40]!r}")
        mode = (self._single("color") or "srgb").strip().lower()
        if mode not in COLOR_MODES:
            raise InvalidRequest(f"color must be one of {', '.join(COLOR_MODES)}, got {mode[:40]!r}")
        negotiate = (self._single("negotiate") or "").strip().lower()
        if negotiate not in TRUE + FALSE:
            raise InvalidRequest(f"negotiate must be true or false, got {negotiate[:40]!r}")
        fmt = fmt.strip().lower()
        accept = self.accept if negotiate in TRUE and fmt == "auto" else ()
        return Output(format=fmt, quality=quality, color=mode, accept=accept)

    def _webhook_url(self) -> str | None:
        url = (self._single("webhook_url") or "").strip()
        if not url:
            return None
        if not self.settings.webhook_secret:
            raise WebhookRefused("webhooks are off on this server: it has no PIXMILL_WEBHOOK_SECRET to sign them")
        return Destinations.allowing(self.settings.webhook_allow).check_url(url)

    def _single(self, name: str) -> str | None:
        values = self.fields.get(name, [])
        if len(values) > 1:
            raise InvalidRequest(f"form field {name!r} is given more than once")
        return values[0] if values else None


def accepted_formats(accept: Iterable[tuple[str, float]]) -> tuple[str, ...]:
    """The negotiable formats (AVIF, WebP) that an Accept header's (media type, q) pairs name, best
    first: by q, then in pixmill's order.  Wildcards name none, since every client sends one."""
    named: dict[str, float] = {}
    for value, quality in accept:
        named[value.lower()] = quality
    ranked = [(-named.get(codec.MEDIA_TYPES[fmt], 0), n, fmt) for n, fmt in enumerate(NEGOTIABLE_FORMATS)]
    return tuple(fmt for q, _, fmt in sorted(ranked) if q < 0)


def _parse(where: str, spec: str) -> Pipeline:
    try:
        return parse_pipeline(spec)
    except InvalidPipeline as exc:
        raise InvalidPipeline(f"{where}: {exc.message}") from None


def _named(name: str, exc: PixmillError) -> PixmillError:
    return type(exc)(f"{name}: {exc.message}")


class _PartReader:
    """The data of one multipart part, read on demand from the shared event stream."""

    def __init__(self, events: Iterator[object]) -> None:
        self.events = events
        self.buffer = bytearray()
        self.eof = False

    def _fill(self) -> None:
        event = next(self.events, None)
        if not isinstance(event, multipart.Data):
            raise InvalidRequest("the multipart body ended in the middle of a part")
        self.buffer += event.data
        self.eof = not event.more_data

    @property
    def exhausted(self) -> bool:
        """Whether every byte of the part has been read (eof alone may leave data in the buffer)."""
        return self.eof and not self.buffer

    def read(self, size: int = -1) -> bytes:
        """Up to size bytes (all that is left if size < 0); b'' at the end of the part."""
        while not self.eof and (size < 0 or len(self.buffer) < size):
            self._fill()
        size = len(self.buffer) if size < 0 else size
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def drain(self) -> None:
        """Skip whatever is left of the part."""
        while not self.eof:
            self._fill()
        self.buffer.clear()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
