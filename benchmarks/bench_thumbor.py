"""Against thumbor: the same 1920×1080 JPEGs resized to half size and made grey, same client concurrency.

thumbor (from PyPI, in its own venv benchmarks/.thumbor-venv, made on first use) serves with its
file loader from the images' folder on 127.0.0.1, one process per core.  Each client thread asks
for one image at a time: from thumbor a GET of /unsafe/960x540/filters:grayscale()/NAME, from
pixmill a one-image job POSTed, then its result fetched with `Prefer: wait`: the pipeline
`thumbnail(width=960, height=540) | grayscale` (shrink on load, as thumbor does), and also
`resize | grayscale` (the original application's exact pixels).  Target: pixmill >= 1.5×
thumbor's images/s.  Also measured, apart from the target: the same clients each sending their
share of the images as one job (pixmill's own use: many images per upload), waiting for the job
with `Prefer: wait`, then fetching every result.  The CPU each side spends per image is counted too
(thumbor's processes; pixmill's web process, dispatcher and workers; the clients), beside what
pixmill's `process()` alone costs in one process: on cores that the run keeps busy, images/s is
about the cores over the CPU per image, so these say where a shortfall comes from.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    LeanClient,
    Server,
    family,
    free_port,
    one_image_job,
    opencv_threads,
    per_image_ms,
    roles,
    stop_process,
    url_path,
    wait_for,
    with_cpu,
)
from pixmill.imaging.pipeline import parse_pipeline  # noqa: E402
from pixmill.imaging.process import process  # noqa: E402

VENV = Path(__file__).resolve().parent / ".thumbor-venv"


def install_thumbor() -> Path:
    """The thumbor executable of the benchmark's own venv, installed from PyPI if missing."""
    exe = VENV / "bin" / "thumbor"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "thumbor>=7.7"], check=True, timeout=1200)
    return exe


def start_thumbor(folder: Path, tmp: Path, processes: int) -> tuple[subprocess.Popen, str]:
    """thumbor with its file loader on folder, on a free port of 127.0.0.1; return the process and URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "thumbor.conf"
    conf.write_text(f"LOADER = 'thumbor.loaders.file_loader'\nFILE_LOADER_ROOT_PATH = {str(folder)!r}\n"
                    "STORAGE = 'thumbor.storages.no_storage'\nRESULT_STORAGE = None\n"
                    "ALLOW_UNSAFE_URL = True\nQUALITY = 90\nMAX_AGE = 0\n")
    port = free_port()
    log = open(tmp / "thumbor.log", "wb")
    proc = subprocess.Popen([str(install_thumbor()), "-i", "127.0.0.1", "-p", str(port), "-c", str(conf),
                             "-l", "warning", "--processes", str(processes)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"thumbor exited with {proc.returncode}: {(tmp / 'thumbor.log').read_text()[-2000:]}")
        try:
            return requests.get(url + "healthcheck", timeout=5).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_for(up, 60, "thumbor to listen", 0.2)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def _thumbor_one(client: LeanClient, name: str) -> int:
    status, body = client.request("GET", f"/unsafe/960x540/filters:grayscale()/{name}")
    if status != 200:
        raise RuntimeError(f"thumbor answered {status} for {name}: {body[:200]!r}")
    return len(body)


def _pixmill_one(client: LeanClient, name: str, data: bytes, pipeline: str) -> int:
    return len(one_image_job(client, name, data, pipeline))


def _pixmill_batch(client: LeanClient, names: list[str], files: dict[str, bytes], pipeline: str) -> int:
    """One job of several images: POST them, wait until the job has ended, fetch every result."""
    status, body = client.post_form("/api/v1/jobs", {"pipeline": pipeline}, [("files", n, files[n]) for n in names])
    if status != 202:
        raise RuntimeError(f"POST /api/v1/jobs answered {status}: {body[:300]!r}")
    size = 0
    for task in client.wait_job(json.loads(body)["id"])["tasks"]:
        status, data = client.request("GET", url_path(task["result_url"]))
        if status != 200:
            raise RuntimeError(f"{task['name']}: the result answered {status}: {data[:200]!r}")
        size += len(data)
    return size


def _image_work(files: dict[str, bytes], pipeline: str, passes: int = 3) -> float:
    """CPU seconds per image of process() alone in this process, with one OpenCV thread (a worker's
    share of a pool with a worker per core)."""
    parsed = parse_pipeline(pipeline)
    with opencv_threads(1):
        for data in files.values():  # warm
            process(data, parsed)
        start = time.process_time()
        for _ in range(passes):
            for data in files.values():
                process(data, parsed)
        return (time.process_time() - start) / (passes * len(files))


def _drive(one, items: list, clients: int) -> float:
    """Seconds for `clients` threads to put every item through one(item), one at a time each."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, items))
    return time.perf_counter() - start


# thumbor decodes a JPEG at a reduced scale when it shrinks it (Pillow's draft mode); pixmill's
# thumbnail does the same (shrink on load).  resize keeps the original application's exact pixels
# (a full decode, then INTER_LINEAR), so it is measured too.
PIPELINES = {"thumbnail": "thumbnail(width=960, height=540) | grayscale", "resize": "resize | grayscale"}


def compare(server: Server, paths: list[Path], tmp: Path, *, clients: int = 4, rounds: int = 3) -> dict:
    """images/s of thumbor and pixmill on the same images, interleaved rounds, best of each."""
    processes = os.cpu_count() or 1
    proc, url = start_thumbor(paths[0].parent, tmp, processes)
    files = {p.name: p.read_bytes() for p in paths}
    try:
        sample = requests.get(f"{url}unsafe/960x540/filters:grayscale()/{paths[0].name}", timeout=60).content
        shape = cv2.imdecode(np.frombuffer(sample, np.uint8), cv2.IMREAD_UNCHANGED).shape
        if shape[:2] != (540, 960):
            raise RuntimeError(f"thumbor answered an image of shape {shape}, not 960x540")
        to_thumbor, to_pixmill = LeanClient(url), LeanClient(server.url)
        for name in list(files)[:4]:  # warm both
            _thumbor_one(to_thumbor, name)
            for pipeline in PIPELINES.values():
                _pixmill_one(to_pixmill, name, files[name], pipeline)
        best = {"thumbor": float("inf"), "batched": float("inf"), **{k: float("inf") for k in PIPELINES}}
        spent: dict[str, collections.Counter] = {key: collections.Counter() for key in best}  # CPU seconds
        sides = {"thumbor": {"thumbor": family(proc.pid)}, "pixmill": roles(server.proc.pid)}

        def drive(key: str, side: str, one, items: list) -> None:
            seconds, used = with_cpu(sides[side], lambda: _drive(one, items, clients))
            best[key] = min(best[key], seconds)
            spent[key].update(used)
        shares = [list(files)[i::clients] for i in range(clients)]  # each client's images, as one job
        for _ in range(rounds):
            drive("thumbor", "thumbor", lambda name: _thumbor_one(to_thumbor, name), list(files))
            for key, pipeline in PIPELINES.items():
                drive(key, "pixmill", lambda name: _pixmill_one(to_pixmill, name, files[name], pipeline), list(files))  # noqa: B023 (run in this iteration)
            drive("batched", "pixmill", lambda names: _pixmill_batch(to_pixmill, names, files, PIPELINES["thumbnail"]),
                  shares)
        version = subprocess.run([str(VENV / "bin" / "thumbor"), "--version"], capture_output=True, text=True,
                                 timeout=60).stdout.strip()
    finally:
        stop_process(proc)
    n = len(files)
    cpu_ms = {key: per_image_ms(used, rounds * n) for key, used in spent.items()}
    return {"images": n, "clients": clients, "thumbor_processes": processes, "thumbor_version": version,
            "pipeline": PIPELINES["thumbnail"], "exact_pipeline": PIPELINES["resize"],
            "thumbor_images_per_s": n / best["thumbor"], "pixmill_images_per_s": n / best["thumbnail"],
            "pixmill_exact_images_per_s": n / best["resize"],
            "batched_job_images": len(shares[0]), "pixmill_batched_images_per_s": n / best["batched"],
            # seconds over seconds: pixmill's images/s ÷ thumbor's
            "ratio": best["thumbor"] / best["thumbnail"], "exact_ratio": best["thumbor"] / best["resize"],
            "batched_ratio": best["thumbor"] / best["batched"],
            # CPU milliseconds per image, by process, averaged over the rounds
            "cpu_ms_per_image": cpu_ms, "image_work_ms": 1000 * _image_work(files, PIPELINES["thumbnail"])}
