"""The web service: create_app(settings, store) builds the Flask (APIFlask) application."""

from __future__ import annotations

from apiflask import APIFlask

from .. import __version__
from ..config import Settings, load_settings
from ..destinations import Destinations
from ..store import Store
from . import api, handlers, health, legacy, security, ui
from .schemas import ERROR_SCHEMA, job_form_schema, upload_form_schema
from .services import Services

__all__ = ["create_app"]

DESCRIPTION = """Upload images, give each an operation or a pipeline, and get the processed images
back at stable URLs. Work runs in the background on a pool of MPI workers.

A pipeline is text such as `grayscale | blur(ksize=7)` or JSON such as
`[{"op": "blur", "params": {"ksize": 7}}]`; `GET /api/v1/operations` lists every operation
and its parameters. Errors are JSON `{"error": code, "message": words}`."""


def create_app(settings: Settings | None = None, store: Store | None = None, *,
               sse_poll: float = 0.5, sse_max_seconds: float = 60.0) -> APIFlask:
    """Build the app around settings and a store (opened from settings.data_dir if not given)."""
    settings = settings or load_settings()
    Destinations.allowing(settings.webhook_allow)   # a malformed allow-list stops the start, not each upload
    app = APIFlask(__name__, title="pixmill", version=__version__,
                   spec_path="/api/v1/openapi.json", docs_path=None)
    app.config.update(
        OPENAPI_VERSION="3.0.3",
        DESCRIPTION=DESCRIPTION,
        MAX_CONTENT_LENGTH=settings.max_request_bytes + 1024 * 1024,   # multipart framing on top
        VALIDATION_ERROR_STATUS_CODE=400,
        VALIDATION_ERROR_SCHEMA=ERROR_SCHEMA,
        HTTP_ERROR_SCHEMA=ERROR_SCHEMA,
        AUTO_SERVERS=False,
    )
    if settings.api_tokens:
        app.config["SECURITY_SCHEMES"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    app.json.sort_keys = False
    app.extensions["pixmill"] = Services(settings, store or Store.open(settings), sse_poll, sse_max_seconds)
    handlers.init_app(app)
    security.init_app(app)
    api.init_app(app)
    legacy.init_app(app)
    health.init_app(app)
    ui.init_app(app)
    app.spec_processor(lambda spec: _complete_spec(spec, settings))
    return app


def _complete_spec(spec: dict, settings: Settings) -> dict:
    """Add what decorators cannot say: the multipart request bodies, and the token requirement."""
    bodies = {"/api/v1/jobs": job_form_schema(settings.max_files), "/upload": upload_form_schema(settings.max_files)}
    for path, schema in bodies.items():
        operation = spec["paths"].get(path, {}).get("post")
        if operation is not None:
            operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    if settings.api_tokens:
        for path, item in spec["paths"].items():
            if path.startswith("/api/v1/") or path == "/upload":
                for operation in item.values():
                    operation["security"] = [{"bearer": []}]
    return spec
