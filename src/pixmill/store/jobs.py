"""Jobs and tasks as the API shows them: the views the store returns and the tasks it is given."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum

from ..imaging.pipeline import Pipeline
from ..imaging.process import Output
from .taskqueue import output_from_json

__all__ = ["TaskState", "ENDED", "JobState", "JOB_ENDED", "TaskView", "JobView", "NewTask", "task_view", "job_view"]


class TaskState(StrEnum):
    """Where a task is: queued → running → done, failed or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


class JobState(StrEnum):
    """Where a job is: queued until a task starts, running, then done (every task ended) or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


JOB_ENDED = (JobState.DONE, JobState.CANCELLED)


@dataclass(frozen=True)
class TaskView:
    """One task as the API shows it."""

    n: int
    name: str
    pipeline: str
    state: TaskState
    attempts: int
    error: str | None
    width: int | None
    height: int | None
    result_format: str | None
    source_format: str | None
    notes: tuple[str, ...]
    created_at: float
    started_at: float | None
    finished_at: float | None
    input_blob: str
    result_blob: str | None


@dataclass(frozen=True)
class JobView:
    """One job and its tasks as the API shows them."""

    id: str
    owner: str | None
    state: JobState
    created_at: float
    output: Output
    tasks: tuple[TaskView, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        """The number of tasks in each state, zeros included."""
        counts = {state.value: 0 for state in TaskState}
        for task in self.tasks:
            counts[task.state.value] += 1
        return counts


@dataclass(frozen=True)
class NewTask:
    """A task to create: the client's file name (display text), its pipeline and its input blob."""

    name: str
    pipeline: Pipeline
    blob: str
    source_format: str | None = None


def task_view(row: sqlite3.Row) -> TaskView:
    """A task row as a TaskView."""
    return TaskView(n=row["n"], name=row["name"], pipeline=row["pipeline"], state=TaskState(row["state"]),
                    attempts=row["attempts"], error=row["error"], width=row["width"], height=row["height"],
                    result_format=row["result_format"], source_format=row["source_format"],
                    notes=tuple(json.loads(row["notes"])), created_at=row["created_at"],
                    started_at=row["started_at"], finished_at=row["finished_at"],
                    input_blob=row["input_blob"], result_blob=row["result_blob"])


def job_view(job: sqlite3.Row, rows: list[sqlite3.Row]) -> JobView:
    """A job row and its task rows as a JobView."""
    tasks = tuple(task_view(r) for r in rows)
    states = {t.state for t in tasks}
    if job["cancelled_at"] is not None:
        state = JobState.CANCELLED
    elif states <= set(ENDED):
        state = JobState.DONE
    elif states == {TaskState.QUEUED}:
        state = JobState.QUEUED
    else:
        state = JobState.RUNNING
    return JobView(id=job["id"], owner=job["owner"], state=state, created_at=job["created_at"],
                   output=output_from_json(job["output"]), tasks=tasks)
