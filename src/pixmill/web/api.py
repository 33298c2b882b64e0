"""The JSON API under /api/v1: the catalogue, jobs, their events, results and archives."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterator

from apiflask import APIBlueprint
from flask import Flask, Response, current_app, request, send_file, stream_with_context, url_for

from ..config import Settings
from ..errors import ImageTooLarge, InvalidRequest, JobNotFinished, NotFound, ServerBusy, TooManyJobs
from ..imaging.codec import EXTENSIONS, MEDIA_TYPES
from ..imaging.ops import catalogue
from ..limits import format_bytes
from ..store import ENDED, JOB_ENDED, JobView, NewWebhook, Store, TaskState, TaskView
from .archive import pipeline_slug, stream_archive
from .events import job_events as event_stream
from .jobstart import JobStart
from .present import job_json
from .schemas import DownloadQuery, JobListOut, JobListQuery, JobOut, OperationOut
from .security import authenticate, current_owner, download_name
from .services import services
from .uploads import Upload, accepted_formats, read_upload
from .waiting import requested_wait

__all__ = ["bp", "init_app", "receive_upload", "result_response"]

SSE_MIN_GAP = 0.05   # seconds: a stream looks at its job at most this often, however busy the store

bp = APIBlueprint("api", __name__, url_prefix="/api/v1",
                  tag={"name": "jobs", "description": "Upload images, follow their progress, fetch results"})

ERRORS = {400: "Bad request: malformed form, pipeline or parameter, or a webhook_url refused",
          401: "A missing or wrong API token", 404: "No such job or task (or not yours)",
          413: "Over a limit: files per job, bytes per file or request, or pixels",
          415: "Not a supported image format", 422: "A damaged image, or a task that failed",
          429: "Back-pressure: the queue, or this token's unfinished jobs, over their limit (Retry-After)",
          507: "The storage quota is used up"}


# Before OpenAPI 3.2, the schema of an event stream describes each event (as EventSource sees it).
SSE_EVENT = {"type": "object", "required": ["event", "data"],
             "properties": {"event": {"type": "string", "enum": ["progress", "end", "gone"]},
                            "data": {"type": "string", "description": "JSON: the job (progress); its id, state "
                                                                      "and counts (end); its id and a message (gone)"}}}


class _Slot:
    """An event stream that gives its slot back when the server closes it, even if never started."""

    def __init__(self, stream: Iterator[str], release: Callable[[], None]) -> None:
        self.stream, self.release, self.released = stream, release, False

    def __iter__(self) -> _Slot:
        return self

    def __next__(self) -> str:
        return next(self.stream)

    def close(self) -> None:
        """Close the stream and free the slot (once)."""
        try:
            getattr(self.stream, "close", lambda: None)()
        finally:
            if not self.released:
                self.released = True
                self.release()


def init_app(app: Flask) -> None:
    """Register the API blueprint."""
    app.register_blueprint(bp)


@bp.before_request
def _authenticate() -> None:
    authenticate(services().settings.api_tokens)


def receive_upload(*, strict: bool) -> tuple[JobView, Upload]:
    """Validate and store the request's upload, then record its job in one transaction."""
    svc = services()
    limit = svc.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ImageTooLarge(f"the request is {format_bytes(request.content_length)}, over the "
                            f"{format_bytes(limit)} per-request limit")
    owner = current_owner()
    _refuse_when_backlogged(svc.settings, svc.store, owner)
    start = JobStart(svc.store, owner=owner)
    upload = read_upload(request.stream, request.content_type, svc.settings, svc.store, strict=strict, job=start,
                         length=request.content_length, accept=accepted_formats(request.accept_mimetypes))
    webhook = NewWebhook(upload.webhook_url, request.url_root) if upload.webhook_url else None
    try:
        job = start.finish(upload.tasks, upload.output, webhook)
    except BaseException:
        start.abandon()
        svc.store.delete_blobs(upload.blobs)
        raise
    return job, upload


def _refuse_when_backlogged(settings: Settings, store: Store, owner: str | None) -> None:
    """TooManyJobs (429, Retry-After) before anything of the upload is read or stored, when the queue
    or this token's unfinished jobs are over their limit."""
    queued, unfinished = store.backlog(owner=owner)
    if queued > settings.max_queued_tasks:
        raise TooManyJobs(f"the queue holds {queued} tasks, over its limit of {settings.max_queued_tasks}; "
                          "try again shortly")
    if owner is not None and unfinished >= settings.max_jobs_per_token:
        raise TooManyJobs(f"this token has {unfinished} unfinished jobs, its limit; try again once one has ended")


def _task(job_id: str, n: int) -> tuple[JobView, TaskView]:
    job = services().store.get_job(job_id, owner=current_owner())
    if not 0 <= n < len(job.tasks):
        raise NotFound(f"job {job_id} has no image number {n}; it has {len(job.tasks)} (0..{len(job.tasks) - 1})")
    return job, job.tasks[n]


def _long_poll(check: Callable[[], bool]) -> float:
    """Wait, up to the client's `Prefer: wait=N`, until check() is true; return the seconds applied (0: no wait)."""
    seconds = requested_wait(request.headers)
    if not seconds:
        return 0.0
    svc = services()
    if not svc.event_slots.acquire(blocking=False):
        return 0.0  # every slot is taken: answer now (a preference may be ignored)
    try:
        svc.waits.until(check, seconds)
        return seconds
    finally:
        svc.event_slots.release()


def _applied(seconds: float) -> dict[str, str]:
    """The headers that say a wait was applied (none if it was not)."""
    return {"Preference-Applied": f"wait={seconds:g}"} if seconds else {}


def result_response(job_id: str, n: int, download: bool = False) -> Response:
    """A result: 202 until it is ready, the image when done, 422 with the reason if it failed.

    With `Prefer: wait=N` a task that has not ended is waited for, up to N seconds."""
    _, task = _task(job_id, n)
    waited = 0.0
    if task.state not in ENDED:
        store, owner = services().store, current_owner()
        waited = _long_poll(lambda: store.unfinished(job_id, n=n, owner=owner) == 0)
        if waited:
            _, task = _task(job_id, n)
    response = _task_response(job_id, task, download)
    response.headers.update(_applied(waited))
    return response


def _task_response(job_id: str, task: TaskView, download: bool) -> Response:
    state = task.state.value
    if task.state is TaskState.DONE and task.result_blob and task.result_format:
        name = download_name(task.name, EXTENSIONS[task.result_format], pipeline_slug(task.pipeline))
        return _send_blob(task.result_blob, task.result_format, name, download)
    if task.state is TaskState.FAILED:
        body = {"error": "task_failed", "message": f"{task.name}: {task.error or 'processing failed'}",
                "state": state, "attempts": task.attempts}
        return _json(body, 422)
    if task.state is TaskState.CANCELLED:
        raise NotFound(f"{task.name}: this image was cancelled and has no result")
    body = {"state": state, "message": f"{task.name} is {state}; try again shortly",
            "status_url": url_for("api.get_job", job_id=job_id, _external=True)}
    response = _json(body, 202)
    response.headers["Retry-After"] = "1"
    return response


def _send_blob(key: str, fmt: str, name: str, download: bool) -> Response:
    response = send_file(services().store.blob_source(key), mimetype=MEDIA_TYPES[fmt], as_attachment=download,
                         download_name=name, etag=key, conditional=True, max_age=3600)
    response.headers["Cache-Control"] = "private, max-age=3600"
    if not download:   # inline, but still with a safe name for "save as"
        response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    return response


def _json(body: dict, status: int) -> Response:
    response = current_app.json.response(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/operations")
@bp.output(OperationOut(many=True))
@bp.doc(tags=["operations"], summary="The catalogue of operations and their parameters",
        responses={401: ERRORS[401]})
def list_operations() -> list[dict]:
    """Every operation with its declared parameters: types, defaults and ranges."""
    return catalogue()


@bp.post("/jobs")
@bp.output(JobOut, status_code=202, description="The job was accepted and queued")
@bp.doc(summary="Upload images with an operation or pipeline each",
        responses={k: ERRORS[k] for k in (400, 401, 413, 415, 422, 429, 507)})
def create_job() -> tuple[dict, int, dict[str, str]]:
    """Multipart: `files` repeated, with `operations` (one per file) or one `pipeline`; `format`, `quality`."""
    job, _ = receive_upload(strict=True)
    body = job_json(job)
    return body, 202, {"Location": body["status_url"]}


@bp.get("/jobs")
@bp.input(JobListQuery, location="query", arg_name="query")
@bp.output(JobListOut)
@bp.doc(summary="The caller's jobs, newest first, a page at a time",
        responses={400: ERRORS[400], 401: ERRORS[401],
                   404: "Listing is off: the service has no tokens and PIXMILL_LIST_JOBS is not 1"})
def list_jobs(query: dict) -> dict:
    """With tokens, the jobs of the caller's token; without, every job, only if PIXMILL_LIST_JOBS=1 (job ids
    are the only secret then). `next` is the cursor of the following page, null after the last."""
    svc = services()
    if not svc.settings.api_tokens and not svc.settings.list_jobs:
        raise NotFound("listing jobs is off: this service has no tokens, so job ids are the only secret "
                       "(set PIXMILL_LIST_JOBS=1 to list every job)")
    limit = query["limit"]
    page = svc.store.page_of_jobs(owner=current_owner(), limit=limit + 1, before=_cursor(query["cursor"]))
    more, page = len(page) > limit, page[:limit]
    return {"jobs": [job_json(job) for job in page],
            "next": _make_cursor(page[-1]) if more and page else None}


def _make_cursor(job: JobView) -> str:
    raw = json.dumps([job.created_at, job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(text: str | None) -> tuple[float, str] | None:
    """The (created_at, id) a cursor carries; InvalidRequest if it is not one of ours."""
    if text is None:
        return None
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return float(created_at), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequest(f"query parameter 'cursor': {text[:40]!r} is not a cursor this service gave") from None


@bp.get("/jobs/<job_id>")
@bp.output(JobOut)
@bp.doc(summary="A job's state, counts and tasks", responses={401: ERRORS[401], 404: ERRORS[404]})
def get_job(job_id: str) -> tuple[dict, int, dict[str, str]]:
    """The job's state and counts, and per task its state, error, result URL, size and timings.

    With the header `Prefer: wait=N` (N up to 30) the answer waits until the job has ended, or N
    seconds; it then carries `Preference-Applied: wait=N`."""
    store, owner = services().store, current_owner()
    job = store.get_job(job_id, owner=owner)
    waited = 0.0
    if job.state not in JOB_ENDED:
        waited = _long_poll(lambda: store.unfinished(job_id, owner=owner) == 0)
        if waited:
            job = store.get_job(job_id, owner=owner)
    return job_json(job), 200, _applied(waited)


@bp.get("/jobs/<job_id>/events")
@bp.doc(summary="Server-Sent Events with the job's progress until it ends",
        responses={200: {"description": "text/event-stream of 'progress' events (the job as JSON), "
                                         "then 'end' (or 'gone' if the job was deleted)",
                         "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                   401: ERRORS[401], 404: ERRORS[404],
                   503: "Too many event streams are open: poll GET /api/v1/jobs/{job_id} instead"})
def job_events(job_id: str) -> Response:
    """Stream the job's progress; the stream closes after a while and EventSource reconnects."""
    svc = services()
    owner = current_owner()
    svc.store.get_job(job_id, owner=owner)          # 404 now rather than inside the stream
    if not svc.event_slots.acquire(blocking=False):
        raise ServerBusy(f"too many event streams are open; poll GET /api/v1/jobs/{job_id} instead")
    seen = svc.waits.mark()  # the commits counted before the stream's next look at the job

    def pause(seconds: float) -> None:  # until a commit after that look (or seconds), at most every MIN_GAP
        nonlocal seen
        svc.waits.next_commit(seconds, since=seen)
        time.sleep(min(SSE_MIN_GAP, seconds))
        seen = svc.waits.mark()
    stream = event_stream(svc.store, job_id, owner, job_json, poll=svc.sse_poll, max_seconds=svc.sse_max_seconds,
                          sleep=pause)
    response = Response(_Slot(stream_with_context(stream), svc.event_slots.release), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


@bp.get("/jobs/<job_id>/tasks/<int:n>/result")
@bp.input(DownloadQuery, location="query", arg_name="query")
@bp.doc(summary="One result: 202 until ready, the image when done, 422 if it failed",
        responses={200: {"description": "The image, with its exact content type and an ETag",
                         "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                     for t in sorted(set(MEDIA_TYPES.values()))}},
                   202: "Not ready yet: retry after the Retry-After seconds",
                   304: "Not modified (If-None-Match)", 401: ERRORS[401], 404: ERRORS[404],
                   422: "The image failed: the reason is in 'message'"})
def get_result(job_id: str, n: int, query: dict) -> Response:
    """The processed image.

    With the header `Prefer: wait=N` (N up to 30) an image that is not ready yet is waited for, up to
    N seconds, so one request fetches it; the answer then carries `Preference-Applied: wait=N`."""
    return result_response(job_id, n, bool(query.get("download")))


@bp.get("/jobs/<job_id>/tasks/<int:n>/source")
@bp.input(DownloadQuery, location="query", arg_name="query")
@bp.doc(summary="The uploaded image, as it was received",
        responses={200: {"description": "The uploaded image with its detected content type",
                         "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                     for t in sorted(set(MEDIA_TYPES.values()))}},
                   304: "Not modified (If-None-Match)", 401: ERRORS[401], 404: ERRORS[404]})
def get_source(job_id: str, n: int, query: dict) -> Response:
    """The source image."""
    _, task = _task(job_id, n)
    fmt = task.source_format if task.source_format in MEDIA_TYPES else None
    if fmt is None:
        raise NotFound(f"{task.name}: the source has no known image type")
    return _send_blob(task.input_blob, fmt, download_name(task.name, EXTENSIONS[fmt]),
                      bool(query.get("download")))


@bp.get("/jobs/<job_id>/archive")
@bp.doc(summary="A zip of every result of an ended job",
        responses={200: {"description": "A zip; FAILED.txt inside lists the images without a result",
                         "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                   401: ERRORS[401], 404: ERRORS[404], 409: "The job has not ended yet"})
def get_archive(job_id: str) -> Response:
    """All results as one zip."""
    svc = services()
    job = svc.store.get_job(job_id, owner=current_owner())
    if job.state not in JOB_ENDED:
        counts = job.counts()
        ended = sum(counts.get(s, 0) for s in ENDED)
        raise JobNotFinished(f"job {job_id} is still {job.state}: {ended} of {len(job.tasks)} images have "
                             f"ended; download the archive when the job has ended")
    response = Response(stream_with_context(stream_archive(svc.store, job)), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="pixmill-{job_id[:12]}.zip"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.delete("/jobs/<job_id>")
@bp.output({}, status_code=204, description="Cancelled, and its data deleted")
@bp.doc(summary="Cancel a job and delete its images", responses={401: ERRORS[401], 404: ERRORS[404]})
def delete_job(job_id: str) -> tuple[str, int]:
    """Cancel the job and delete its data."""
    services().store.delete_job(job_id, owner=current_owner())
    return "", 204
