"""Server-Sent Events: a job's progress, polled from the store, until the job ends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from ..errors import NotFound
from ..store import JOB_ENDED, JobView, Store

__all__ = ["job_events", "sse"]


def sse(event: str, data: object) -> str:
    """One SSE message with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_events(store: Store, job_id: str, owner: str | None, render: Callable[[JobView], dict], *,
               poll: float = 0.5, max_seconds: float = 300.0, heartbeat: float = 15.0,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Yield a 'progress' event whenever the job changes, then 'end' (or 'gone' if it was deleted).

    Between looks at the job it calls sleep(poll), which may return early when the store is written.

    The stream is bounded: after max_seconds it closes and the client's EventSource reconnects,
    so one slow job never holds a server thread for good.
    """
    start = last_sent = clock()
    previous = None
    yield "retry: 2000\n\n"
    while True:
        try:
            job = store.get_job(job_id, owner=owner)
        except NotFound:
            yield sse("gone", {"id": job_id, "message": f"job {job_id} no longer exists"})
            return
        payload = render(job)
        signature = json.dumps(payload, sort_keys=True)
        if signature != previous:
            previous = signature
            last_sent = clock()
            yield sse("progress", payload)
        if job.state in JOB_ENDED:
            yield sse("end", {"id": job.id, "state": job.state.value, "counts": payload.get("counts")})
            return
        now = clock()
        if now - start >= max_seconds:
            return
        if now - last_sent >= heartbeat:
            last_sent = now
            yield ": keep-alive\n\n"
        sleep(poll)
