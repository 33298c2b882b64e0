"""Shared pieces of the benchmarks: photo-like test images and timing helpers."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np


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
