"""The web page at / and the API docs page, with every asset served by pixmill itself."""

from __future__ import annotations

from pathlib import Path

from apiflask import APIBlueprint
from flask import Flask, Response, abort, render_template, send_from_directory

from .. import __version__
from ..imaging.codec import ACCEPTED, MEDIA_TYPES
from ..imaging.process import OUTPUT_FORMATS
from .security import DOCS_CSP
from .services import services

__all__ = ["bp", "init_app", "swagger_assets"]

bp = APIBlueprint("ui", __name__, enable_openapi=False)

SWAGGER_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")


def swagger_assets() -> Path:
    """The folder of the Swagger UI files shipped by the swagger-ui-bundle package."""
    from swagger_ui_bundle import swagger_ui_path
    return Path(str(swagger_ui_path))


def init_app(app: Flask) -> None:
    """Register the page and the docs."""
    app.register_blueprint(bp)


@bp.get("/")
def index() -> str:
    """The upload page."""
    settings = services().settings
    return render_template("index.html", version=__version__, formats=OUTPUT_FORMATS, accepted=ACCEPTED,
                           accept=",".join(sorted(set(MEDIA_TYPES.values()))),
                           max_files=settings.max_files, max_file_bytes=settings.max_file_bytes,
                           tokens=bool(settings.api_tokens))


@bp.get("/api/v1/docs")
def docs() -> Response:
    """The interactive API docs (Swagger UI), served offline."""
    response = Response(render_template("docs.html", version=__version__))
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/api/v1/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """A Swagger UI file."""
    if name not in SWAGGER_FILES:
        abort(404)
    return send_from_directory(swagger_assets(), name, max_age=86400)
