"""Webhook signatures, as Stripe makes them: `Pixmill-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
of `"<t>." + body`, keyed with PIXMILL_WEBHOOK_SECRET. The time inside the signed text lets a receiver
refuse an old delivery replayed."""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["HEADER", "sign", "verify"]

HEADER = "Pixmill-Signature"


def sign(secret: str, body: bytes, *, now: float | None = None) -> str:
    """The header's value for body, signed now."""
    t = int(time.time() if now is None else now)
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """True if header signs body with secret, at most `tolerance` seconds ago (or ahead)."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = _mac(secret, t, body)
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
