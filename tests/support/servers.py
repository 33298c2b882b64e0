"""A real `pixmill serve` on 127.0.0.1 for system tests: start it, wait for it, stop it and all it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

REAL = Path(__file__).parents[1] / "data" / "real"
HOSTILE_DIR = Path(__file__).parents[1] / "data" / "hostile_real"
ORIGINAL_OPS = ["edge_detection", "color_inversion", "grayscale", "blur", "threshold", "resize"]


class Server:
    """A running `pixmill serve` child: its URL and process."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path.lstrip("/"), timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path.lstrip("/"), timeout=60, **kw)

    def dispatcher_pids(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)
                if "pixmill.worker.dispatcher" in " ".join(_cmdline(p))]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _healthy(server: Server) -> bool:
    try:
        return server.get("/healthz").status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running_server(folder: Path, *, engine: str = "mpi", workers: int = 2, env: dict | None = None,
                   timeout: float = 120.0, args: tuple[str, ...] = (), healthy: bool = True) -> Iterator[Server]:
    """Start `pixmill serve` (with args) on a free port of 127.0.0.1, and wait until it listens and, if
    `healthy`, has live workers; stop it with SIGTERM and kill whatever is left."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "serve.out", folder / "serve.err"
    bindir = str(Path(sys.executable).parent)          # mpiexec of the mpich wheel lives here
    environ = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
    cmd = [sys.executable, "-m", "pixmill.cli.serve", "--host", "127.0.0.1", "--port", "0",
           "--engine", engine, "--workers", str(workers), "--data-dir", str(folder / "data"), *args]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=environ, start_new_session=True)
    family: set[int] = set()
    try:
        url = wait_for(lambda: (re.findall(r"serving on (http://127\.0\.0\.1:\d+/)", out.read_text())
                                or [None])[0] or _died(proc, err), timeout, "the server to listen")
        server = Server(url, proc, err)
        if healthy:
            wait_for(lambda: _healthy(server) or _died(proc, err), timeout, "workers to be alive")
        yield server
    finally:
        family = _descendants(proc.pid)
        stop_server(proc)
        _kill_all(family)


def _died(proc: subprocess.Popen, err: Path) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"pixmill serve exited with {proc.returncode}:\n{err.read_text()[-3000:]}")


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def stop_server(proc: subprocess.Popen, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal the server to stop (SIGTERM, or SIGINT as Ctrl-C), then SIGKILL its group if it is still there."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.Error:
            pass
    return out
