"""The job of one upload: opened at its first file that can run, sealed when the upload is accepted.

When the form gives the pipeline (or each file's operation) before the files, each task is handed
to the store as soon as its file is stored while more of the body is to come, so dispatchers start
on it while the rest of the upload is read (see pixmill.openjobs).  Otherwise the job is created,
whole, at the end, as before.
"""

from __future__ import annotations

from ..imaging.process import Output
from ..store import JobView, NewTask, NewWebhook, Store

__all__ = ["JobStart"]


class JobStart:
    """Builds one upload's job in the store; offer() tasks as they are ready, then finish() or abandon()."""

    def __init__(self, store: Store, *, owner: str | None = None) -> None:
        self.store, self.owner = store, owner
        self.job_id: str | None = None
        self.output: Output | None = None
        self.started = 0                 # tasks already in the store

    def offer(self, tasks: list[NewTask], output: Output) -> None:
        """The upload's first tasks so far: those not yet in the store are added and may run at once."""
        if self.job_id is None:
            self.job_id, self.output = self.store.open_job(output, owner=self.owner), output
        elif output != self.output:
            return  # a format or quality field came after some files: the rest waits for finish()
        if len(tasks) > self.started:
            self.store.add_tasks(self.job_id, tasks[self.started:], start=self.started)
            self.started = len(tasks)

    def finish(self, tasks: list[NewTask], output: Output, webhook: NewWebhook | None = None) -> JobView:
        """Record the job with all its tasks (and its webhook): seal the open job, or create it whole."""
        if self.job_id is None:
            return self.store.create_job(tasks, output, owner=self.owner, webhook=webhook)
        job = self.store.seal_job(self.job_id, tasks[self.started:], output, start=self.started, webhook=webhook)
        self.job_id = None
        return job

    def abandon(self) -> None:
        """The upload was refused: delete the open job, if there is one, with its tasks and results."""
        if self.job_id is not None:
            self.store.discard_job(self.job_id)
            self.job_id = None
