"""/healthz and /metrics: is the store reachable and are workers alive, and Prometheus metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from apiflask import APIBlueprint
from flask import Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..store import Store
from .schemas import HealthOut
from .services import services

__all__ = ["bp", "init_app", "StoreCollector", "BUCKETS"]

log = logging.getLogger(__name__)

bp = APIBlueprint("health", __name__, tag={"name": "monitoring", "description": "Health and metrics"})

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# A task's finished_at is stamped before its transaction commits, so one may appear a little
# after a later one was seen: each scrape looks this far back and skips the tasks already counted.
LOOK_BACK = 60.0


class TaskTimes:
    """A cumulative histogram of processing times, fed with each task the store records as done."""

    def __init__(self, store: Store, registry: CollectorRegistry) -> None:
        self.store = store
        self.histogram = Histogram("pixmill_task_seconds", "Processing time of finished tasks",
                                   buckets=BUCKETS, registry=registry)
        self.since = time.time()
        self.seen: dict[int, float] = {}
        self.lock = threading.Lock()

    def update(self) -> None:
        """Observe the tasks finished since the last scrape."""
        with self.lock:
            for task_id, finished_at, seconds in self.store.finished_since(self.since - LOOK_BACK):
                if task_id not in self.seen:
                    self.seen[task_id] = finished_at
                    self.histogram.observe(max(0.0, seconds))
            if self.seen:
                self.since = max(self.since, max(self.seen.values()))
            self.seen = {k: v for k, v in self.seen.items() if v > self.since - LOOK_BACK}


class StoreCollector(Collector):
    """Reads the store's statistics at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The metrics, from one call to Store.stats()."""
        stats = self.store.stats()
        tasks = GaugeMetricFamily("pixmill_tasks", "Tasks in the store, by state", labels=["state"])
        for state, n in sorted(stats["tasks"].items()):
            tasks.add_metric([state], n)
        yield tasks
        yield GaugeMetricFamily("pixmill_queue_depth", "Tasks waiting for a worker", value=stats["queue_depth"])
        yield GaugeMetricFamily("pixmill_workers", "Pool workers of live dispatchers (by heartbeat)",
                                value=stats["workers"])
        if "blob_bytes" in stats:
            yield GaugeMetricFamily("pixmill_blob_bytes", "Bytes of images in the data dir",
                                    value=stats["blob_bytes"])


def init_app(app: Flask) -> None:
    """Register /healthz and /metrics, with a metrics registry of this app's own."""
    registry = CollectorRegistry(auto_describe=False)
    store = app.extensions["pixmill"].store
    registry.register(StoreCollector(store))
    app.extensions["pixmill.metrics"] = registry
    app.extensions["pixmill.task_times"] = TaskTimes(store, registry)
    app.register_blueprint(bp)


@bp.get("/healthz")
@bp.output(HealthOut, description="The store answers and at least one worker is alive")
@bp.doc(summary="Health: the store and the workers",
        responses={503: {"description": "The store does not answer, or no worker is alive",
                         "content": {"application/json": {"schema": HealthOut}}}})
def healthz() -> tuple[dict, int]:
    """200 when the store answers and a dispatcher node with workers is alive, else 503; the live nodes."""
    store = services().store
    try:
        nodes = store.live_dispatchers()
    except Exception as exc:  # any failure of the store is what this endpoint reports
        log.warning("health check: the store does not answer: %s", exc)
        return {"status": "degraded", "store": f"error: {type(exc).__name__}", "workers": 0, "nodes": []}, 503
    workers = sum(node["workers"] for node in nodes)
    body = {"status": "ok" if workers > 0 else "degraded", "store": "ok", "workers": workers, "nodes": nodes}
    return body, 200 if workers > 0 else 503


@bp.get("/metrics")
@bp.doc(summary="Prometheus metrics",
        responses={200: {"description": "Prometheus text format",
                         "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> Response:
    """Tasks by state, queue depth, workers and a processing-time histogram."""
    registry = current_app.extensions["pixmill.metrics"]
    current_app.extensions["pixmill.task_times"].update()
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Cache-Control": "no-store"})
