"""`pixmill serve` as a real server on 127.0.0.1 with MPI workers: the original form, the JSON API, restarts."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests

from pixmill import codec
from pixmill.errors import PixmillError
from pixmill.pipeline import parse_pipeline
from pixmill.process import Output, process

REAL = Path(__file__).parent / "data" / "real"
HOSTILE_DIR = Path(__file__).parent / "data" / "hostile_real"
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
                if "pixmill.dispatcher" in " ".join(_cmdline(p))]


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
                   timeout: float = 120.0) -> Iterator[Server]:
    """Start `pixmill serve` on a free port of 127.0.0.1; stop it with SIGTERM and kill whatever is left."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "serve.out", folder / "serve.err"
    bindir = str(Path(sys.executable).parent)          # mpiexec of the mpich wheel lives here
    environ = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
    cmd = [sys.executable, "-m", "pixmill.cli_serve", "--host", "127.0.0.1", "--port", "0",
           "--engine", engine, "--workers", str(workers), "--data-dir", str(folder / "data")]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=environ, start_new_session=True)
    family: set[int] = set()
    try:
        url = wait_for(lambda: (re.findall(r"serving on (http://127\.0\.0\.1:\d+/)", out.read_text())
                                or [None])[0] or _died(proc, err), timeout, "the server to listen")
        server = Server(url, proc, err)
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


def expected(name: str, spec: str) -> bytes | str:
    """What process() gives in this process: the bytes, or the error message."""
    try:
        return process((REAL / name).read_bytes(), parse_pipeline(spec), Output()).data
    except PixmillError as exc:
        return exc.message


@pytest.fixture(scope="module")
def mpi_server(tmp_path_factory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("serve"), engine="mpi", workers=2) as server:
        yield server
    assert server.proc.returncode == 0, server.log.read_text()[-2000:]    # SIGTERM is a clean stop


def _accepted(name: str) -> bool:
    try:
        codec.probe((REAL / name).read_bytes(), max_pixels=100_000_000)
        return True
    except PixmillError:
        return False


ALL = sorted(p.name for p in REAL.iterdir() if p.is_file() and p.suffix.lower() != ".md")
CORPUS = [n for n in ALL if _accepted(n)]          # sk_multipage_rgb.tif (planar TIFF) is refused at the edge
REFUSED = [n for n in ALL if n not in CORPUS]


@pytest.mark.mpi
@pytest.mark.slow
def test_original_form_processes_the_corpus_on_mpi_workers(mpi_server):
    ops = list(itertools.islice(itertools.cycle(ORIGINAL_OPS), len(CORPUS)))
    handles = [("files", (name, open(REAL / name, "rb"))) for name in CORPUS]
    try:
        response = mpi_server.post("/upload", files=handles + [("operations", (None, op)) for op in ops])
    finally:
        for _, (_, fh) in handles:
            fh.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"message", "processed_files"} and len(body["processed_files"]) == len(CORPUS)

    def fetch(url: str) -> requests.Response | None:
        answer = requests.get(url, timeout=30)
        assert answer.status_code in (200, 202, 422), answer.text
        return None if answer.status_code == 202 else answer

    for name in REFUSED:      # one refused file refuses the request, naming the file
        refused = mpi_server.post("/upload", files=[("files", (name, (REAL / name).read_bytes())),
                                                    ("operations", (None, "grayscale"))])
        assert refused.status_code == 415 and name in refused.json()["message"]

    for name, op, url in zip(CORPUS, ops, body["processed_files"]):
        answer = wait_for(lambda: fetch(url), 300, f"{name} to be processed")
        want = expected(name, op)
        if isinstance(want, bytes):
            assert answer.status_code == 200, f"{name}: {answer.text}"
            assert answer.content == want, f"{name} {op}: differs from process() in-process"
        else:
            assert answer.status_code == 422 and want in answer.json()["message"], (name, answer.text)


@pytest.mark.mpi
@pytest.mark.slow
def test_json_api_with_events_and_archive_on_mpi_workers(mpi_server):
    names = CORPUS[:6]
    pipeline = "grayscale | blur(ksize=7)"
    files = [("files", (n, (REAL / n).read_bytes())) for n in names]
    response = mpi_server.post("/api/v1/jobs", files=files, data={"pipeline": pipeline, "format": "png"})
    assert response.status_code == 202, response.text
    job = response.json()

    events = []
    with requests.get(job["events_url"], stream=True, timeout=(10, 120)) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
            if events and events[-1] == "end":
                break
    assert events[0] == "progress" and events[-1] == "end"

    done = mpi_server.get(f"/api/v1/jobs/{job['id']}").json()
    assert done["state"] == "done" and done["counts"]["done"] == len(names)
    archive = mpi_server.get(f"/api/v1/jobs/{job['id']}/archive")
    with zipfile.ZipFile(BytesIO(archive.content)) as zf:
        members = zf.namelist()
        assert len(members) == len(names) and all(m.endswith(".png") for m in members)
        want = process((REAL / names[0]).read_bytes(), parse_pipeline(pipeline), Output(format="png")).data
        assert zf.read(members[0]) == want
    metrics = mpi_server.get("/metrics").text
    assert re.search(r'pixmill_tasks\{state="done"\} [1-9]', metrics)
    assert "pixmill_workers 2.0" in metrics
    assert requests.delete(job["status_url"], timeout=30).status_code == 204


@pytest.mark.mpi
@pytest.mark.slow
def test_serve_restarts_a_killed_dispatcher_and_stops_cleanly_on_ctrl_c(tmp_path):
    with running_server(tmp_path / "one", engine="mpi", workers=1) as server:
        first = wait_for(server.dispatcher_pids, 30, "the dispatcher child")
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: (pids := server.dispatcher_pids()) and pids[0] != first[0], 60, "a new dispatcher")
        wait_for(lambda: _healthy(server), 120, "workers alive again")
        response = server.post("/upload", files=[("files", ("camera.png", (REAL / "sk_camera.png").read_bytes())),
                                                 ("operations", (None, "grayscale"))])
        url = response.json()["processed_files"][0]
        wait_for(lambda: requests.get(url, timeout=30).status_code == 200, 120, "the result")
        family = _descendants(server.proc.pid)
        assert stop_server(server.proc, sig=signal.SIGINT) == 0, server.log.read_text()[-2000:]
        wait_for(lambda: not alive(family), 30, "every child process to end")
        assert "stopped" in server.log.read_text()
