"""The dispatcher: claim tasks from the store, run them on an executor, record each result.

Workers get bytes and return a Result; only the dispatcher touches the store. When the pool
breaks it is rebuilt and the tasks it held go back to the queue as suspects (see taskqueue). A
task running past the time limit fails; the pool is ended and the other tasks go back uncounted.
An MPI pool cannot be ended without ending this process, so then `run` returns RESTART and the
caller exits for its supervisor to start a fresh dispatcher.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from dataclasses import dataclass
from functools import partial

import psutil

from ..config import Settings, load_settings
from ..errors import PixmillError, StoreUnavailable, TaskTimeout
from ..imaging.pipeline import Pipeline, parse_pipeline
from ..imaging.process import Result, process
from ..logs import setup_logging
from ..store import Claim, Store, StoredResult
from ..store.dbwatch import Doorbell
from ..store.facade import blob_location
from .recorder import Recorder
from .stored import run_many, run_stored
from .webhooks import WebhookSender

__all__ = ["Dispatcher", "STOPPED", "RESTART", "EXIT_RESTART", "process_is_dead", "run_dispatcher", "load_task"]

log = logging.getLogger("pixmill.worker.dispatcher")

STOPPED, RESTART = "stopped", "restart"
EXIT_RESTART = 75                    # exit status of a dispatcher that ended its pool and wants a fresh start
POLL_MIN, POLL_MAX = 0.05, 0.5       # seconds between looks at an empty queue, backing off when idle
BUSY_TICK = 0.25                     # seconds between timeout checks while the pool is full
# Between those looks the dispatcher sleeps in the kernel until any process signals a commit to
# the store (dbwatch: inotify) or one of its flights finishes (a doorbell that each future's
# callback rings): a new job or a result ends the wait at once.  Without the signal a job waits for
# the next look, and looking often instead makes an idle dispatcher costly (GIL hand-offs beside
# the MPI manager thread).
WATCH_IDLE_TICK = 0.25     # longest sleep in the kernel (a stop is seen by then)
# Tasks whose input is small enough to live in the database (PIXMILL_INLINE_BYTES) go to a worker up to
# CHUNK in one message and come back in one, when a long queue has them: each hand-off costs the manager
# thread and the worker about as much as a tiny image's work. A chunk is sized to take about CHUNK_SECONDS
# by the tasks' recent times, so slow tasks still go alone: their results come one by one, and a cancel
# stops them.
CHUNK = 8
CHUNK_SECONDS = 0.02
PURGE_EVERY = 60.0
WEBHOOK_POLL = 0.5         # seconds between looks for webhooks due (a job that ended, a retry whose time came)


@dataclass
class Flight:
    """A claimed task submitted to the pool."""

    claim: Claim
    future: Future
    running_since: float | None = None   # monotonic time it was first seen running on a worker
    started_at: float | None = None      # the same, as unix time for the store
    index: int | None = None             # its place in its chunk's outcomes (None: the future is its own)
    size: int = 1                        # the tasks of its chunk
    submitted: float = 0.0               # monotonic time it was handed to the pool

    def outcome(self) -> object:
        """The task's result; raises what its task (or the pool) raised."""
        value = self.future.result()
        if self.index is None:
            return value
        value = value[self.index]
        if isinstance(value, BaseException):
            raise value
        return value


def process_is_dead(pid: int, started: float | None) -> bool:
    """Whether the process that had this pid (and start time) no longer runs."""
    try:
        proc = psutil.Process(pid)
        return started is not None and abs(proc.create_time() - started) > 1.0 or proc.status() == "zombie"
    except psutil.NoSuchProcess:
        return True


class Dispatcher:
    """One dispatcher over one pool; `run` until stopped."""

    def __init__(self, store: Store, settings: Settings, make_pool: Callable[[], Executor], *, workers: int,
                 engine: str, dispatcher_id: str | None = None, task: Callable[..., Result] = process,
                 drain_seconds: float = 10.0, parent_pid: int | None = None) -> None:
        self.store, self.settings, self.make_pool = store, settings, make_pool
        self.workers, self.engine, self.task = workers, engine, task
        self.host = socket.gethostname()
        self.id = dispatcher_id or f"{self.host}-{os.getpid()}-{os.urandom(4).hex()}"
        self.drain_seconds, self.parent_pid = drain_seconds, parent_pid
        self.flights: dict[int, Flight] = {}
        self.pool: Executor | None = None
        self.recorder: Recorder | None = None
        self.hooks: WebhookSender | None = None
        self._due: dict[str, float] = {}
        self._dropped: list[Future] = []   # futures of tasks no longer ours that may still run
        self._broken = False
        self._beating_since: float | None = None   # monotonic time of the first heartbeat of this run
        self._task_seconds: float | None = None   # a moving average of one task's time on a worker
        self.watch = store.database.watch()
        self.blobs = blob_location(store.settings)   # where the workers read inputs and write results
        self.bell = Doorbell()   # rung when a flight finishes, so the loop sleeps on commits and flights at once

    def run(self, stop: threading.Event) -> str:
        """Claim, submit and record until stop is set; return STOPPED, or RESTART if this process must end."""
        me = psutil.Process()
        self.store.recover_dead(self.host, process_is_dead)
        self.store.requeue_expired()
        self.store.register_dispatcher(self.id, host=self.host, pid=me.pid, pid_started=me.create_time(),
                                       engine=self.engine, workers=self.workers)
        self.pool = self.make_pool()
        self.recorder = Recorder(self.store, self.id)
        if self.settings.webhook_secret:   # without one a node leaves webhooks to those that can sign them
            self.hooks = WebhookSender(self.store, self.settings, self.id)
        log.info("dispatcher %s: %d %s workers on %s", self.id, self.workers, self.engine,
                 self.settings.data_dir)
        poll = POLL_MIN
        clean = False
        try:
            while not stop.is_set() and not self._orphaned():
                if self.recorder.error is not None:  # the store is failing: end, so the tasks run again
                    raise self.recorder.error
                now = time.monotonic()
                self._housekeeping(now)
                broken = self._record_done()
                if broken or self._broken:
                    self._rebuild(broken)
                    continue
                runaway = self._runaway(now)
                if runaway is not None:
                    if self._end_runaway(runaway) == RESTART:
                        clean = True
                        return RESTART
                    continue
                claimed = self._fill()
                poll = POLL_MIN if claimed else min(poll * 2, POLL_MAX)
                full = self._in_flight() >= 2 * self.workers or self._isolating()
                self._wait(BUSY_TICK if full else poll, stop, watch=not full)
            outcome = self._shutdown()
            clean = True
            return outcome
        finally:
            self.recorder.close()
            if self.hooks is not None:
                self.hooks.close()
            self.watch.close()
            self.bell.close()
            if clean:
                self.store.stop_dispatcher(self.id)
            else:  # left as running: whoever starts next requeues its tasks at once, counting the attempt
                for flight in self.flights.values():   # results staged by now will never be recorded
                    flight.future.add_done_callback(partial(self._discard, index=flight.index))
                self._end_pool(kill=True)

    def _in_flight(self) -> int:
        """Futures in flight (a chunk of tasks is one)."""
        return len({id(f.future) for f in self.flights.values()})

    def _fill(self) -> int:
        """Claim and submit enough to keep two futures per worker in flight: single tasks, or chunks of up to
        CHUNK when more are queued than that."""
        if self._isolating():
            return 0
        room = 2 * self.workers - self._in_flight()
        if room <= 0:
            return 0
        most = self._chunk_size()
        claims = self.store.claim(self.id, room * most, busy=bool(self.flights))
        runnable = [(c, p) for c in claims if (p := self._pipeline(c)) is not None]
        small = [(c, p) for c, p in runnable if c.input_data is not None]
        singles = [[item] for item in runnable if item[0].input_data is None]
        size = max(1, -(-len(small) // max(1, room - len(singles))))   # spread: every worker gets some
        chunks = singles + [small[i:i + size] for i in range(0, len(small), size)]
        for chunk in chunks[:room]:
            self._submit(chunk)
        extra = [c.id for chunk in chunks[room:] for c, _ in chunk]   # large inputs past the room: later
        if extra:
            self.store.release(self.id, extra)
        return len(claims) - len(extra)

    def _chunk_size(self) -> int:
        """How many small tasks one message may carry: CHUNK_SECONDS of them at their recent pace."""
        if self._task_seconds is None:
            return 1
        return max(1, min(CHUNK, int(CHUNK_SECONDS / max(self._task_seconds, 1e-6))))

    def _pipeline(self, claim: Claim) -> Pipeline | None:
        try:
            return parse_pipeline(claim.pipeline)
        except PixmillError as exc:
            self.store.fail(self.id, claim.id, exc.message)
            return None

    def _submit(self, chunk: list[tuple[Claim, Pipeline]]) -> None:
        ids = [claim.id for claim, _ in chunk]
        if self._broken:
            self.store.release(self.id, ids)
            return
        options = {"max_pixels": self.settings.max_pixels, "task": self.task,
                   "inline_bytes": self.store.settings.inline_bytes}
        try:  # the worker reads the input and writes the result itself: only keys pass through here
            if len(chunk) == 1:
                [(claim, pipeline)] = chunk
                future = self.pool.submit(run_stored, self.blobs, claim.input_blob, pipeline, claim.output,
                                          data=claim.input_data, **options)
            else:
                future = self.pool.submit(run_many, self.blobs, [(c.input_blob, p, c.output, c.input_data)
                                                                 for c, p in chunk], **options)
        except BrokenExecutor:  # the pool died before we noticed: these tasks never ran
            self.store.release(self.id, ids)
            self._broken = True
            return
        now = time.monotonic()
        for i, (claim, _) in enumerate(chunk):
            index = None if len(chunk) == 1 else i
            self.flights[claim.id] = Flight(claim, future, index=index, size=len(chunk), submitted=now)
            if claim.suspect:
                log.info("task %s/%d (%s) was in flight when a pool died; running it alone",
                         claim.job_id, claim.n, claim.name)
        future.add_done_callback(self.bell.ring)

    def _record_done(self) -> list[int]:
        """Record every finished flight; return the ids lost to a broken pool (empty if none)."""
        broken: list[int] = []
        now = time.monotonic()
        for task_id, flight in list(self.flights.items()):
            if not flight.future.done():
                continue
            took = (now - (flight.running_since or flight.submitted)) / flight.size   # an upper bound
            self._task_seconds = took if self._task_seconds is None else 0.8 * self._task_seconds + 0.2 * took
            try:
                result = flight.outcome()
            except BrokenExecutor:
                broken.append(task_id)
                continue
            except CancelledError:  # never ran
                self.store.release(self.id, [task_id])
            except StoreUnavailable as exc:  # the blob backend is away for now: the task runs again, uncounted
                log.warning("task %d: %s; back to the queue", task_id, exc.message)
                self.store.release(self.id, [task_id])
            except PixmillError as exc:
                self.store.fail(self.id, task_id, exc.message, started_at=flight.started_at)
            except Exception as exc:  # e.g. a result that cannot be pickled: the task fails, not the pool
                self.store.fail(self.id, task_id, f"{type(exc).__name__}: {exc}", started_at=flight.started_at)
            else:
                self.recorder.put(task_id, result, flight.started_at, flight.claim.claims)
            del self.flights[task_id]
        if broken:  # whatever else was in flight went down with the pool too
            broken += [i for i, f in self.flights.items() if i not in broken and not f.future.done()]
        return broken

    def _rebuild(self, lost: list[int]) -> None:
        log.warning("the worker pool broke with %d tasks in flight; rebuilding it", len(lost))
        self.store.crashed(self.id, lost)
        for task_id in lost:
            self.flights.pop(task_id, None)
        self._end_pool(kill=True)
        self.pool = self.make_pool()
        self._broken = False

    def _runaway(self, now: float) -> Flight | None:
        """Note when flights start running; return one that has run past the time limit."""
        for flight in self.flights.values():
            if flight.running_since is None and flight.future.running():
                flight.running_since, flight.started_at = now, time.time()
            if flight.running_since is not None and \
                    now - flight.running_since > self.settings.task_timeout * flight.size:
                return flight
        return None

    def _end_runaway(self, flight: Flight) -> str | None:
        if flight.size > 1:
            return self._end_runaway_chunk(flight)
        claim = flight.claim
        log.warning("task %s/%d (%s) ran past %g s; ending the pool", claim.job_id, claim.n, claim.name,
                    self.settings.task_timeout)
        message = TaskTimeout(f"processing took longer than {self.settings.task_timeout:g} s, "
                              f"the time limit for one image").message
        self._record_done()  # keep what already finished
        self.store.timed_out(self.id, claim.id, message, others=list(self.flights))
        self.flights.clear()
        if not isinstance(self.pool, ProcessPoolExecutor):
            return RESTART  # ending an MPI worker ends this process too: let the supervisor restart it
        self._end_pool(kill=True)
        self.pool = self.make_pool()
        return None

    def _end_runaway_chunk(self, flight: Flight) -> str | None:
        """A chunk ran past its time: which of its images is to blame is unknown, so each of them runs again
        alone (a suspect), uncounted, where the one that runs away fails by itself."""
        log.warning("a chunk of %d tasks ran past %g s each; ending the pool, its tasks run again alone",
                    flight.size, self.settings.task_timeout)
        self._record_done()  # keep what already finished
        chunk = [i for i, f in self.flights.items() if f.future is flight.future]
        self.store.isolate(self.id, chunk)
        self.store.release(self.id, [i for i in self.flights if i not in chunk])
        self.flights.clear()
        if not isinstance(self.pool, ProcessPoolExecutor):
            return RESTART
        self._end_pool(kill=True)
        self.pool = self.make_pool()
        return None

    def _shutdown(self) -> str:
        """Stop claiming, let in-flight tasks finish for a while, then put the rest back uncounted."""
        deadline = time.monotonic() + self.drain_seconds
        while self.flights and time.monotonic() < deadline:
            wait([f.future for f in self.flights.values()], timeout=0.2, return_when=FIRST_COMPLETED)
            broken = self._record_done()
            if broken:
                self.store.crashed(self.id, broken)
                for task_id in broken:
                    self.flights.pop(task_id, None)
        busy = bool(self.flights) or any(not f.done() for f in self._dropped)
        if self.flights:
            log.info("stopping: %d unfinished tasks go back to the queue", len(self.flights))
            self.store.release(self.id, list(self.flights))
            self.flights.clear()
        self._end_pool(kill=busy)
        return STOPPED

    def _end_pool(self, *, kill: bool) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        if not kill:
            pool.shutdown(wait=True)  # nothing is running: a clean, quick shutdown
            return
        if isinstance(pool, ProcessPoolExecutor):
            for proc in list(getattr(pool, "_processes", {}).values()):  # a runaway never returns by itself
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def _housekeeping(self, now: float) -> None:
        if self._is_due("renew", now, self._beat_every()):
            held = self.store.renew(self.id, workers=self.workers)
            if self._beating_since is None:
                self._beating_since = now
            self._dropped = [f for f in self._dropped if not f.done()]
            for task_id in [i for i in self.flights if i not in held]:
                flight = self.flights.pop(task_id)  # its job was cancelled or deleted
                shared = any(f.future is flight.future for f in self.flights.values())   # a chunk goes on
                if shared or not flight.future.cancel():
                    flight.future.add_done_callback(partial(self._discard, index=flight.index))
                    self._dropped.append(flight.future)
        if self._is_due("expired", now, self.settings.lease_seconds / 2):
            self.store.requeue_expired()
        # Another node's silence means it died only if this one has been beating all along: after an
        # outage of the database every node was silent, and none of them is dead for that.
        timeout = self.settings.heartbeat_timeout
        if self._is_due("silent", now, self._beat_every()) and self._beating_since is not None \
                and now - self._beating_since > timeout:
            if requeued := self.store.requeue_silent(self.id, silent_for=timeout):
                log.warning("dispatcher %s: %d tasks of silent dispatchers requeued", self.id, requeued)
        if self.hooks is not None and self._is_due("webhooks", now, WEBHOOK_POLL):
            self.hooks.poll()
        if self._is_due("purge", now, PURGE_EVERY):
            self.store.purge_expired()

    def _discard(self, future: Future, index: int | None = None) -> None:
        """Delete the staged result of a task that is no longer ours (it will never be recorded); index: its
        place in a chunk's outcomes."""
        try:
            result = future.result() if index is None else future.result()[index]
            if isinstance(result, StoredResult):
                self.store.blobs.discard(result.staged)
        except Exception:  # it failed, or the pool broke: nothing was staged, or purge finds it later
            pass

    def _beat_every(self) -> float:
        return min(2.0, self.settings.lease_seconds / 3, self.settings.heartbeat_timeout / 4)

    def _is_due(self, name: str, now: float, every: float) -> bool:
        if now < self._due.get(name, 0.0):
            return False
        self._due[name] = now + every
        return True

    def _isolating(self) -> bool:
        return any(f.claim.suspect for f in self.flights.values())

    def _orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _wait(self, seconds: float, stop: threading.Event, *, watch: bool = True) -> None:
        """Wait up to seconds for a flight to finish, stop, or (if watch) a commit to the database."""
        pending = [f.future for f in self.flights.values() if not f.future.done()]
        if len(pending) != len(self.flights):
            return  # something to record now
        if not watch or not self.watch.active:
            if pending:
                wait(pending, timeout=seconds, return_when=FIRST_COMPLETED)
            else:
                stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not stop.is_set():  # sleep in the kernel until a commit or a finished flight
            left = deadline - time.monotonic()
            if left <= 0 or self.watch.wait(min(left, WATCH_IDLE_TICK), bell=self.bell):
                return


def load_task(spec: str) -> Callable[..., Result]:
    """The function named by 'module:function' (it must be importable in the workers too)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_dispatcher(settings: Settings, *, dispatcher_id: str | None = None, task: str | None = None,
                   parent_pid: int | None = None, make_pool: Callable[[], Executor] | None = None,
                   workers: int | None = None, engine: str | None = None) -> int:
    """Run one dispatcher in this process until SIGTERM/SIGINT; return the exit status (EXIT_RESTART: start anew).

    The pool is make_executor(settings.engine, settings.worker_count()) with the settings' back-off caps,
    unless make_pool is given."""
    from .backoff import Backoff
    from .engine import make_executor

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    workers = workers or settings.worker_count()
    engine = engine or settings.engine
    make_pool = make_pool or (lambda: make_executor(engine, workers, backoff=Backoff.from_settings(settings)))
    with Store.open(settings) as store:
        dispatcher = Dispatcher(store, settings, lambda: _bootup(make_pool()), workers=workers, engine=engine,
                                dispatcher_id=dispatcher_id, task=load_task(task) if task else process,
                                parent_pid=parent_pid)
        outcome = dispatcher.run(stop)
    return 0 if outcome == STOPPED else EXIT_RESTART


def _bootup(pool: Executor) -> Executor:
    bootup = getattr(pool, "bootup", None)  # start MPI workers now rather than at the first task
    if bootup is not None:
        bootup(wait=True)
    return pool


def main(argv: list[str] | None = None) -> None:
    """Entry point of the dispatcher process a Supervisor starts; settings come from PIXMILL_* variables."""
    parser = argparse.ArgumentParser(prog="python -m pixmill.worker.dispatcher")
    parser.add_argument("--id", dest="dispatcher_id")
    parser.add_argument("--task", help="module:function to run instead of pixmill.process:process (tests)")
    parser.add_argument("--parent", type=int, help="stop when this parent process is gone")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        status = run_dispatcher(load_settings(), dispatcher_id=args.dispatcher_id, task=args.task,
                                parent_pid=args.parent)
    except Exception:  # e.g. the store is failing: the supervisor starts a new dispatcher
        log.exception("the dispatcher failed")
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # never wait on MPI's exit handlers: the pool is already dealt with


if __name__ == "__main__":
    main()
