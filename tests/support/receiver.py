"""A webhook receiver on 127.0.0.1: answers each POST with the next status of a script, records what
came, and checks signatures with its own HMAC (not pixmill's)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def signed_by(self, secret: str, tolerance: float = 300.0) -> bool:
        """The Pixmill-Signature header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`."""
        fields = dict(part.split("=", 1) for part in self.headers.get("Pixmill-Signature", "").split(","))
        t = int(fields["t"])
        mac = hmac.new(secret.encode(), f"{t}.".encode() + self.body, hashlib.sha256).hexdigest()
        return abs(time.time() - t) <= tolerance and hmac.compare_digest(mac, fields["v1"])


class Receiver:
    """Answers POSTs with `statuses` in turn (the last one forever after); `redirect` answers 302 there."""

    def __init__(self, statuses: list[int], *, redirect: str | None = None, delay: float = 0.0) -> None:
        self.statuses, self.redirect, self.delay = list(statuses), redirect, delay
        self.received: list[Received] = []
        self.lock = threading.Condition()
        self.answering = self.most_at_once = 0   # requests being answered now, and at most at once
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body, time.time()))
                    status = receiver.statuses[min(len(receiver.received), len(receiver.statuses)) - 1]
                    receiver.answering += 1
                    receiver.most_at_once = max(receiver.most_at_once, receiver.answering)
                    receiver.lock.notify_all()
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.answering -= 1
                self.send_response(status)
                if 300 <= status < 400 and receiver.redirect:
                    self.send_header("Location", receiver.redirect)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:   # noqa: N802
                self.do_POST()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/pixmill"

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The first `count` requests, once they have come; AssertionError after timeout."""
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} of {count} webhook requests came in {timeout} s")
            return list(self.received[:count])


@contextmanager
def receiving(statuses: list[int], **kwargs) -> Iterator[Receiver]:
    """A Receiver serving in a thread for the duration of the block."""
    receiver = Receiver(statuses, **kwargs)
    thread = threading.Thread(target=receiver.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(10)
