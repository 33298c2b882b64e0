"""A huge TIFF split across 2 MPI workers by `pixmill run`: no process holds the whole image. Every process's
peak RSS stays within a quarter of the decoded image plus 150 MB (the bound of issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import tifffile

from pixmill.imaging.pipeline import parse_pipeline, run_pipeline

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.timeout(300)]

SIDE = 6001   # 36 MP of RGB (huge over a 10 MP limit): 103 MiB decoded, a bound of 176 MiB per process


def high_water(pid: int) -> int:
    """The process's peak resident set so far, in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def test_no_process_holds_the_whole_image(tmp_path: Path):
    tile = cv2.resize(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8), (256, 256))
    source = tmp_path / "huge.tif"
    across = -(-SIDE // 256)
    tifffile.imwrite(source, (tile for _ in range(across * across)), shape=(SIDE, SIDE, 3), dtype=np.uint8,
                     tile=(256, 256), photometric="rgb", compression="zlib", bigtiff=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "pixmill", "run", str(source), "-p", "blur(ksize=9)", "-o", str(tmp_path / "out"),
               "-w", "2", "--max-pixels", "10000000"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peaks: dict[int, tuple[str, int]] = {}
    deadline = time.monotonic() + 240
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                for p in [root, *root.children(recursive=True)]:
                    role = "command" if p.pid == proc.pid else "worker" if "mpi4py" in " ".join(p.cmdline()) else ""
                    if role:
                        peaks[p.pid] = (role, max(peaks.get(p.pid, (role, 0))[1], high_water(p.pid)))
            except (psutil.Error, OSError, StopIteration):
                pass
            time.sleep(0.02)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
    assert proc.returncode == 0, out + err
    assert "split into" in out and "2 mpi workers" in out
    bound = SIDE * SIDE * 3 // 4 + 150 * 2**20
    roles = sorted(role for role, _ in peaks.values())
    assert roles == ["command", "worker", "worker"], peaks
    for pid, (role, peak) in peaks.items():
        assert peak <= bound, f"{role} {pid}: peak RSS {peak / 2**20:.0f} MiB, over {bound / 2**20:.0f} MiB"
    # and the result is the whole image's (the test reads it whole; pixmill's processes never did)
    rows = slice(2900, 3100)
    got = tifffile.imread(tmp_path / "out" / "huge.blur.tif")[rows]
    context = tifffile.imread(source)[rows.start - 4:rows.stop + 4]
    expected, _ = run_pipeline(parse_pipeline("blur(ksize=9)"), np.ascontiguousarray(context[..., ::-1]))
    assert np.array_equal(got[..., ::-1], expected[4:-4])
