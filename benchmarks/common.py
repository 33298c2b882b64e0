"""Shared pieces of the benchmarks: photo-like images, timing, a real `pixmill serve`, process CPU and memory."""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import psutil
import requests

T = TypeVar("T")


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """A BGR image with smooth shapes, gradients and fine noise, compressing like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, center, int(rng.integers(20, height // 3)), color, -1, cv2.LINE_AA)
    noise = rng.normal(0, 6, image.shape).astype(np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_photos(folder: Path, count: int, width: int = 1920, height: int = 1080) -> list[Path]:
    """Write count photo-like JPEGs (quality 90) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:03d}.jpg"
        cv2.imwrite(str(path), photo_like(width, height, i), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def best_of(runs: int, fn) -> float:
    """The shortest wall time of runs calls of fn, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed(fn) -> float:
    """Wall time of one call of fn, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def environment() -> dict[str, str]:
    """os.environ with this interpreter's bin dir first on PATH (mpiexec of the mpich wheel)."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def wait_for(check, timeout: float, what: str, interval: float = 0.05):
    """Call check until it returns something true, for at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def family(pid: int) -> list[psutil.Process]:
    """A process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of the processes that still run."""
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def roles(pid: int) -> dict[str, list[psutil.Process]]:
    """A `pixmill serve` process and its descendants by role: web, dispatcher, workers, other (mpiexec)."""
    out: dict[str, list[psutil.Process]] = {"web": [], "dispatcher": [], "workers": [], "other": []}
    for proc in family(pid):
        try:
            command = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        role = ("web" if proc.pid == pid else "dispatcher" if "pixmill.worker.dispatcher" in command
                else "workers" if "mpi4py.futures.server" in command else "other")
        out[role].append(proc)
    return out


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV uses `count` threads inside the block (1: a worker's share with a worker per core), then as before."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def with_cpu(groups: dict[str, list[psutil.Process]], fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """What fn returns, and the CPU seconds each group of processes, and this one ("client"), spent meanwhile."""
    def cpu() -> dict[str, float]:
        return {"client": self_cpu_seconds(), **{k: cpu_seconds(v) for k, v in groups.items()}}
    before = cpu()
    value = fn()
    return value, {k: v - before[k] for k, v in cpu().items()}


def per_image_ms(spent: dict[str, float], images: int) -> dict[str, float]:
    """CPU seconds by process over `images` images, as milliseconds per image."""
    return {k: 1000 * v / images for k, v in sorted(spent.items())}


def rss(pid: int) -> int:
    """Resident set size of one process, in bytes."""
    return psutil.Process(pid).memory_info().rss


class Server:
    """A running `pixmill serve` child on 127.0.0.1: its URL and process."""

    def __init__(self, url: str, proc: subprocess.Popen):
        self.url, self.proc = url, proc
        self._local = threading.local()

    @property
    def http(self) -> requests.Session:
        """This thread's HTTP session (sessions are not shared between threads)."""
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.url + path.lstrip("/"), timeout=60, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.http.post(self.url + path.lstrip("/"), timeout=300, **kw)

    def wait_job(self, job_id: str, timeout: float = 600) -> dict:
        """Wait until every task of the job has ended (long polls with `Prefer: wait`); return its JSON."""
        def ended():
            job = self.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=30"}).json()
            return job if job["ended"] == job["total"] else None
        return wait_for(ended, timeout, f"job {job_id}", 0)


class LeanClient:
    """A keep-alive HTTP/1.1 client on http.client, one connection per thread: far less CPU per request
    than requests, so the load generator, on the same cores as the server it measures, takes less of them."""

    def __init__(self, url: str, timeout: float = 120.0):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects once if the kept-alive connection was closed."""
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                answer = conn.getresponse()
                return answer.status, answer.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post_form(self, path: str, fields: dict[str, str], files: list[tuple[str, str, bytes]],
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """POST multipart/form-data: fields first, then (field, file name, bytes) files."""
        boundary = os.urandom(16).hex()
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, filename, data in files:
            parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f'Content-Type: application/octet-stream\r\n\r\n'.encode(), data, b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        return self.request("POST", path, b"".join(parts),
                            {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict:
        """Wait until every task of the job has ended (long polls with `Prefer: wait`); return its JSON."""
        def ended():
            status, body = self.request("GET", f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=30"})
            if status != 200:
                raise RuntimeError(f"GET of job {job_id} answered {status}: {body[:300]!r}")
            job = json.loads(body)
            return job if job["ended"] == job["total"] else None
        return wait_for(ended, timeout, f"job {job_id}", 0)


def url_path(url: str) -> str:
    """The path of an absolute URL the server gave (its result URLs), for a LeanClient request."""
    return "/" + url.split("/", 3)[3]


def one_image_job(client: LeanClient, name: str, data: bytes, pipeline: str, timeout: float = 120.0) -> bytes:
    """POST a one-image job and fetch its result with `Prefer: wait`; the result's bytes."""
    status, body = client.post_form("/api/v1/jobs", {"pipeline": pipeline}, [("files", name, data)])
    if status != 202:
        raise RuntimeError(f"POST /api/v1/jobs answered {status}: {body[:300]!r}")
    result = url_path(json.loads(body)["tasks"][0]["result_url"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = client.request("GET", result, headers={"Prefer": "wait=30"})
        if status == 200:
            return body
        if status != 202:
            raise RuntimeError(f"result answered {status}: {body[:200]!r}")
    raise RuntimeError(f"{name} took over {timeout} s")


@contextmanager
def running_server(folder: Path, *, workers: int, engine: str = "mpi", threads: int | None = None,
                   timeout: float = 120.0) -> Iterator[Server]:
    """Start `pixmill serve` on a free port of 127.0.0.1; SIGTERM it afterwards and kill what is left."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "serve.out", folder / "serve.err"
    cmd = [sys.executable, "-m", "pixmill.cli.serve", "--host", "127.0.0.1", "--port", "0",
           "--engine", engine, "--workers", str(workers), "--data-dir", str(folder / "data")]
    if threads:
        cmd += ["--threads", str(threads)]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=environment(), start_new_session=True)
    try:
        def listening():
            if proc.poll() is not None:
                raise RuntimeError(f"pixmill serve exited with {proc.returncode}: {err.read_text()[-2000:]}")
            found = re.findall(r"serving on (http://127\.0\.0\.1:\d+/)", out.read_text())
            return found[0] if found else None
        server = Server(wait_for(listening, timeout, "the server to listen"), proc)

        def healthy():
            try:
                return server.get("/healthz").status_code == 200
            except requests.RequestException:
                return False
        wait_for(healthy, timeout, "workers to be alive", 0.2)
        yield server
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM a child started in its own session, wait, then SIGKILL its group and its descendants."""
    left = family(proc.pid)[1:]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for child in left:
        try:
            child.kill()
        except psutil.Error:
            pass


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict:
    """What the figures were measured on."""
    import cv2

    freq = psutil.cpu_freq()
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": model or platform.processor(), "mhz": freq.max if freq else None,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "opencv": cv2.__version__, "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}
