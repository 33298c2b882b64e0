"""pixmill on many machines, on one: two web replicas and two dispatcher nodes on one PostgreSQL and one S3
bucket, each process with a data dir of its own; a node or a replica killed with -9, PostgreSQL restarted."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from support.cluster import Cluster, dispatcher_ids, kill_family, running_cluster
from support.postgres import PostgresServer
from support.servers import REAL, wait_for
from support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(300)]

NAMES = ["pil_flower.jpg", "sk_chelsea.png", "sk_coins.png", "pil_hopper.bmp", "sk_camera.png", "sk_horse.png"]
PIPELINE = "grayscale | blur(ksize=5)"
# Work that lasts a few seconds on 2 cores, so that faults strike in the middle of it.
SLOW = "resize(scale=3) | median(ksize=9) | blur(ksize=31) | resize(scale=0.34)"


@pytest.fixture
def env(postgres_url: str, s3, s3_bucket: str) -> dict[str, str]:
    """The settings every process of the cluster gets: one database, one bucket, quick heartbeats."""
    return {**s3.environment(), "PIXMILL_DATABASE_URL": postgres_url, "PIXMILL_BLOB_URL": f"s3://{s3_bucket}/px",
            "PIXMILL_HEARTBEAT_TIMEOUT": "3", "PIXMILL_LEASE_SECONDS": "600"}


@pytest.fixture
def cluster(tmp_path, env) -> Iterator[Cluster]:
    with running_cluster(tmp_path, env) as cluster:
        yield cluster


def submit(server, names: list[str], pipeline: str) -> dict:
    files = [("files", (f"{i:02d}-{name}", (REAL / name).read_bytes())) for i, name in enumerate(names)]
    response = server.post("/api/v1/jobs", files=files, data={"pipeline": pipeline, "format": "png"})
    assert response.status_code == 202, response.text
    return response.json()


def wait_done(server, job_id: str, timeout: float = 240) -> dict:
    """The job once every task has ended, asked with long polls (Prefer: wait) of this replica."""
    def ended() -> dict | None:
        try:
            answer = server.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=10"})
        except requests.RequestException:
            return None
        body = answer.json()
        return body if body["state"] in ("done", "cancelled") else None
    return wait_for(ended, timeout, f"job {job_id} to end", interval=0.05)


def expected(name: str, pipeline: str) -> bytes:
    return process((REAL / name).read_bytes(), parse_pipeline(pipeline), Output("png")).data


def task_rows(url: str, job_id: str) -> list[tuple]:
    with psycopg.connect(url) as db:
        return db.execute("SELECT n, state, claims, attempts, result_blob FROM tasks WHERE job_id = %s ORDER BY n",
                          (job_id,)).fetchall()


def test_upload_through_one_replica_and_fetch_everything_through_the_other(cluster: Cluster):
    a, b = cluster.replicas
    assert {n["id"] for n in cluster.live_nodes(0)} == {n["id"] for n in cluster.live_nodes(1)}
    assert a.get("/healthz").status_code == 200 and [n["workers"] for n in cluster.health(1)["nodes"]] == [1, 1]
    job = submit(a, NAMES, PIPELINE)
    started = time.monotonic()
    done = wait_done(b, job["id"])                       # woken by the commit of a node, through NOTIFY
    assert done["counts"]["done"] == len(NAMES), done
    for task, name in zip(done["tasks"], NAMES):
        result = requests.get(task["result_url"].replace(a.url, b.url), timeout=30)
        assert result.status_code == 200 and result.content == expected(name, PIPELINE)
        source = b.get(f"/api/v1/jobs/{job['id']}/tasks/{task['n']}/source")
        assert source.content == (REAL / name).read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(b.get(f"/api/v1/jobs/{job['id']}/archive").content))
    assert len(archive.namelist()) == len(NAMES)
    events = b.get(f"/api/v1/jobs/{job['id']}/events", stream=True)
    assert events.status_code == 200 and b"event: end" in b"".join(events.iter_content(None))
    assert time.monotonic() - started < 120
    assert cluster.data_files() == []                    # no image bytes, no database, in any data dir


def test_a_node_and_a_replica_killed_with_9_lose_nothing_and_record_each_task_once(cluster: Cluster, env):
    a, b = cluster.replicas
    names = NAMES * 3
    job = submit(a, names, SLOW)
    victim = cluster.nodes[0]
    gone = set(dispatcher_ids(victim))
    # Kill the node once both nodes hold tasks, and the replica the job was uploaded through.
    wait_for(lambda: len({r[2] for r in task_rows(env["PIXMILL_DATABASE_URL"], job["id"]) if r[1] == "running"}) > 0,
             60, "tasks to start")
    time.sleep(1.0)
    kill_family(victim.proc)
    kill_family(a.proc)
    wait_for(lambda: not gone & {n["id"] for n in cluster.live_nodes(1)}, 30, "the dead node to leave /healthz")
    done = wait_done(b, job["id"])
    assert done["counts"]["done"] == len(names), done
    rows = task_rows(env["PIXMILL_DATABASE_URL"], job["id"])
    assert all(state == "done" and blob for _, state, _, _, blob in rows)
    assert len({blob for *_, blob in rows}) == len(names)          # one recorded result per task
    for task, name in zip(done["tasks"], names):
        assert b.get(f"/api/v1/jobs/{job['id']}/tasks/{task['n']}/result").content == expected(name, SLOW)
    assert [n["workers"] for n in cluster.live_nodes(1)] == [1]


def test_a_postgres_restart_mid_job_is_ridden_out(cluster: Cluster, postgres: PostgresServer, env):
    a, b = cluster.replicas
    job = submit(a, NAMES * 2, SLOW)
    wait_for(lambda: any(r[1] == "done" for r in task_rows(env["PIXMILL_DATABASE_URL"], job["id"])), 120,
             "a first task to be done")
    postgres.restart("immediate")
    done = wait_done(b, job["id"])
    assert done["counts"]["done"] == len(NAMES) * 2, done
    for task, name in zip(done["tasks"], NAMES * 2):
        assert a.get(f"/api/v1/jobs/{job['id']}/tasks/{task['n']}/result").content == expected(name, SLOW)
    wait_for(lambda: len(cluster.live_nodes(0)) == 2, 60, "both nodes to beat again")


def test_an_s3_endpoint_restart_mid_job_is_ridden_out(tmp_path, env, s3):
    proxy = TcpProxy(s3.port)           # the nodes and replicas reach S3 only through it
    try:
        with running_cluster(tmp_path, {**env, "AWS_ENDPOINT_URL": proxy.url}) as cluster:
            a, b = cluster.replicas
            job = submit(a, NAMES * 2, SLOW)
            wait_for(lambda: any(r[1] == "done" for r in task_rows(env["PIXMILL_DATABASE_URL"], job["id"])), 120,
                     "a first task to be done")
            proxy.down()
            refused = a.post("/api/v1/jobs", files=[("files", ("x.png", (REAL / NAMES[1]).read_bytes()))],
                             data={"pipeline": PIPELINE})
            assert refused.status_code == 503 and refused.json()["error"] == "store_unavailable", refused.text
            assert refused.headers["Retry-After"]
            time.sleep(3)
            proxy.up()
            done = wait_done(b, job["id"])
            assert done["counts"]["done"] == len(NAMES) * 2, done
            for task, name in zip(done["tasks"], NAMES * 2):
                assert b.get(f"/api/v1/jobs/{job['id']}/tasks/{task['n']}/result").content == expected(name, SLOW)
    finally:
        proxy.close()


@pytest.mark.mpi
def test_make_cluster_demo_runs_a_job_through_two_replicas_and_two_mpi_nodes(tmp_path):
    script = Path(__file__).parents[2] / "scripts" / "cluster_demo.py"
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), "--once", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)          # the demo then stops everything it started
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert "mpi workers" in stdout and "done: {'queued': 0, 'running': 0, 'done': 4" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["000-pil_flower.jpeg", "001-pil_hopper_orientation_6.jpeg",
                                                    "002-sk_coins.png", "003-sk_rocket.jpeg"]
