"""The recorder: a dispatcher's thread that stores finished results, several per transaction.

Storing a result means publishing its blob (the worker wrote it) and committing the task's new state, time
during which the dispatcher's loop could not hand the pool new work.  So
the loop gives each result to the recorder and goes on; the recorder takes every result waiting
at that moment and stores them together (`Store.complete_many`).  A task stays leased to the
dispatcher until its result is committed, so a crash before then runs it again, as before.
"""

from __future__ import annotations

import logging
import queue
import threading

from ..imaging.process import Result
from ..store import Finished, Store, StoredResult

__all__ = ["Recorder"]

log = logging.getLogger("pixmill.recorder")

BATCH = 32     # results stored in one transaction at most


class Recorder:
    """Stores the results handed to `put`, in a thread; `close` waits for all."""

    def __init__(self, store: Store, dispatcher_id: str) -> None:
        self.store, self.dispatcher_id = store, dispatcher_id
        self._queue: queue.SimpleQueue[Finished | None] = queue.SimpleQueue()
        self._waiting = 0                      # results put and not yet stored
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.error: BaseException | None = None   # why results could not be stored (the caller must stop)
        self._thread = threading.Thread(target=self._run, name="pixmill-recorder", daemon=True)
        self._thread.start()

    def put(self, task_id: int, result: Result | StoredResult, started_at: float | None,
            claim: int | None = None) -> None:
        """Store this result of a held task (run under the claim numbered `claim`) soon."""
        with self._lock:
            self._waiting += 1
        self._queue.put(Finished(task_id, result, started_at, claim))

    @property
    def waiting(self) -> int:
        """Results put and not yet stored."""
        with self._lock:
            return self._waiting

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every result put so far is stored; False if timeout came first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._waiting == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Store what is waiting, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            done = [item for item in batch if item is not None]
            if not done:
                continue
            try:
                self.store.complete_many(self.dispatcher_id, done)
            except Exception as exc:  # the store is unusable: the dispatcher must end so its tasks run again
                log.exception("could not record %d results", len(done))
                self.error = exc
                self._discard(done)
            finally:
                with self._idle:
                    self._waiting -= len(done)
                    self._idle.notify_all()

    def _discard(self, done: list[Finished]) -> None:
        # The workers' staged results will never be recorded: delete them now rather than at the purge.
        for item in done:
            if isinstance(item.result, StoredResult):
                try:
                    self.store.blobs.discard(item.result.staged)
                except Exception:  # the blob backend is failing too: purge finds them later
                    log.warning("could not delete the unrecorded result %s", item.result.staged.key)
