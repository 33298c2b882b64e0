"""Turn store views into the JSON the API answers with (URLs included) and `pixmill status --json` prints."""

from __future__ import annotations

from flask import url_for

from ..store import ENDED, JobView, TaskView

__all__ = ["job_json", "task_json", "result_url"]


def result_url(job_id: str, n: int) -> str:
    """The absolute URL of one task's result."""
    return url_for("api.get_result", job_id=job_id, n=n, _external=True)


def task_json(job_id: str, task: TaskView, *, links: bool = True) -> dict:
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
    if links:
        body["result_url"] = result_url(job_id, task.n)
        body["source_url"] = url_for("api.get_source", job_id=job_id, n=task.n, _external=True)
    else:
        body["input_blob"], body["result_blob"] = task.input_blob, task.result_blob
    return body


def job_json(job: JobView, *, links: bool = True) -> dict:
    """A job with its counts and every task, and (with links, inside a request) the URLs of its resources."""
    counts = job.counts()
    body = {
        "id": job.id, "state": job.state.value, "created_at": job.created_at,
        "output": {"format": job.output.format, "quality": job.output.quality, "color": job.output.color,
                   "accept": list(job.output.accept)},
        "counts": counts, "total": len(job.tasks), "ended": sum(counts.get(s, 0) for s in ENDED),
    }
    if links:
        body["status_url"] = url_for("api.get_job", job_id=job.id, _external=True)
        body["events_url"] = url_for("api.job_events", job_id=job.id, _external=True)
        body["archive_url"] = url_for("api.get_archive", job_id=job.id, _external=True)
    body["tasks"] = [task_json(job.id, t, links=links) for t in job.tasks]
    return body
