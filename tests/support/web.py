"""Helpers for tests that drive the Flask app: a buffered client, the real dispatcher in a thread, waits."""

from __future__ import annotations

import io
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from flask.testing import FlaskClient

from pixmill.config import Settings
from pixmill.store import Store
from pixmill.store.blobs import open_blobs
from pixmill.worker.dispatcher import Dispatcher
from pixmill.worker.engine import make_executor

REAL = Path(__file__).parents[1] / "data" / "real"
HOSTILE = Path(__file__).parents[1] / "data" / "hostile_real"
MB = 1024 * 1024


class BufferedClient(FlaskClient):
    """A test client that reads each response whole and closes it (so served files are closed)."""

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


def make_client(app):
    app.test_client_class = BufferedClient
    return app.test_client()


@contextmanager
def dispatcher(store: Store, settings: Settings, *, workers: int = 1, make_pool=None, **options):
    """The real dispatcher on a local pool (of one worker, unless told), in a thread, for the duration of the
    block; options go to Dispatcher (task=, drain_seconds=)."""
    stop = threading.Event()
    worker = Dispatcher(store, settings, make_pool or (lambda: make_executor("local", workers)), workers=workers,
                        engine="local", **options)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the dispatcher did not stop"


def wait_job(client, job_id: str, timeout: float = 90.0, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
        if job["state"] in ("done", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end within {timeout} s: {job}")


def files(*names: str, folder: Path = REAL) -> list[tuple[io.BytesIO, str]]:
    return [(io.BytesIO((folder / n).read_bytes()), n) for n in names]


def post_job(client, data: dict | bytes, path: str = "/api/v1/jobs", headers=None):
    if isinstance(data, bytes):  # a multipart body written out, with the boundary RAW_BOUNDARY
        return client.post(path, data=data, content_type=f"multipart/form-data; boundary={RAW_BOUNDARY}",
                           headers=headers)
    return client.post(path, data=data, content_type="multipart/form-data", headers=headers)


RAW_BOUNDARY = "b0undary"
# Werkzeug's test encoder ends an empty part without the CRLF that RFC 2046 puts before every
# delimiter; browsers, curl and requests send it, so this body is written out as they do.
EMPTY_FILE = (f'--{RAW_BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="empty.png"\r\n\r\n'
              f'\r\n--{RAW_BOUNDARY}\r\nContent-Disposition: form-data; name="operations"\r\n\r\ngrayscale\r\n'
              f'--{RAW_BOUNDARY}--\r\n').encode()


def stored_blobs(settings: Settings) -> list[str]:
    """Every blob of the store, whole or half-written: files of the folder (tmp/ included) or the bucket's objects
    and open multipart uploads."""
    if settings.blob_url:
        blobs = open_blobs(settings.blob_url)
        uploads = blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", [])
        return sorted(blobs.keys_older_than(-86400.0)) + [u["Key"] for u in uploads]
    return sorted(str(p) for p in settings.blob_dir.rglob("*") if p.is_file())


def assert_error(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == code and set(body) >= {"error", "message"}
    for word in words:
        assert word in body["message"], body["message"]


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)
