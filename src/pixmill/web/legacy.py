"""The original application's contract: POST /upload with `files` and `operations` repeated."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Flask, url_for

from .api import ERRORS, receive_upload
from .present import result_url
from .schemas import UploadOut
from .security import authenticate
from .services import services

__all__ = ["bp", "init_app"]

bp = APIBlueprint("legacy", __name__,
                  tag={"name": "original form", "description": "The original application's upload contract"})


def init_app(app: Flask) -> None:
    """Register the /upload route."""
    app.register_blueprint(bp)


@bp.before_request
def _authenticate() -> None:
    authenticate(services().settings.api_tokens)


@bp.post("/upload")
@bp.output(UploadOut, description="Queued; each URL answers 202 until its image is ready, then the image "
                                  "(or 422 with the reason if it failed)")
@bp.doc(summary="The original upload form: one operation per file",
        responses={k: ERRORS[k] for k in (400, 401, 413, 415, 422, 429, 507)})
def upload() -> dict[str, str | list[str]]:
    """Multipart `files` and `operations`, repeated and in the same order, as the original application took."""
    job, _ = receive_upload(strict=False)
    n = len(job.tasks)
    return {"message": f"{n} file{'s' if n != 1 else ''} uploaded; processing started",
            "processed_files": [result_url(job.id, t.n) for t in job.tasks],
            "job_id": job.id,
            "status_url": url_for("api.get_job", job_id=job.id, _external=True)}
