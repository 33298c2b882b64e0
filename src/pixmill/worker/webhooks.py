"""The webhook sender: a dispatcher's threads that POST each ended job's JSON to its webhook_url.

Every dispatcher with a PIXMILL_WEBHOOK_SECRET sends: it claims due deliveries from the store (under a
lease, as tasks are claimed) and posts each from a small pool of threads, so a slow receiver holds up
no other. The connection goes through `GuardedBackend`, which resolves the host itself and connects
only to an address the destination policy allows: the address checked is the address connected to.
httpcore follows no redirects; a 3xx is an answer like any other that is not 2xx, and is retried.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import httpcore
import httpx

from .. import __version__
from ..config import Settings
from ..destinations import Destinations
from ..errors import NotFound
from ..signature import HEADER, sign
from ..store import Delivery, Store, WebhookState

__all__ = ["WebhookSender", "Attempt", "post", "GuardedBackend", "DestinationRefused"]

log = logging.getLogger("pixmill.webhooks")

THREADS = 4            # deliveries in flight per dispatcher
MAX_ERROR_CHARS = 300


class DestinationRefused(Exception):
    """The webhook's host resolves only to addresses the policy refuses; retrying would not help."""


class Attempt(NamedTuple):
    """How one POST went: the receiver's status (None: no answer), what was wrong, and whether to stop."""

    status: int | None
    error: str | None
    refused: bool = False


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting only to the addresses the policy allows.

    The host is resolved here and the connection made to the address itself, so no later lookup (DNS
    rebinding) can change where it goes; TLS still checks the certificate against the host's name."""

    def __init__(self, policy: Destinations, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} cannot be resolved: {exc}") from exc
        refusals, failure = [], None
        for *_, sockaddr in found:
            address = ipaddress.ip_address(sockaddr[0].split("%")[0])
            reason = self.policy.refusal(host, address)
            if reason:
                refusals.append(reason if host == str(address) else f"{host} resolves to {reason}")
                continue
            try:
                stream = self.inner.connect_tcp(sockaddr[0], port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            peer = stream.get_extra_info("socket").getpeername()[0]
            if self.policy.refusal(host, ipaddress.ip_address(peer.split("%")[0])):   # never, but it is the rule
                stream.close()
                refusals.append(f"{peer} is not allowed")
                continue
            return stream
        if failure is not None:
            raise failure
        raise DestinationRefused(refusals[0] if refusals else f"{host} has no address")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def post(pool: httpcore.ConnectionPool, url: str, body: bytes, *, secret: str, timeout: float) -> Attempt:
    """POST body to url, signed; the answer's body is never read (only its status matters)."""
    target = httpx.URL(url)   # IDNA and percent-encoding, as a client would send it
    headers = [(b"Host", target.netloc), (b"Content-Type", b"application/json"),
               (b"Content-Length", str(len(body)).encode()),
               (b"User-Agent", f"pixmill/{__version__}".encode()), (HEADER.encode(), sign(secret, body).encode())]
    request_url = httpcore.URL(scheme=target.raw_scheme, host=target.raw_host, port=target.port,
                               target=target.raw_path)
    limits = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    try:
        with pool.stream("POST", request_url, headers=headers, content=body, extensions={"timeout": limits}) as answer:
            status = answer.status
            location = dict((k.lower(), v) for k, v in answer.headers).get(b"location", b"").decode("latin-1")
    except DestinationRefused as exc:
        return Attempt(None, str(exc)[:MAX_ERROR_CHARS], refused=True)
    except httpcore.TimeoutException:
        return Attempt(None, f"no answer within {timeout:g} s")
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        return Attempt(None, (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:MAX_ERROR_CHARS])
    if 200 <= status < 300:
        return Attempt(status, None)
    if 300 <= status < 400:
        return Attempt(status, f"HTTP {status}: redirects are not followed{f' (to {location})' if location else ''}"
                       [:MAX_ERROR_CHARS])
    return Attempt(status, f"HTTP {status}")


class WebhookSender:
    """Claims due deliveries and sends them in threads; `poll` from the dispatcher's loop, `close` at its end."""

    def __init__(self, store: Store, settings: Settings, sender_id: str, *, threads: int = THREADS) -> None:
        self.store, self.settings, self.id = store, settings, sender_id
        guard = GuardedBackend(Destinations.allowing(settings.webhook_allow))
        self.pool = httpcore.ConnectionPool(network_backend=guard, max_connections=threads, retries=0)
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="pixmill-webhook")
        self.capacity = threads
        self.flying: set[Future] = set()
        self.lock = threading.Lock()
        self.closing = False

    def poll(self) -> int:
        """Claim as many due deliveries as there are free threads and start them; return how many."""
        with self.lock:
            self.flying = {f for f in self.flying if not f.done()}
            free = self.capacity - len(self.flying)
        if free <= 0 or self.closing:
            return 0
        claimed = self.store.claim_webhooks(self.id, free)
        for delivery in claimed:
            future = self.threads.submit(self._deliver, delivery)
            with self.lock:
                self.flying.add(future)
        return len(claimed)

    def close(self, timeout: float = 5.0) -> None:
        """Stop claiming; wait up to timeout for deliveries in flight (the rest are retried when their lease ends)."""
        self.closing = True
        with self.lock:
            flying = list(self.flying)
        for future in flying:
            try:
                future.result(timeout=timeout)
            except Exception:  # noqa: S110 - it logged its own failure; a lease brings it back
                pass
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.pool.close()

    def _deliver(self, delivery: Delivery) -> None:
        if self.closing:
            self.store.release_webhooks(self.id, [delivery])
            return
        try:
            job = self.store.get_job(delivery.job_id)
        except NotFound:
            return   # deleted meanwhile, with its webhook
        from ..web.present import job_json  # Flask loads only in a dispatcher that sends webhooks

        body = json.dumps({"event": "job.finished", "job": job_json(job, links=delivery.base_url)},
                          separators=(",", ":")).encode()
        attempt = post(self.pool, delivery.url, body, secret=self.settings.webhook_secret,
                       timeout=self.settings.webhook_timeout)
        try:
            state = self.store.settle_webhook(self.id, delivery, status=attempt.status, error=attempt.error,
                                              final=attempt.refused)
        except Exception:
            log.exception("webhook of job %s: its attempt %d could not be recorded", delivery.job_id, delivery.attempt)
            return
        if state is not WebhookState.DELIVERED:
            log.warning("webhook of job %s, attempt %d: %s (%s)", delivery.job_id, delivery.attempt,
                        attempt.error, state.value if state else "no longer ours")
