"""Test-only task functions and images for the dispatcher tests.

The workers import this module by name (tests/ is put on their PYTHONPATH), so these functions
must stay at module level. They run `process()` unless the image carries a marker text chunk:
then they crash the worker process, or hang, as a misbehaving image might.
"""

from __future__ import annotations

import io
import os
import signal
import time

import numpy as np
from PIL import Image, PngImagePlugin

from pixmill.imaging.process import process

CRASH = b"pixmill-test-crash"
HANG = b"pixmill-test-hang"
SLOW = b"pixmill-test-slow"


def make_png(seed: int, size: tuple[int, int] = (96, 128), marker: bytes | None = None) -> bytes:
    """A small PNG of smooth noise; with a marker, a text chunk the test tasks react to."""
    rng = np.random.default_rng(seed)
    height, width = size
    base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    pixels = (pixels.astype(np.int16) + rng.integers(-20, 20, pixels.shape)).clip(0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    if marker:
        info.add_text("test", marker.decode())
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def misbehaving_process(data: bytes, pipeline, output, *, max_pixels: int):
    """process(), except that marked images kill the worker, hang it, or take a while."""
    if CRASH in data:
        os.kill(os.getpid(), signal.SIGKILL)
    if HANG in data:
        time.sleep(3600)
    if SLOW in data:
        time.sleep(0.5)
    return process(data, pipeline, output, max_pixels=max_pixels)


def slow_process(data: bytes, pipeline, output, *, max_pixels: int):
    """process(), after a pause: keeps tasks in flight long enough to kill things mid-job."""
    time.sleep(0.15)
    return process(data, pipeline, output, max_pixels=max_pixels)


if __name__ == "__main__":
    # `python -m support.jobs_tasks TASK`: `pixmill worker` with this module's TASK in place of process(),
    # settings from PIXMILL_* variables.
    import sys

    from pixmill.cli.worker import run_supervised
    from pixmill.config import load_settings

    run_supervised(load_settings(), task=f"support.jobs_tasks:{sys.argv[1]}")
