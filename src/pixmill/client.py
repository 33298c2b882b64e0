"""pixmill from programs: a client of the HTTP API, on httpx.

    from pixmill.client import Client

    with Client("http://127.0.0.1:5000", token=None) as client:
        job = client.submit(["a.jpg", ("b.png", data)], pipeline="grayscale | blur(ksize=7)")
        job.wait(timeout=600)
        paths = job.download("results")

Waits are long polls (`Prefer: wait`) and progress comes from the event stream: never busy loops.
An answer of 429 or 503 with `Retry-After` is retried after that many seconds, a few times; any
other error raises an ApiError subclass that carries the API's status, error code and message.
A receiver of webhooks checks their signature with `verify_webhook(secret, body, header)`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from .signature import verify as verify_webhook

__all__ = ["Client", "Job", "verify_webhook", "ApiError", "BadRequest", "Unauthorized", "NotFound", "Conflict",
           "TooLarge", "UnsupportedFormat", "Unprocessable", "TooManyRequests", "Unavailable", "StorageFull", "Timeout"]

MAX_WAIT = 30                 # seconds the server holds a long poll at most
RETRIES = 5                   # answers of 429 or 503 retried after their Retry-After
ENDED = ("done", "cancelled")


class ApiError(Exception):
    """An error answer of the API: its HTTP status, its error code and its message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status, self.code, self.message = status, code, message


class BadRequest(ApiError):
    """400: a pipeline, a parameter or the form is wrong."""


class Unauthorized(ApiError):
    """401: no token, or a wrong one."""


class NotFound(ApiError):
    """404: no such job or task (or it belongs to another token)."""


class Conflict(ApiError):
    """409: the archive of a job that has not ended."""


class TooLarge(ApiError):
    """413: over a limit of files, bytes or pixels."""


class UnsupportedFormat(ApiError):
    """415: not an image format pixmill accepts."""


class Unprocessable(ApiError):
    """422: a damaged image, or a task that failed (its result)."""


class TooManyRequests(ApiError):
    """429: the service is too busy for a new job; retry later."""


class Unavailable(ApiError):
    """503: the service or its store is not available for now."""


class StorageFull(ApiError):
    """507: the storage quota is used up."""


class Timeout(Exception):
    """A wait that ran out of time before the job ended."""


_ERRORS = {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: TooLarge, 415: UnsupportedFormat,
           422: Unprocessable, 429: TooManyRequests, 503: Unavailable, 507: StorageFull}


class Client:
    """The API of one pixmill service (any of its replicas, or the load balancer in front of them)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # The read timeout covers a long poll, which the server holds up to MAX_WAIT seconds.
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, read=max(timeout, MAX_WAIT + 15)))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def submit(self, files: Iterable[str | Path | tuple[str, bytes]], pipeline: str | None = None,
               operations: Sequence[str] | None = None, format: str = "auto", quality: int = 90,
               color: str = "srgb", webhook_url: str | None = None) -> Job:
        """Submit a job: files are paths or (name, bytes) pairs; give one pipeline for all, or operations,
        one per file in order; the service POSTs the job to webhook_url when it ends. The job as the
        service accepted it (202)."""
        # httpx sends the fields before the files, so the service starts the work while files still arrive.
        fields: dict[str, str | list[str]] = {"format": format, "quality": str(quality), "color": color}
        if pipeline is not None:
            fields["pipeline"] = pipeline
        if operations:
            fields["operations"] = list(operations)
        if webhook_url:
            fields["webhook_url"] = webhook_url
        with ExitStack() as stack:
            parts = []
            for item in files:
                if isinstance(item, tuple):
                    name, data = item
                    parts.append(("files", (name, data, "application/octet-stream")))
                else:
                    path = Path(item)
                    parts.append(("files", (path.name, stack.enter_context(open(path, "rb")),
                                            "application/octet-stream")))

            def rewind() -> None:   # a retried POST sends the files again from their start
                for _, (_, body, _) in parts:
                    if hasattr(body, "seek"):
                        body.seek(0)
            answer = self._request("POST", "api/v1/jobs", data=fields, files=parts, before_retry=rewind)
        return Job(self, answer.json())

    def job(self, job_id: str) -> Job:
        """The job with this id, as it is now."""
        return Job(self, self._request("GET", f"api/v1/jobs/{job_id}").json())

    def jobs(self, page: int = 100) -> Iterator[Job]:
        """Every job of the caller's token, newest first, fetched `page` at a time (GET /api/v1/jobs)."""
        cursor = None
        while True:
            params = {"limit": page, **({"cursor": cursor} if cursor else {})}
            answer = self._request("GET", "api/v1/jobs", params=params).json()
            yield from (Job(self, data) for data in answer["jobs"])
            cursor = answer["next"]
            if cursor is None:
                return

    def _request(self, method: str, url: str, *, before_retry: Any = None, **kwargs: Any) -> httpx.Response:
        for attempt in range(RETRIES + 1):
            answer = self.http.request(method, url, **kwargs)
            if answer.status_code in (429, 503) and attempt < RETRIES and "Retry-After" in answer.headers:
                time.sleep(_seconds(answer.headers["Retry-After"]))
                if before_retry is not None:
                    before_retry()
                continue
            if answer.status_code >= 400:
                raise _error(answer)
            return answer
        raise AssertionError("unreachable")


class Job:
    """A job of the service: its id, state and tasks as last seen; refresh() or wait() to see them anew."""

    def __init__(self, client: Client, data: dict) -> None:
        self.client, self.data = client, data

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> str:
        """queued, running, done (every task has ended) or cancelled."""
        return self.data["state"]

    @property
    def tasks(self) -> list[dict]:
        """Each task as the API shows it: n, name, state, error, result_url, ..."""
        return self.data["tasks"]

    @property
    def counts(self) -> dict[str, int]:
        return self.data["counts"]

    @property
    def webhook(self) -> dict | None:
        """The job's webhook and how its delivery went (url, state, attempts, last_status, ...), or None."""
        return self.data.get("webhook")

    @property
    def failed(self) -> list[dict]:
        """The tasks that failed, with their error."""
        return [t for t in self.tasks if t["state"] == "failed"]

    def refresh(self) -> Job:
        """Look at the job again."""
        self.data = self.client._request("GET", f"api/v1/jobs/{self.id}").json()
        return self

    def wait(self, timeout: float | None = None) -> Job:
        """Wait until the job has ended, by long polls; Timeout if it has not after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state not in ENDED:
            left = MAX_WAIT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"job {self.id} did not end within {timeout:g} s ({self.counts})")
            wait = max(1, min(MAX_WAIT, int(left)))
            self.data = self.client._request("GET", f"api/v1/jobs/{self.id}",
                                             headers={"Prefer": f"wait={wait}"}).json()
        return self

    def progress(self, timeout: float | None = None) -> Iterator[Job]:
        """Yield this job each time it changes, from the event stream, until it has ended (reconnecting
        when the server closes a stream); Timeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state not in ENDED:
            with self.client.http.stream("GET", f"api/v1/jobs/{self.id}/events") as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _error(answer)
                event = ""
                for line in answer.iter_lines():   # a keep-alive comment comes at least every 15 s
                    if deadline is not None and time.monotonic() > deadline:
                        raise Timeout(f"job {self.id} did not end within {timeout:g} s ({self.counts})")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "progress":
                        self.data = json.loads(line[5:])
                        yield self
                    elif line.startswith("data:") and event == "gone":
                        raise NotFound(404, "not_found", json.loads(line[5:])["message"])

    def download(self, directory: str | Path) -> list[Path]:
        """Write each result into directory under its download name (a second of a name gets -2, ...);
        the paths written, in task order. Tasks without a result (failed, cancelled) are left out."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for task in self.tasks:
            if task["state"] != "done":
                continue
            answer = self.client._request("GET", task["result_url"], params={"download": "true"})
            target = _free(directory, _download_name(answer, task))
            target.write_bytes(answer.content)
            written.append(target)
        return written

    def cancel(self) -> None:
        """Cancel the job and delete it with its images (DELETE): its ids answer 404 afterwards."""
        self.client._request("DELETE", f"api/v1/jobs/{self.id}")
        self.data = {**self.data, "state": "cancelled"}


def _error(answer: httpx.Response) -> ApiError:
    try:
        body = answer.json()
        code, message = body.get("error", "error"), body.get("message", answer.text)
    except ValueError:
        code, message = "error", answer.text[:500] or answer.reason_phrase
    return _ERRORS.get(answer.status_code, ApiError)(answer.status_code, code, message)


def _seconds(retry_after: str) -> float:
    try:
        return min(60.0, max(0.0, float(retry_after)))
    except ValueError:       # an HTTP date: wait a little, then look
        return 1.0


def _download_name(answer: httpx.Response, task: dict) -> str:
    found = re.search(r'filename="?([^";]+)"?', answer.headers.get("Content-Disposition", ""))
    name = found.group(1) if found else f"{task['n']:04d}-result"
    name = name.replace("\\", "/").rsplit("/", 1)[-1].lstrip(".")   # never a path, never hidden
    return name or f"{task['n']:04d}-result"


def _free(directory: Path, name: str) -> Path:
    target, stem, suffix, n = directory / name, Path(name).stem, Path(name).suffix, 2
    while target.exists():
        target = directory / f"{stem}-{n}{suffix}"
        n += 1
    return target
