"""/healthz (the store answers and a worker's heartbeat is fresh) and /metrics (Prometheus text of the store)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pixmill.config import Settings
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import NewTask, Store
from pixmill.web import create_app
from pixmill.web.health import BUCKETS
from support.web import make_client

REAL = Path(__file__).parents[1] / "data" / "real"
IMAGE = (REAL / "pil_hopper.bmp").read_bytes()
PIPELINE = parse_pipeline("grayscale")


def register(store: Store, name: str, workers: int, *, age: float = 0.0) -> None:
    """A dispatcher of `workers` whose last heartbeat was `age` seconds ago."""
    then = time.time() - age
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: then)
        store.register_dispatcher(name, host="here", pid=1, pid_started=None, engine="local", workers=workers)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert response.headers["Cache-Control"] == "no-store"
    return samples(response.get_data(as_text=True))


# ---- /healthz

def test_healthz_is_503_without_any_worker(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "degraded", "store": "ok", "workers": 0, "nodes": []}


def test_healthz_is_200_with_live_workers_counting_every_dispatcher(client, store: Store):
    register(store, "one", 2, age=3)
    register(store, "two", 3)
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert {k: body[k] for k in ("status", "store", "workers")} == {"status": "ok", "store": "ok", "workers": 5}
    nodes = body["nodes"]           # each live dispatcher node, with its workers and its last heartbeat
    assert [(n["id"], n["host"], n["engine"], n["workers"]) for n in nodes] == [("one", "here", "local", 2),
                                                                            ("two", "here", "local", 3)]
    assert time.time() - 4 < nodes[0]["heartbeat"] < time.time() - 2 < nodes[1]["heartbeat"] <= time.time()


def test_healthz_leaves_out_stopped_dispatchers_and_stale_heartbeats(client, store: Store):
    register(store, "stopped", 4)
    store.stop_dispatcher("stopped")
    register(store, "silent", 2, age=60)
    assert client.get("/healthz").status_code == 503
    register(store, "alive", 1)
    assert client.get("/healthz").get_json()["workers"] == 1
    store.renew("silent", workers=2)                              # a heartbeat brings it back
    assert client.get("/healthz").get_json()["workers"] == 3


def test_healthz_is_503_naming_the_error_when_the_store_fails(client, store: Store, monkeypatch):
    register(store, "alive", 1)

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "live_dispatchers", broken)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "degraded", "store": "error: OperationalError", "workers": 0,
                                   "nodes": []}
    assert "disk I/O error" not in response.get_data(as_text=True)     # internals stay in the log


def test_healthz_and_metrics_need_no_token(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", api_tokens=("secret-token",))
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        register(store, "alive", 1)
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/api/v1/operations").status_code == 401


# ---- /metrics

def run_job(store: Store, *, seconds: list[float], failures: int = 0) -> None:
    """A job of len(seconds) + failures tasks: each of the first done after the given processing time."""
    tasks = [NewTask(f"img{i}.bmp", PIPELINE, store.put_blob(IMAGE), "bmp") for i in range(len(seconds) + failures)]
    store.create_job(tasks, Output())
    register(store, "metrics-test", 1)
    claims = store.claim("metrics-test", len(tasks), busy=False)
    result = process(IMAGE, PIPELINE)
    for claim, took in zip(claims, seconds):
        assert store.complete("metrics-test", claim.id, result, started_at=time.time() - took)
    for claim in claims[len(seconds):]:
        assert store.fail("metrics-test", claim.id, "broken")


def test_metrics_expose_the_task_counters_queue_and_workers(client, store: Store):
    before = scrape(client)
    assert before[("pixmill_tasks", (("state", "queued"),))] == 0
    assert before[("pixmill_queue_depth", ())] == 0 and before[("pixmill_workers", ())] == 0
    store.create_job([NewTask("waiting.bmp", PIPELINE, store.put_blob(IMAGE), "bmp")], Output())
    run_job(store, seconds=[0.02, 0.3, 3.0], failures=2)
    after = scrape(client)
    counts = {dict(labels)["state"]: value for (name, labels), value in after.items() if name == "pixmill_tasks"}
    assert counts == {"queued": 1, "running": 0, "done": 3, "failed": 2, "cancelled": 0}
    assert after[("pixmill_queue_depth", ())] == 1 and after[("pixmill_workers", ())] == 1
    assert after[("pixmill_blob_bytes", ())] == store.blob_usage() > 0


def test_metrics_histogram_counts_each_finished_task_once_in_its_bucket(client, store: Store):
    run_job(store, seconds=[0.02, 0.3, 3.0], failures=1)
    for _ in range(3):                                       # later scrapes never count a task again
        after = scrape(client)
        assert after[("pixmill_task_seconds_count", ())] == 3
        buckets = {float(dict(labels)["le"]): value for (name, labels), value in after.items()
                   if name == "pixmill_task_seconds_bucket"}
        assert sorted(buckets) == [*BUCKETS, float("inf")]
        assert (buckets[0.01], buckets[0.025], buckets[0.25], buckets[0.5], buckets[2.5], buckets[5.0]) \
            == (0, 1, 1, 2, 2, 3)
        assert buckets[float("inf")] == 3
        assert after[("pixmill_task_seconds_sum", ())] == pytest.approx(3.32, abs=0.5)
    run_job(store, seconds=[0.03])
    assert scrape(client)[("pixmill_task_seconds_count", ())] == 4


def test_two_apps_in_one_process_keep_metrics_of_their_own(settings, store: Store, tmp_path: Path):
    other_settings = Settings(data_dir=tmp_path / "other", engine="local", workers=1)
    with Store.open(other_settings) as other:
        first = make_client(create_app(settings, store))
        second = make_client(create_app(other_settings, other))
        run_job(store, seconds=[0.1, 0.1])
        assert scrape(first)[("pixmill_tasks", (("state", "done"),))] == 2
        assert scrape(second)[("pixmill_tasks", (("state", "done"),))] == 0
        assert scrape(first)[("pixmill_task_seconds_count", ())] == 2
        assert scrape(second)[("pixmill_task_seconds_count", ())] == 0
