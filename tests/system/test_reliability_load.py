"""Load: 50 concurrent clients send 10 images each to a real `pixmill serve` (MPI workers) on 127.0.0.1.

Half use the original form (POST /upload), half the JSON API; each client has an API token of its
own. Every result must equal process() run in this process, every client must see its own jobs
only (another client's job is 404 with its token), and there must be no error at all. The p99 of
GET /api/v1/jobs/{id} under this load is printed, not asserted (the machine is shared).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from support.jobs_tasks import make_png
from support.servers import ORIGINAL_OPS, running_server

CLIENTS = 50
PER_CLIENT = 10
POLL = 0.2
TOKENS = [f"load-client-{i:02d}-{'k' * 16}" for i in range(CLIENTS)]


@dataclass
class Client:
    """One simulated client: its token, images, operations, and what it saw."""

    n: int
    images: list[bytes]
    ops: list[str]
    job_id: str | None = None
    latencies: list[tuple[float, float]] = field(default_factory=list)   # (when it began, seconds)
    uploaded: float = 0.0                                                 # when the upload was answered
    errors: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {TOKENS[self.n]}"}


def run_client(url: str, client: Client, start: threading.Barrier) -> None:
    """Upload, poll until done, fetch every result; record latencies and anything unexpected."""
    session = requests.Session()
    session.headers.update(client.headers)
    names = [f"c{client.n:02d}-{i}.png" for i in range(PER_CLIENT)]
    files = [("files", (name, data)) for name, data in zip(names, client.images)]
    start.wait(60)
    try:
        if client.n % 2:
            answer = session.post(url + "upload", files=files + [("operations", (None, op)) for op in client.ops],
                                  timeout=120)
            if answer.status_code != 200:
                client.errors.append(f"/upload: {answer.status_code} {answer.text[:200]}")
                return
            client.job_id = answer.json()["job_id"]
            client.uploaded = time.perf_counter()
        else:
            answer = session.post(url + "api/v1/jobs", files=files, data={"operations": client.ops}, timeout=120)
            if answer.status_code != 202:
                client.errors.append(f"POST /api/v1/jobs: {answer.status_code} {answer.text[:200]}")
                return
            client.job_id = answer.json()["id"]
            client.uploaded = time.perf_counter()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            began = time.perf_counter()
            answer = session.get(f"{url}api/v1/jobs/{client.job_id}", timeout=60)
            client.latencies.append((began, time.perf_counter() - began))
            if answer.status_code != 200:
                client.errors.append(f"GET job: {answer.status_code} {answer.text[:200]}")
                return
            job = answer.json()
            if job["state"] == "done":
                break
            time.sleep(POLL)
        else:
            client.errors.append(f"job {client.job_id} did not end within 300 s")
            return
        if [t["name"] for t in job["tasks"]] != names:
            client.errors.append(f"the job's tasks are not this client's: {[t['name'] for t in job['tasks']]}")
        for task, data, op in zip(job["tasks"], client.images, client.ops):
            result = session.get(task["result_url"], timeout=60)
            want = process(data, parse_pipeline(op), Output()).data
            if task["state"] != "done" or result.status_code != 200 or result.content != want:
                client.errors.append(f"{task['name']} {op}: {task['state']} {result.status_code}, "
                                     f"{'same' if result.content == want else 'different'} bytes")
    except requests.RequestException as exc:
        client.errors.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.mpi
@pytest.mark.slow
def test_fifty_clients_ten_images_each_all_correct_and_private(tmp_path):
    ops = itertools.cycle(ORIGINAL_OPS + ["grayscale | blur(ksize=3)"])
    clients = [Client(n, [make_png(5000 + n * PER_CLIENT + i, size=(64, 64)) for i in range(PER_CLIENT)],
                      [next(ops) for _ in range(PER_CLIENT)]) for n in range(CLIENTS)]
    env = {"PIXMILL_API_TOKENS": ",".join(TOKENS)}          # the default 8 server threads
    with running_server(tmp_path / "serve", engine="mpi", workers=2, env=env) as server:
        start = threading.Barrier(CLIENTS)
        began = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(lambda c: run_client(server.url, c, start), clients))
        seconds = time.monotonic() - began
        errors = [f"client {c.n}: {e}" for c in clients for e in c.errors]
        # privacy: each client's token sees its own job, and another client's job is 404
        for client in clients:
            if client.job_id is None:
                continue
            for other in (clients[(client.n + k) % CLIENTS] for k in (1, 2, 25)):
                answer = requests.get(f"{server.url}api/v1/jobs/{client.job_id}", headers=other.headers, timeout=30)
                if answer.status_code != 404:
                    errors.append(f"client {other.n} got {answer.status_code} for client {client.n}'s job")
                result = requests.get(f"{server.url}api/v1/jobs/{client.job_id}/tasks/0/result",
                                      headers=other.headers, timeout=30)
                if result.status_code != 404:
                    errors.append(f"client {other.n} got {result.status_code} for client {client.n}'s result")
            if requests.get(f"{server.url}api/v1/jobs/{client.job_id}", timeout=30).status_code != 401:
                errors.append(f"client {client.n}'s job answered without a token")
    uploads_ended = max(c.uploaded for c in clients)
    every = percentiles([s for c in clients for _, s in c.latencies])
    after = percentiles([s for c in clients for t, s in c.latencies if t > uploads_ended])
    print(f"\nload: {CLIENTS} clients x {PER_CLIENT} images in {seconds:.1f} s; GET /api/v1/jobs/{{id}}: {every}; "
          f"after the last upload was answered: {after}")
    assert not errors, "\n".join(errors[:30])
    assert all(c.job_id for c in clients)


def percentiles(seconds: list[float]) -> str:
    """'N requests, p50 .. ms, p99 .. ms, max .. ms'."""
    if not seconds:
        return "no requests"
    seconds = sorted(seconds)
    p50, p99 = seconds[len(seconds) // 2], seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]
    return (f"{len(seconds)} requests, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {seconds[-1] * 1000:.0f} ms")
