"""Turn store views into the JSON the API answers with (URLs included), `pixmill status --json` prints
and webhooks carry.

Links are built from a URL root: the request's inside one, or the one a webhook's job was submitted
through, as the dispatcher that sends it has no request. The paths are the API's routes (api.py).
"""

from __future__ import annotations

from flask import request

from ..store import ENDED, JobView, TaskView, WebhookView

__all__ = ["job_json", "task_json", "result_url", "webhook_json"]

Links = bool | str   # True: from the current request; a URL root ending in "/"; False: no links


def _root(links: Links) -> str | None:
    if links is True:
        return request.url_root
    return links or None


def result_url(job_id: str, n: int, links: Links = True) -> str:
    """The absolute URL of one task's result."""
    return f"{_root(links)}api/v1/jobs/{job_id}/tasks/{n}/result"


def task_json(job_id: str, task: TaskView, *, links: Links = True) -> dict:
    """One task as the API shows it; without links (no request to build URLs from) it names its blobs instead."""
    seconds = None
    if task.started_at is not None and task.finished_at is not None:
        seconds = round(max(0.0, task.finished_at - task.started_at), 4)
    body = {
        "n": task.n, "name": task.name, "pipeline": task.pipeline, "state": task.state.value,
        "attempts": task.attempts, "error": task.error,
        "width": task.width, "height": task.height,
        "source_format": task.source_format, "result_format": task.result_format,
        "notes": list(task.notes),
        "created_at": task.created_at, "started_at": task.started_at, "finished_at": task.finished_at,
        "seconds": seconds,
    }
    root = _root(links)
    if root:
        body["result_url"] = result_url(job_id, task.n, root)
        body["source_url"] = f"{root}api/v1/jobs/{job_id}/tasks/{task.n}/source"
    else:
        body["input_blob"], body["result_blob"] = task.input_blob, task.result_blob
    return body


def webhook_json(webhook: WebhookView | None) -> dict | None:
    """A job's webhook and how its delivery goes (None: the job has none)."""
    if webhook is None:
        return None
    return {"url": webhook.url, "state": webhook.state.value, "attempts": webhook.attempts,
            "max_attempts": webhook.max_attempts, "next_attempt_at": webhook.next_attempt_at,
            "last_attempt_at": webhook.last_attempt_at, "last_status": webhook.last_status,
            "last_error": webhook.last_error, "delivered_at": webhook.delivered_at}


def job_json(job: JobView, *, links: Links = True) -> dict:
    """A job with its counts, its webhook and every task, and (with links) the URLs of its resources."""
    counts = job.counts()
    body = {
        "id": job.id, "state": job.state.value, "created_at": job.created_at,
        "output": {"format": job.output.format, "quality": job.output.quality, "color": job.output.color,
                   "accept": list(job.output.accept)},
        "counts": counts, "total": len(job.tasks), "ended": sum(counts.get(s, 0) for s in ENDED),
    }
    root = _root(links)
    if root:
        body["status_url"] = f"{root}api/v1/jobs/{job.id}"
        body["events_url"] = f"{root}api/v1/jobs/{job.id}/events"
        body["archive_url"] = f"{root}api/v1/jobs/{job.id}/archive"
    body["webhook"] = webhook_json(job.webhook)
    body["tasks"] = [task_json(job.id, t, links=root or False) for t in job.tasks]
    return body
