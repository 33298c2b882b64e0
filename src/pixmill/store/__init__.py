"""The store, the only thing web processes and dispatchers share: jobs, tasks and their blobs.

`Store` is the facade; the database (which owns the commit signal) and the blob folder are its
parts, and jobs, open jobs, the task queue and blob bookkeeping are collaborators it hands the
database to.
"""

from __future__ import annotations

from .facade import Store, describe_store
from .jobs import ENDED, JOB_ENDED, JobState, JobView, NewTask, TaskState, TaskView
from .taskqueue import Claim, Finished, StoredResult
from .webhooks import Delivery, NewWebhook, WebhookState, WebhookView

__all__ = ["Store", "describe_store", "JobView", "NewTask", "JobState", "TaskState", "ENDED", "JOB_ENDED",
           "TaskView", "Claim", "Finished", "StoredResult", "Delivery", "NewWebhook", "WebhookState", "WebhookView"]
