"""Hostile input through HTTP against a real `pixmill serve` (MPI workers) on 127.0.0.1.

Every file of tests/data/hostile_real and every file tests/support/hostile.py generates is uploaded, one per
job and then mixed into jobs with good images. Each one gets a 4xx that names it, or a task that
ends (done, or failed with a reason) within 15 s; the good images beside it succeed; nothing gets a
5xx; the dispatcher never restarts; and /healthz, polled all along from a process of its own, answers 200
within 200 ms every time.
"""

from __future__ import annotations

import contextlib
import io
import re
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from test_hostile import EXTRA_EXPECT, GENERATED_EXPECT, REAL_EXPECT, Ok

from pixmill.config import Settings
from pixmill.store import Store
from pixmill.web import create_app
from support import hostile
from support.servers import Server, running_server
from support.web import make_client

HOSTILE_REAL = Path(__file__).parents[1] / "data" / "hostile_real"
REAL = Path(__file__).parents[1] / "data" / "real"
GOOD = ["sk_camera.png", "sk_rocket.jpg", "pil_hopper.bmp"]
SETTLE = 15.0           # seconds from upload until a file's task has ended
HEALTH_LIMIT = 0.2      # seconds /healthz may take
REFUSALS = (400, 413, 415, 422)


PROBE = """
import os, sys, time, http.client, select
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while not select.select([sys.stdin], [], [], interval)[0]:   # until the test writes a line
    began = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
        conn.close()
    except OSError:
        status = 0
    print(status, time.perf_counter() - began, flush=True)
"""


class HealthProbe:
    """Polls /healthz from a process of its own (so this process's GIL never delays it); keeps
    every (status, seconds) it saw."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        host, port = server.url.split("//")[1].rstrip("/").split(":")
        self.command = [sys.executable, "-c", PROBE, host, port, str(interval)]
        self.seen: list[tuple[int, float]] = []
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> HealthProbe:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        # Wait for its first answer: on a fast machine the test's requests could otherwise all be
        # over before the probe's interpreter has started, and it would see too few answers.
        if select.select([self.proc.stdout], [], [], 30)[0]:
            self._keep(self.proc.stdout.readline())
        return self

    def __exit__(self, *exc) -> None:
        try:
            out, _ = self.proc.communicate("stop\n", timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        for line in out.splitlines():
            self._keep(line)

    def _keep(self, line: str) -> None:
        if line.strip():
            status, seconds = line.split()
            self.seen.append((int(status), float(seconds)))

    def check(self, minimum: int = 10) -> None:
        slow = sorted(s for _, s in self.seen)
        bad = [(status, round(s, 3)) for status, s in self.seen if status != 200 or s > HEALTH_LIMIT]
        print(f"/healthz: {len(self.seen)} answers, max {slow[-1] * 1000:.0f} ms, "
              f"median {slow[len(slow) // 2] * 1000:.0f} ms")
        assert len(self.seen) >= minimum and not bad, f"/healthz was not 200 within 200 ms: {bad[:20]}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    """Every hostile file by name, real and generated."""
    out = tmp_path_factory.mktemp("hostile-gen")
    hostile.generate(out)
    found = {p.name: p.read_bytes() for p in sorted(HOSTILE_REAL.iterdir()) if p.is_file()}
    found.update({p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()})
    assert len(found) == len(REAL_EXPECT) + len(GENERATED_EXPECT) + len(EXTRA_EXPECT)
    return found


def expectation(name: str):
    expect = {**REAL_EXPECT, **GENERATED_EXPECT, **EXTRA_EXPECT}[name]
    return expect if isinstance(expect, tuple) else (expect,)


def wait_ended(server: Server, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = server.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def upload(server: Server, parts: list[tuple[str, bytes]], pipeline: str = "blur") -> requests.Response:
    return server.post("/api/v1/jobs", files=[("files", part) for part in parts], data={"pipeline": pipeline})


def one_file(server: Server, name: str, data: bytes) -> tuple[str, int, dict | None, float]:
    """Upload one file alone and follow its job; (name, status, ended job or refusal, seconds)."""
    began = time.monotonic()
    response = upload(server, [(name, data)])
    if response.status_code != 202:
        return name, response.status_code, response.json(), time.monotonic() - began
    job = wait_ended(server, response.json()["id"], SETTLE + 5)
    return name, 202, job, time.monotonic() - began


def check_task(server: Server, name: str, task: dict) -> None:
    """A task ended: done with a result of its reported size, or failed with a reason (422 at its URL)."""
    result = requests.get(task["result_url"], timeout=30)
    if task["state"] == "done":
        assert result.status_code == 200 and result.content, name
    else:
        assert task["state"] == "failed" and task["error"], (name, task)
        assert result.status_code == 422 and name in result.json()["message"], (name, result.text)


@pytest.mark.mpi
@pytest.mark.slow
def test_each_hostile_file_alone_is_refused_or_ends_within_15_s(mpi_server: Server, files):
    server = mpi_server
    dispatchers = server.dispatcher_pids()
    with HealthProbe(server) as probe, ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda item: one_file(server, *item), files.items()))
    summary = {"refused": 0, "done": 0, "failed": 0}
    for name, status, body, seconds in outcomes:
        assert status in (202, *REFUSALS), (name, status, body)
        expect = expectation(name)
        if status != 202:
            summary["refused"] += 1
            assert name in body["message"], (name, body)
            assert not any(isinstance(e, Ok) for e in expect) or len(expect) > 1, (name, body)
            continue
        task = body["tasks"][0]
        assert body["state"] == "done" and seconds <= SETTLE, (name, f"{seconds:.1f} s", task)
        summary[task["state"]] += 1
        ok = [e for e in expect if isinstance(e, Ok)]
        if task["state"] == "done":
            assert ok and any((task["width"], task["height"]) == (e.width, e.height) for e in ok), (name, task)
        else:
            assert len(ok) < len(expect), (name, "should have been processed", task)
        check_task(server, name, task)
    print(f"{len(files)} hostile files alone: {summary}; slowest {max(o[3] for o in outcomes):.1f} s")
    probe.check()
    assert server.dispatcher_pids() == dispatchers, "the dispatcher restarted"
    assert "exited with status" not in server.log.read_text() and "pool broke" not in server.log.read_text()


@pytest.mark.mpi
@pytest.mark.slow
def test_hostile_files_mixed_with_good_images(mpi_server: Server, files):
    server = mpi_server
    good = [(n, (REAL / n).read_bytes()) for n in GOOD]
    dispatchers = server.dispatcher_pids()
    accepted, refused = [], []
    with HealthProbe(server) as probe:
        for name, data in files.items():
            # good, hostile, good: a hostile file refused at the edge refuses the request, naming it
            response = upload(server, [good[0], (name, data), good[1]], pipeline="grayscale | blur")
            assert response.status_code in (202, *REFUSALS), (name, response.status_code, response.text)
            if response.status_code == 202:
                accepted.append(name)
                assert requests.delete(response.json()["status_url"], timeout=30).status_code == 204
            else:
                refused.append(name)
                assert name in response.json()["message"], (name, response.text)
        # every file that passes the edge, in one job between good images
        parts = []
        for name in accepted:
            parts += [good[len(parts) % 3], (name, files[name])]
        began = time.monotonic()
        response = upload(server, parts + [good[2]], pipeline="grayscale | blur")
        assert response.status_code == 202, response.text
        job = wait_ended(server, response.json()["id"], 120)
        seconds = time.monotonic() - began
        # the refused ones are dropped from a retry of the same request, as a client would
        legacy = server.post("/upload", files=[("files", g) for g in good] + [("operations", (None, "threshold"))] * 3)
        assert legacy.status_code == 200, legacy.text
    assert job["state"] == "done", job["counts"]
    print(f"mixed job: {len(parts) + 1} images ({len(accepted)} hostile) ended in {seconds:.1f} s, "
          f"{job['counts']}; {len(refused)} refused at the edge")
    for task in job["tasks"]:
        if task["name"] in GOOD:
            assert task["state"] == "done", task
        check_task(server, task["name"], task)
    legacy_job = wait_ended(server, legacy.json()["job_id"], SETTLE)
    assert legacy_job["counts"]["done"] == 3
    probe.check()
    assert server.dispatcher_pids() == dispatchers, "the dispatcher restarted"
    assert "exited with status" not in server.log.read_text() and "pool broke" not in server.log.read_text()


def test_a_valid_file_longer_than_the_checked_head_is_not_called_damaged(tmp_path, files):
    """Regression: ztxt_bomb.png (260 KB of text chunk) arrives whole in one read; the header check on
    its first 256 KB must not call it truncated when the rest of the part is already buffered."""
    settings = Settings(data_dir=tmp_path / "data")
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        data = files["ztxt_bomb.png"]
        assert len(data) > 256 * 1024
        response = client.post("/api/v1/jobs", data={"files": [(io.BytesIO(data), "ztxt_bomb.png")],
                                                     "pipeline": "blur"}, content_type="multipart/form-data")
        assert response.status_code == 202, response.get_json()


# ---- hostile HTTP itself: garbage, huge headers, lying lengths, aborted and slow uploads

BOUNDARY = "hostile-http-boundary"


def exchange(url: str, raw: bytes, *, read: bool = True, timeout: float = 15.0) -> bytes:
    """Send raw bytes to the server and return what it answers (until it closes or the timeout)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        with contextlib.suppress(OSError):
            conn.sendall(raw)
        if not read:
            return b""
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and len(answer) > 16 and not answer.startswith(b"HTTP/1.1 100"):
                    head = answer.split(b"\r\n\r\n")[0].lower()
                    length = re.search(rb"content-length: *(\d+)", head)
                    if length and len(answer.split(b"\r\n\r\n", 1)[1]) >= int(length.group(1)):
                        break
        return answer


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else None


def form(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post_head(path: str, length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"{size}{extra}Connection: close\r\n\r\n").encode()


@pytest.mark.slow
def test_malformed_http_never_gets_a_5xx_or_leaves_anything_behind(tmp_path):
    limit = 1 << 20
    env = {"PIXMILL_MAX_REQUEST_BYTES": str(limit), "PIXMILL_MAX_FILE_BYTES": str(limit // 2)}
    image = (REAL / "sk_camera.png").read_bytes()
    with running_server(tmp_path / "serve", engine="local", workers=1, env=env) as server, \
            HealthProbe(server, interval=0.05) as probe:
        url, answers = server.url, {}
        slow = [socket.create_connection(("127.0.0.1", int(url.rstrip("/").rsplit(":", 1)[1])), timeout=5)
                for _ in range(30)]                         # slowloris: 30 connections that never finish
        try:
            for conn in slow:
                conn.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n--")
            answers["garbage"] = exchange(url, b"\x00\xff\xfe garbage \x01\r\n\r\n")
            answers["bad request line"] = exchange(url, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answers["huge header"] = exchange(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "
                                              + b"a" * 300_000 + b"\r\n\r\n")
            over = post_head("/api/v1/jobs", 5 * limit) + b"--" + BOUNDARY.encode()
            answers["body over the limit"] = exchange(url, over)
            big = form([("files", "big.png", bytes(3 * limit)), ("pipeline", None, b"blur")])
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 65536]), big[i:i + 65536])
                               for i in range(0, len(big), 65536)) + b"0\r\n\r\n"
            answers["chunked over the limit"] = exchange(url, post_head("/api/v1/jobs", None) + chunked)
            body = form([("files", "a.png", image), ("pipeline", None, b"blur")])
            answers["length too short"] = exchange(url, post_head("/api/v1/jobs", len(body) // 2) + body)
            answers["bad chunk size"] = exchange(url, post_head("/api/v1/jobs", None) + b"zz\r\nabc\r\n0\r\n\r\n")
            answers["epilogue"] = exchange(url, post_head("/api/v1/jobs", len(body) + 10) + body + b"-" * 10)
            fields = form([("x", None, b"y")] * 20000 + [("files", "a.png", image)])
            answers["20000 fields"] = exchange(url, post_head("/upload", len(fields)) + fields)
            answers["no boundary"] = exchange(url, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                              b"multipart/form-data\r\nContent-Length: 4\r\n"
                                              b"Connection: close\r\n\r\nabcd")
            for _ in range(20):                             # uploads cut off half way
                exchange(url, post_head("/api/v1/jobs", len(body)) + body[: len(body) // 2], read=False)
            ok = server.post("/api/v1/jobs", files=[("files", ("a.png", image))], data={"pipeline": "blur"})
        finally:
            for conn in slow:
                conn.close()
    for case, answer in answers.items():
        status = status_of(answer)
        print(f"{case}: {status or 'closed'}")
        assert status is None or 400 <= status < 500 or (case, status) == ("epilogue", 202), (case, answer[:300])
    assert status_of(answers["body over the limit"]) == 413
    assert status_of(answers["chunked over the limit"]) == 413
    assert ok.status_code == 202, ok.text
    probe.check(minimum=3)
    data_dir = tmp_path / "serve" / "data"
    files = {p.name for p in (data_dir / "blobs").rglob("*") if p.is_file()}
    with Store.open(Settings(data_dir=data_dir)) as store:
        jobs = store.list_jobs()
        used = {k for job in jobs for t in job.tasks for k in (t.input_blob, t.result_blob) if k}
    assert len(jobs) == 2                  # the two accepted uploads (one with an epilogue); none of the rest
    assert files == used, files - used     # nothing of the refused or cut-off uploads, not even a temp file
    assert "Traceback" not in server.log.read_text() and "unexpected error" not in server.log.read_text()
