"""Turn store views into the JSON the API answers with, URLs included."""

from __future__ import annotations

from flask import url_for

from ..store import JobView, TaskView

__all__ = ["job_json", "task_json", "result_url", "ENDED"]

ENDED = ("done", "failed", "cancelled")


def result_url(job_id: str, n: int) -> str:
    """The absolute URL of one task's result."""
    return url_for("api.get_result", job_id=job_id, n=n, _external=True)


def task_json(job_id: str, task: TaskView) -> dict:
    """One task as the API shows it."""
    state = _value(task.state)
    seconds = None
    if task.started_at is not None and task.finished_at is not None:
        seconds = round(max(0.0, task.finished_at - task.started_at), 4)
    return {
        "n": task.n, "name": task.name, "pipeline": task.pipeline, "state": state,
        "attempts": task.attempts, "error": task.error,
        "width": task.width, "height": task.height,
        "source_format": task.source_format, "result_format": task.result_format,
        "notes": list(task.notes),
        "created_at": task.created_at, "started_at": task.started_at, "finished_at": task.finished_at,
        "seconds": seconds,
        "result_url": result_url(job_id, task.n),
        "source_url": url_for("api.get_source", job_id=job_id, n=task.n, _external=True),
    }


def job_json(job: JobView) -> dict:
    """A job with its counts, links and every task."""
    counts = job.counts()
    return {
        "id": job.id, "state": job.state, "created_at": job.created_at,
        "output": {"format": job.output.format, "quality": job.output.quality},
        "counts": counts, "total": len(job.tasks), "ended": sum(counts.get(s, 0) for s in ENDED),
        "status_url": url_for("api.get_job", job_id=job.id, _external=True),
        "events_url": url_for("api.job_events", job_id=job.id, _external=True),
        "archive_url": url_for("api.get_archive", job_id=job.id, _external=True),
        "tasks": [task_json(job.id, t) for t in job.tasks],
    }


def _value(state: object) -> str:
    return str(getattr(state, "value", state))
