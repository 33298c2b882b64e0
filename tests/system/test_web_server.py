"""`pixmill serve` as a real server on 127.0.0.1 with MPI workers: the original form, the JSON API, restarts."""

from __future__ import annotations

import itertools
import os
import re
import signal
import zipfile
from io import BytesIO

import pytest
import requests

from pixmill.errors import PixmillError
from pixmill.imaging import codec
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from support.servers import (
    ORIGINAL_OPS,
    REAL,
    _descendants,
    _healthy,
    alive,
    running_server,
    stop_server,
    wait_for,
)


def expected(name: str, spec: str) -> bytes | str:
    """What process() gives in this process: the bytes, or the error message."""
    try:
        return process((REAL / name).read_bytes(), parse_pipeline(spec), Output()).data
    except PixmillError as exc:
        return exc.message


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
        answer = wait_for(lambda: fetch(url), 300, f"{name} to be processed")  # noqa: B023 (run in this iteration)
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
