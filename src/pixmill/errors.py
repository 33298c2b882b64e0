"""pixmill's errors: one base class, each subclass knowing its HTTP status.

    PixmillError (500)
    ├── InvalidPipeline (400)       a pipeline or parameter that cannot be run
    ├── InvalidRequest (400)        anything else wrong with what was asked
    ├── Unauthorized (401)          a missing or wrong API token
    ├── NotFound (404)              no such job, task or result
    ├── JobNotFinished (409)        the archive of a job that has not ended yet
    ├── ImageTooLarge (413)         over a pixel or byte limit
    ├── UnsupportedFormat (415)     not an image format pixmill accepts
    ├── CorruptImage (422)          a truncated or damaged image
    ├── ProcessingFailed (422)      an operation could not be applied to this image
    ├── TaskTimeout (422)           a task ran past its time limit
    ├── WorkerCrashed (422)         the worker process died on this image, again and again
    ├── TooManyJobs (429)           the queue, or a token's unfinished jobs, over their limit
    ├── ServerBusy (503)            every event-stream slot is taken
    ├── StoreUnavailable (503)      the database or the image storage does not answer, for now
    └── StorageFull (507)           the data dir's quota is used up

Every message is meant for the user: it says what was wrong and what is allowed.
Each error takes one argument, the message, so it pickles across processes and MPI.
"""

from __future__ import annotations

__all__ = [
    "PixmillError",
    "InvalidPipeline",
    "InvalidRequest",
    "Unauthorized",
    "NotFound",
    "JobNotFinished",
    "ImageTooLarge",
    "UnsupportedFormat",
    "CorruptImage",
    "ProcessingFailed",
    "TaskTimeout",
    "WorkerCrashed",
    "TooManyJobs",
    "ServerBusy",
    "StoreUnavailable",
    "StorageFull",
]


class PixmillError(Exception):
    """Base of every error pixmill reports to a user."""

    status = 500
    code = "internal_error"

    @property
    def message(self) -> str:
        """The user-facing message."""
        return str(self.args[0]) if self.args else self.code

    def to_dict(self) -> dict:
        """The JSON body an API answers with."""
        return {"error": self.code, "message": self.message}


class InvalidPipeline(PixmillError):
    status = 400
    code = "invalid_pipeline"


class InvalidRequest(PixmillError):
    status = 400
    code = "invalid_request"


class Unauthorized(PixmillError):
    status = 401
    code = "unauthorized"


class NotFound(PixmillError):
    status = 404
    code = "not_found"


class JobNotFinished(PixmillError):
    """The archive of a job that is still running."""

    status = 409
    code = "job_not_finished"


class ImageTooLarge(PixmillError):
    status = 413
    code = "too_large"


class UnsupportedFormat(PixmillError):
    status = 415
    code = "unsupported_format"


class CorruptImage(PixmillError):
    status = 422
    code = "corrupt_image"


class ProcessingFailed(PixmillError):
    status = 422
    code = "processing_failed"


class TaskTimeout(PixmillError):
    status = 422
    code = "timeout"


class WorkerCrashed(PixmillError):
    status = 422
    code = "worker_crashed"


class TooManyJobs(PixmillError):
    """Back-pressure: the queue holds too many tasks, or a token too many unfinished jobs; try again later."""

    status = 429
    code = "too_many_jobs"


class ServerBusy(PixmillError):
    """Every event-stream slot is taken."""

    status = 503
    code = "busy"


class StoreUnavailable(PixmillError):
    """The job database or the image storage does not answer (restarting, unreachable): try again."""

    status = 503
    code = "store_unavailable"


class StorageFull(PixmillError):
    status = 507
    code = "storage_full"
