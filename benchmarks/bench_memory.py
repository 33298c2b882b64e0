"""Memory: web RSS over many small jobs, web RSS during a 200 MB upload, worker peak RSS on W4.

Targets: web RSS after 2,000 small jobs within 10% of after 100; a 200 MB upload raises web RSS by
less than 30 MB (uploads stream to disk); a worker's peak RSS on W4 (one 8000×8000 image,
bilateral) at most 3× the decoded image.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from bench_service import submit  # noqa: E402
from common import Server, environment, family, photo_like, rss, stop_process  # noqa: E402


def small_png() -> bytes:
    """A small photo-like 64×64 PNG."""
    return cv2.imencode(".png", photo_like(64, 64, 3))[1].tobytes()


def _jobs(server: Server, count: int, image: bytes, clients: int = 4) -> None:
    def one(i: int) -> None:
        job_id = submit(server, [(f"s{i}.png", image)], pipeline="grayscale")
        job = server.wait_job(job_id, timeout=120)
        if job["tasks"][0]["state"] != "done":
            raise RuntimeError(f"small job failed: {job['tasks'][0]['error']}")
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))


def rss_over_jobs(server: Server, first: int = 100, total: int = 2000) -> dict:
    """Web process RSS after `first` small jobs and after `total`."""
    image = small_png()
    start = time.perf_counter()
    _jobs(server, first, image)
    after_first = rss(server.proc.pid)
    _jobs(server, total - first, image)
    after_total = rss(server.proc.pid)
    return {"jobs": total, "rss_after_first_mb": after_first / 2**20, "first": first,
            "rss_after_all_mb": after_total / 2**20, "growth": after_total / after_first - 1,
            "seconds": time.perf_counter() - start}


class PeakSampler:
    """Samples the RSS of some processes every `interval` seconds in a thread; keeps each one's peak."""

    def __init__(self, pick, interval: float = 0.01):
        self.pick, self.interval = pick, interval
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self.pick():
                try:
                    value = proc.memory_info().rss
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), value)
                    self.names[proc.pid] = " ".join(proc.cmdline())[:120]  # after exec, not the forked parent's
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)


def upload_rise(server: Server, total_mb: int = 200, files: int = 40) -> dict:
    """The rise of web RSS while one ~200 MB batch (incompressible PNGs) is uploaded."""
    side = int((total_mb * 2**20 / files / 3) ** 0.5)
    noise = np.random.default_rng(5).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = cv2.imencode(".png", noise, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    payload = [(f"big{i:02d}.png", image) for i in range(files)]
    web = psutil.Process(server.proc.pid)
    before = web.memory_info().rss
    with PeakSampler(lambda: [web]) as sampler:
        job_id = submit(server, payload, pipeline="grayscale")
    server.http.delete(server.url + f"api/v1/jobs/{job_id}", timeout=60)
    peak = sampler.peaks.get(web.pid, before)
    return {"upload_mb": len(image) * files / 2**20, "files": files, "rss_before_mb": before / 2**20,
            "rss_peak_mb": peak / 2**20, "rise_mb": (peak - before) / 2**20}


def w4_worker_peak(tmp: Path, side: int = 8000) -> dict:
    """Peak RSS of the MPI worker that runs `bilateral` on one side×side JPEG (W4), via `pixmill run -w 1`."""
    folder = tmp / "w4"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "w4.jpg"
    cv2.imwrite(str(source), photo_like(side, side, 11), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cmd = [sys.executable, "-m", "pixmill", "run", str(source), "-p", "bilateral", "-o", str(tmp / "w4out"),
           "-w", "1"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
                            start_new_session=True)

    try:
        with PeakSampler(lambda: family(proc.pid), interval=0.02) as sampler:
            out, err = proc.communicate(timeout=1800)
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"pixmill run failed: {err.decode()[-1000:]}")
    main_pid = proc.pid
    worker_peaks = {pid: peak for pid, peak in sampler.peaks.items()
                    if pid != main_pid and "python" in sampler.names.get(pid, "")}
    decoded = side * side * 3
    peak = max(worker_peaks.values()) if worker_peaks else 0
    return {"side": side, "seconds": time.perf_counter() - start, "source_mb": source.stat().st_size / 2**20,
            "decoded_mb": decoded / 2**20, "worker_peak_mb": peak / 2**20, "ratio": peak / decoded,
            "main_peak_mb": sampler.peaks.get(main_pid, 0) / 2**20,
            "sampled": {sampler.names[p]: round(v / 2**20) for p, v in sampler.peaks.items()}}

