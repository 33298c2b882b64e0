"""The supervisor: runs the dispatcher as a child process and starts a new one whenever it dies.

The supervisor itself is not in MPI. With MPICH, one MPI worker dying aborts the whole MPI job
and SIGKILLs the process group of the process that spawned the pool, so the dispatcher runs in a
session of its own, and all that recovery needs is in the store: when the child dies, its tasks
go back to the queue at once with their attempt counted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from ..config import Settings
from ..store import Store
from .dispatcher import EXIT_RESTART

__all__ = ["Supervisor", "settings_environment"]

log = logging.getLogger("pixmill.supervisor")

RESTART_DELAY_MIN, RESTART_DELAY_MAX = 0.5, 30.0
QUICK_DEATH = 5.0   # seconds: a child that dies sooner than this is restarted with a growing delay


def settings_environment(settings: Settings) -> dict[str, str]:
    """PIXMILL_* variables from which load_settings() rebuilds these settings (API tokens left out)."""
    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name == "api_tokens":
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        env[f"PIXMILL_{f.name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    return env


class Supervisor:
    """Keeps one dispatcher child process running; start() it, then stop() it."""

    def __init__(self, settings: Settings, *, task: str | None = None, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.task = task              # "module:function" instead of process(), for tests
        self.env = env
        self.restarts = 0
        self.child: subprocess.Popen | None = None
        self.dispatcher_id: str | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._store: Store | None = None

    def start(self) -> None:
        """Start the dispatcher child and a thread that restarts it whenever it dies."""
        self._store = Store.open(self.settings)
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._watch, name="pixmill-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Ask the child to stop (SIGTERM: it finishes or releases its tasks), wait, then kill it."""
        with self._lock:
            self._stopping.set()
            child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("dispatcher %d did not stop within %g s; killing it", child.pid, timeout)
                _kill_group(child.pid)
                child.wait()
        if child is not None:
            _kill_group(child.pid)  # leftovers of a local pool share the child's process group
            self._recover()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._store is not None:
            self._store.close()
            self._store = None

    def wait(self) -> None:
        """Block until stop() has been called."""
        while not self._stopping.wait(1.0):
            pass

    @property
    def pid(self) -> int | None:
        """The dispatcher child's process id, if one is running."""
        child = self.child
        return child.pid if child is not None and child.poll() is None else None

    def _spawn(self) -> None:
        dispatcher_id = f"{os.uname().nodename}-{os.getpid()}-{self.restarts}-{os.urandom(3).hex()}"
        cmd = [sys.executable, "-m", "pixmill.worker.dispatcher", "--id", dispatcher_id, "--parent", str(os.getpid())]
        if self.task:
            cmd += ["--task", self.task]
        env = {**os.environ, **(self.env or {}), **settings_environment(self.settings)}
        bindir = str(Path(sys.executable).parent)  # the mpich wheel's mpiexec lives beside the interpreter
        if bindir not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        # A session of its own: MPI's abort kills the child's process group, never ours, and
        # a terminal's Ctrl-C reaches only the supervisor, which then stops the child cleanly.
        self.child = subprocess.Popen(cmd, env=env, start_new_session=True)
        self.dispatcher_id = dispatcher_id
        log.info("started dispatcher %s (pid %d)", dispatcher_id, self.child.pid)

    def _watch(self) -> None:
        delay = RESTART_DELAY_MIN / 2
        while not self._stopping.is_set():
            child = self.child
            began = time.monotonic()
            status = child.wait()
            if self._stopping.is_set():
                return
            _kill_group(child.pid)
            requeued = self._recover()
            log.warning("dispatcher %d exited with status %s; %d tasks requeued; restarting",
                        child.pid, status, requeued)
            # A child that dies while starting up (no mpiexec, a broken install) is restarted ever
            # more slowly; one that was at work (it held tasks, or ran a while), at once.
            quick = requeued == 0 and status != EXIT_RESTART and time.monotonic() - began < QUICK_DEATH
            delay = min(delay * 2, RESTART_DELAY_MAX) if quick else RESTART_DELAY_MIN
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._spawn()

    def _recover(self) -> int:
        store, dispatcher_id = self._store, self.dispatcher_id
        if store is None or dispatcher_id is None:
            return 0
        try:
            return store.requeue_dispatcher(dispatcher_id)
        except Exception as exc:  # the database is away: the next dispatcher, or another node, requeues them
            log.warning("could not requeue the tasks of dispatcher %s: %s", dispatcher_id, exc)
            return 0


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
