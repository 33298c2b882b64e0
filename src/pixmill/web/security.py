"""Security for the web service: response headers, optional API tokens, safe download names."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

from flask import Flask, Response, g, request

from ..errors import Unauthorized

__all__ = ["init_app", "authenticate", "current_owner", "owner_key", "safe_stem", "download_name"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
# Swagger UI sets styles from its scripts; scripts stay same-origin only.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def init_app(app: Flask) -> None:
    """Add the security headers to every response."""
    app.after_request(_add_headers)


def _add_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


def owner_key(token: str) -> str:
    """The key a job's owner is stored under: a hash of the token, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def authenticate(tokens: tuple[str, ...]) -> str | None:
    """Check the request's bearer token against tokens; return the owner key (None without tokens)."""
    if not tokens:
        g.pixmill_owner = None
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("this server needs an API token: send 'Authorization: Bearer <token>'")
    # compare against every token so the time taken does not say which one was close
    matched = [hmac.compare_digest(given.encode(), t.encode()) for t in tokens]
    if not any(matched):
        raise Unauthorized("the API token is not valid")
    g.pixmill_owner = owner_key(given)
    return g.pixmill_owner


def current_owner() -> str | None:
    """The owner key authenticate() found for this request."""
    return g.get("pixmill_owner")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UNSAFE_SUFFIX = re.compile(r"[^A-Za-z0-9._+-]+")   # '+' joins the operations of a pipeline


def safe_stem(name: str, *, fallback: str = "image") -> str:
    """The client's file name reduced to a safe ASCII stem: no folders, no extension, no odd characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = _UNSAFE.sub("_", stem).strip("._-")[:80]
    return stem or fallback


def download_name(name: str, extension: str, suffix: str = "") -> str:
    """A safe download file name built from the client's name, an optional suffix and an extension."""
    stem = safe_stem(name)
    if suffix:
        stem = f"{stem}-{_UNSAFE_SUFFIX.sub('_', suffix).strip('._-')[:60]}"
    return f"{stem}.{extension}"
