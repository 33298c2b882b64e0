"""One place that turns every error into JSON: {"error": code, "message": words}."""

from __future__ import annotations

import logging

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Response, current_app, jsonify

from ..errors import PixmillError, StoreUnavailable, Unauthorized
from ..limits import format_bytes

__all__ = ["init_app"]

log = logging.getLogger(__name__)

CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 411: "length_required",
         413: "too_large", 414: "uri_too_long", 415: "unsupported_media_type", 416: "range_not_satisfiable",
         431: "headers_too_large"}


def init_app(app: APIFlask) -> None:
    """Register the error handlers."""
    app.register_error_handler(PixmillError, _pixmill_error)
    app.error_processor(_http_error)
    app.register_error_handler(Exception, _unexpected)


def _pixmill_error(exc: PixmillError) -> Response:
    response = jsonify(exc.to_dict())
    response.status_code = exc.status
    response.headers["Cache-Control"] = "no-store"
    if exc.status in (429, 503):
        response.headers["Retry-After"] = "2"
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="pixmill"'
    return response


def _http_error(error: HTTPError) -> tuple[dict, int, dict]:
    status = error.status_code
    message = error.message or "error"
    if error.detail:
        message = _describe_detail(error.detail)
    elif status == 413:
        limit = current_app.extensions["pixmill"].settings.max_request_bytes
        message = f"the request is over the {format_bytes(limit)} per-request limit"
    elif status == 404:
        message = "no such page or resource; the API is under /api/v1 (see /api/v1/docs)"
    elif status == 405:
        message = f"this method is not allowed here; allowed: {error.headers.get('Allow', 'none')}"
    code = CODES.get(status) or message.lower().replace(" ", "_")[:40]
    return {"error": code, "message": message}, status, {**error.headers, "Cache-Control": "no-store"}


def _describe_detail(detail: dict) -> str:
    parts = []
    for location, fields in detail.items():
        where = "query parameter" if location == "query" else f"{location} field"
        if isinstance(fields, dict):
            for name, problems in fields.items():
                text = "; ".join(map(str, problems)) if isinstance(problems, list) else str(problems)
                parts.append(f"{where} {name!r}: {text}")
        else:
            parts.append(f"{location}: {fields}")
    return ", ".join(parts) or "the request is not valid"


def _unexpected(exc: Exception) -> Response:
    import psycopg

    if isinstance(exc, psycopg.OperationalError):   # PostgreSQL restarting or unreachable: try again soon
        log.warning("the database does not answer: %s", exc)
        return _pixmill_error(StoreUnavailable("the job database does not answer; try again shortly"))
    log.exception("unexpected error while serving a request")
    response = jsonify({"error": "internal_error",
                        "message": "an unexpected error happened on the server; it has been logged"})
    response.status_code = 500
    return response
