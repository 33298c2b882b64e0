"""pixmill on many machines, on one: web replicas (`serve --no-dispatcher`) and dispatcher nodes
(`pixmill worker`), each a process group with a data dir of its own, on one PostgreSQL and one bucket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from .servers import Server, _descendants, _kill_all, running_server, stop_server, wait_for

__all__ = ["Cluster", "Node", "running_cluster", "running_node", "kill_family"]


@dataclass
class Node:
    """A running `pixmill worker`: its process and log."""

    proc: subprocess.Popen
    log: Path
    folder: Path


@dataclass
class Cluster:
    """The replicas and nodes of a running cluster, and the folders they keep their data dirs in."""

    replicas: list[Server]
    nodes: list[Node]
    folders: list[Path] = field(default_factory=list)

    def health(self, replica: int = 0) -> dict:
        return self.replicas[replica].get("/healthz").json()

    def live_nodes(self, replica: int = 0) -> list[dict]:
        try:
            return self.health(replica)["nodes"]
        except (requests.RequestException, ValueError):
            return []

    def data_files(self) -> list[Path]:
        """Every file in any process's data dir: none, when the images live in S3 and the jobs in PostgreSQL."""
        return [p for folder in self.folders for p in (folder / "data").rglob("*") if p.is_file()]


def kill_family(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started, as if its machine were gone."""
    family = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _kill_all(family)
    proc.wait(10)


@contextmanager
def running_node(folder: Path, env: dict[str, str], *, engine: str = "local", workers: int = 1) -> Iterator[Node]:
    """Start `pixmill worker` in a session of its own; stop it with SIGTERM, then kill whatever is left."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "worker.err"
    bindir = str(Path(sys.executable).parent)          # mpiexec of the mpich wheel lives here
    environ = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **env}
    cmd = [sys.executable, "-m", "pixmill", "worker", "--engine", engine, "--workers", str(workers),
           "--data-dir", str(folder / "data")]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=environ, start_new_session=True)
    try:
        yield Node(proc, log, folder)
    finally:
        family = _descendants(proc.pid)
        stop_server(proc)
        _kill_all(family)


@contextmanager
def running_cluster(folder: Path, env: dict[str, str], *, replicas: int = 2, nodes: int = 2, workers: int = 1,
                    engine: str = "local", timeout: float = 120.0) -> Iterator[Cluster]:
    """Start the replicas and the nodes, and wait until every replica lists every node as live."""
    with ExitStack() as stack:
        cluster = Cluster([], [])
        for i in range(replicas):
            where = folder / f"replica{i}"
            cluster.folders.append(where)
            cluster.replicas.append(stack.enter_context(running_server(
                where, engine=engine, workers=workers, env=env, args=("--no-dispatcher",), healthy=False)))
        for i in range(nodes):
            where = folder / f"node{i}"
            cluster.folders.append(where)
            cluster.nodes.append(stack.enter_context(running_node(where, env, engine=engine, workers=workers)))
        for i in range(replicas):
            wait_for(lambda i=i: len(cluster.live_nodes(i)) == nodes or _any_died(cluster), timeout,
                     f"replica {i} to see {nodes} live nodes")
            _any_died(cluster)
        yield cluster


def _any_died(cluster: Cluster) -> bool:
    for node in cluster.nodes:
        if node.proc.poll() is not None:
            raise AssertionError(f"pixmill worker exited with {node.proc.returncode}:\n"
                                 f"{node.log.read_text()[-3000:]}")
    for server in cluster.replicas:
        if server.proc.poll() is not None:
            raise AssertionError(f"pixmill serve exited with {server.proc.returncode}:\n"
                                 f"{server.log.read_text()[-3000:]}")
    return False


def dispatcher_ids(node: Node) -> list[str]:
    """The ids of the dispatcher processes a node runs (from their command lines)."""
    ids = []
    for proc in psutil.Process(node.proc.pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "--id" in cmd:
            ids.append(cmd[cmd.index("--id") + 1])
    return ids
