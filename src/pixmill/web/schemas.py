"""The shapes of the API's answers, for the generated OpenAPI document, and the upload form."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, Raw, String
from apiflask.validators import Length, OneOf, Range

from ..imaging.process import COLOR_MODES, OUTPUT_FORMATS
from ..store import JobState, TaskState, WebhookState

__all__ = ["ERROR_SCHEMA", "OperationOut", "JobOut", "UploadOut", "HealthOut", "DownloadQuery",
           "job_form_schema", "upload_form_schema", "TASK_STATES", "JOB_STATES"]

TASK_STATES = tuple(state.value for state in TaskState)
JOB_STATES = tuple(state.value for state in JobState)
WEBHOOK_STATES = tuple(state.value for state in WebhookState)

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "a short code, e.g. too_large, unsupported_format"},
        "message": {"type": "string", "description": "what was wrong, naming the file, step or limit"},
    },
    "required": ["error", "message"],
}


class ParamOut(Schema):
    name = String(required=True)
    type = String(required=True, metadata={"description": "int, float, choice or bool"})
    default = Raw(allow_none=True)
    description = String()
    min = Float(allow_none=True)
    max = Float(allow_none=True)
    step = Integer()
    odd = Boolean()
    choices = List(String())
    nullable = Boolean()


class OperationOut(Schema):
    name = String(required=True)
    description = String()
    family = String()
    params = List(Nested(ParamOut))
    supports_16bit = Boolean()
    alpha = String(metadata={"description": "native: handles the alpha channel; split: alpha is kept aside"})


class OutputOut(Schema):
    format = String(validate=OneOf(OUTPUT_FORMATS))
    quality = Integer()
    color = String(validate=OneOf(COLOR_MODES))
    accept = List(String(), metadata={"description": "with format auto and negotiate=true: the formats of the "
                                                     "request's Accept header that auto chooses from, best first"})


class TaskOut(Schema):
    n = Integer(required=True, metadata={"description": "0-based index in upload order"})
    name = String(required=True, metadata={"description": "the client's file name, as display text"})
    pipeline = String(required=True)
    state = String(required=True, validate=OneOf(TASK_STATES))
    attempts = Integer()
    error = String(allow_none=True)
    width = Integer(allow_none=True)
    height = Integer(allow_none=True)
    source_format = String(allow_none=True)
    result_format = String(allow_none=True)
    notes = List(String())
    created_at = Float()
    started_at = Float(allow_none=True)
    finished_at = Float(allow_none=True)
    seconds = Float(allow_none=True, metadata={"description": "processing time of the last attempt"})
    result_url = String(required=True)
    source_url = String(required=True)


class WebhookOut(Schema):
    url = String(required=True)
    state = String(required=True, validate=OneOf(WEBHOOK_STATES),
                   metadata={"description": "pending (the job runs, or the next attempt waits), sending, "
                                            "delivered, failed (every attempt used) or refused (the address)"})
    attempts = Integer(required=True)
    max_attempts = Integer()
    next_attempt_at = Float(allow_none=True, metadata={"description": "unix seconds of the next retry"})
    last_attempt_at = Float(allow_none=True)
    last_status = Integer(allow_none=True, metadata={"description": "the receiver's HTTP status at the last attempt"})
    last_error = String(allow_none=True)
    delivered_at = Float(allow_none=True)


class JobOut(Schema):
    id = String(required=True)
    state = String(required=True, validate=OneOf(JOB_STATES))
    created_at = Float()
    output = Nested(OutputOut)
    counts = Dict(keys=String(), values=Integer())
    total = Integer()
    ended = Integer(metadata={"description": "tasks done, failed or cancelled"})
    status_url = String()
    events_url = String()
    archive_url = String()
    webhook = Nested(WebhookOut, allow_none=True,
                     metadata={"description": "the job's webhook and its delivery; null without one"})
    tasks = List(Nested(TaskOut))


class JobListQuery(Schema):
    limit = Integer(load_default=20, validate=Range(1, 100), metadata={"description": "jobs per page, 1 to 100"})
    cursor = String(load_default=None, validate=Length(max=200),
                    metadata={"description": "the `next` of the previous page"})


class JobListOut(Schema):
    jobs = List(Nested(JobOut), required=True, metadata={"description": "the caller's jobs, newest first"})
    next = String(allow_none=True, required=True, metadata={"description": "cursor of the next page; null at the end"})


class UploadOut(Schema):
    message = String(required=True)
    processed_files = List(String(), required=True,
                           metadata={"description": "one URL per file: 202 until ready, then the image (or 422)"})
    job_id = String()
    status_url = String()


class NodeOut(Schema):
    id = String(required=True, metadata={"description": "the dispatcher's id"})
    host = String(required=True)
    pid = Integer()
    engine = String(metadata={"description": "mpi or local"})
    workers = Integer(required=True, metadata={"description": "its pool's workers"})
    started_at = Float(metadata={"description": "unix seconds"})
    heartbeat = Float(required=True, metadata={"description": "unix seconds of its last heartbeat"})


class HealthOut(Schema):
    status = String(required=True, validate=OneOf(("ok", "degraded")))
    store = String()
    workers = Integer(metadata={"description": "pool workers of the live dispatcher nodes"})
    nodes = List(Nested(NodeOut), metadata={"description": "the live dispatcher nodes, by heartbeat"})


class DownloadQuery(Schema):
    download = Boolean(load_default=False,
                       metadata={"description": "serve as an attachment (Content-Disposition) instead of inline"})


def job_form_schema(max_files: int) -> dict:
    """The multipart form of POST /api/v1/jobs."""
    return {
        "type": "object",
        "required": ["files"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": max_files,
                      "description": "the images (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF), repeated"},
            "operations": {"type": "array", "items": {"type": "string"},
                           "description": "one per file, in the same order; each an operation or a pipeline, "
                                          "e.g. 'grayscale | blur(ksize=7)'"},
            "pipeline": {"type": "string", "description": "one pipeline for every file (instead of operations)"},
            "format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": "auto"},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90},
            "color": {"type": "string", "enum": list(COLOR_MODES), "default": "srgb",
                      "description": "srgb: convert an embedded ICC profile to sRGB; keep: keep the source's "
                                     "colours and embed its profile in the result"},
            "negotiate": {"type": "boolean", "default": False,
                          "description": "with format auto: write AVIF or WebP if the request's Accept header "
                                         "names image/avif or image/webp (by its q values, AVIF first at equal q)"},
            "webhook_url": {"type": "string", "maxLength": 2048,
                            "description": "an http(s) URL to POST {\"event\": \"job.finished\", \"job\": ...} "
                                           "to when the job ends, signed in Pixmill-Signature; not to loopback, "
                                           "private or link-local addresses unless PIXMILL_WEBHOOK_ALLOW allows them"},
        },
    }


def upload_form_schema(max_files: int) -> dict:
    """The original application's multipart form of POST /upload."""
    schema = job_form_schema(max_files)
    schema["required"] = ["files", "operations"]
    return schema
