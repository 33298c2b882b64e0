"""A huge TIFF split across the workers of a batch: the tiled BigTIFF it gives equals the whole image
processed at once, on 2 and 3 workers and in many bands; and what cannot be split is refused, saying why."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from pixmill.imaging.bigtiff import TILE
from pixmill.imaging.pipeline import parse_pipeline, run_pipeline
from pixmill.imaging.process import Output
from pixmill.worker import split
from pixmill.worker.batch import run_batch

SIDE = (3 * TILE + 61, 2 * TILE + 37)            # sides that divide by nothing pixmill uses
LIMITS = {"max_pixels": 100_000, "max_file_bytes": 50 << 20}


def huge_tiff(path: Path, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """A smooth, noisy image of SIDE written as a tiled, compressed TIFF; its pixels in OpenCV's order."""
    rng = np.random.default_rng(channels)
    small = rng.integers(0, 256, (40, 30, channels), dtype=np.uint8)
    image = cv2.resize(small, SIDE[::-1], interpolation=cv2.INTER_CUBIC)
    image = image.reshape(SIDE + (channels,)) if channels > 1 else image.reshape(SIDE)
    image = cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))
    if dtype == np.uint16:
        image = image.astype(np.uint16) * 257
    stored = image[..., [2, 1, 0, 3][:channels]] if channels > 1 else image
    tifffile.imwrite(path, stored, tile=(128, 128), compression="zlib", photometric="rgb" if channels > 1 else
                     "minisblack", extrasamples=("unassalpha",) if channels == 4 else None)
    return image


def result_of(path: Path) -> np.ndarray:
    out = tifffile.imread(path)
    return out[..., [2, 1, 0, 3][:out.shape[2]]] if out.ndim == 3 else out


@pytest.fixture(params=["threads", "processes"])
def executor(request) -> Executor:
    pool = ThreadPoolExecutor(3) if request.param == "threads" else ProcessPoolExecutor(2)
    with pool:
        yield pool


@pytest.fixture(autouse=True)
def thin_bands(monkeypatch):
    monkeypatch.setattr(split, "BAND_BYTES", 1)   # every band one tile row: 4 bands of this image


@pytest.mark.parametrize(("spec", "channels", "dtype"), [
    ("blur(ksize=9) | sharpen(radius=2)", 3, np.uint8),
    ("grayscale | median(ksize=7) | threshold(mode=adaptive, block=31)", 3, np.uint8),
    ("pixelate(block=50) | emboss", 4, np.uint8),
    ("morphology(op=close, ksize=9) | gamma(gamma=1.5)", 1, np.uint16),
    ("bilateral | colormap", 3, np.uint8),
    ("blur | autocontrast(mode=per_channel, cutoff=4) | threshold(mode=otsu)", 3, np.uint8),
    ("autocontrast | sharpen", 1, np.uint16),
])
def test_a_huge_tiff_split_across_workers_equals_the_whole_image(tmp_path: Path, executor: Executor, spec: str,
                                                                channels: int, dtype):
    image = huge_tiff(tmp_path / "big.tif", channels, dtype)
    pipeline = parse_pipeline(spec)
    report = run_batch([tmp_path / "big.tif"], pipeline, Output(), tmp_path / "out", executor, workers=3, **LIMITS)
    [outcome] = report.outcomes
    assert outcome.error is None, outcome.error
    assert outcome.target.suffix == ".tif" and "split into 4 bands" in "; ".join(outcome.notes)
    whole, _ = run_pipeline(pipeline, image)
    got = result_of(outcome.target)
    assert got.shape == whole.shape and np.array_equal(got, whole)
    with tifffile.TiffFile(outcome.target) as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled


def test_small_files_beside_a_huge_one_run_as_usual(tmp_path: Path, executor: Executor):
    huge_tiff(tmp_path / "big.tif")
    cv2.imwrite(str(tmp_path / "small.png"), np.full((20, 30, 3), 90, np.uint8))
    report = run_batch([tmp_path / "big.tif", tmp_path / "small.png"], parse_pipeline("blur"), Output(),
                       tmp_path / "out", executor, workers=2, **LIMITS)
    assert report.failed == [] and [o.target.name for o in report.outcomes] == ["big.blur.tif", "small.blur.png"]


@pytest.mark.parametrize(("spec", "fmt", "limits", "message"), [
    ("edge_detection", "auto", {}, "step 1 edge_detection cannot be split across workers for a huge image: "
                                   "Canny's hysteresis"),
    ("blur | threshold(mode=triangle)", "auto", {}, "step 2 threshold cannot be split"),
    ("thumbnail(width=100, height=100)", "auto", {}, "geometry is not split across workers yet"),
    ("blur", "png", {}, "a huge image is written as a tiled TIFF: ask for format tiff or auto, not png"),
    ("blur", "auto", {"max_tiled_pixels": 400_000}, "= 0.46 MP, over the 0.4 MP limit for huge images"),
    ("blur", "auto", {"max_tiled_file_bytes": 1000}, "over the 1000 B per-file limit for huge images"),
])
def test_what_cannot_be_split_is_refused_and_leaves_no_file(tmp_path: Path, spec: str, fmt: str, limits: dict,
                                                            message: str):
    huge_tiff(tmp_path / "big.tif")
    with ThreadPoolExecutor(2) as pool:
        report = run_batch([tmp_path / "big.tif"], parse_pipeline(spec), Output(fmt), tmp_path / "out", pool,
                           workers=2, **LIMITS, **limits)
    [failed] = report.failed
    assert message in failed.error, failed.error
    assert list((tmp_path / "out").iterdir()) == []


def test_a_huge_image_that_is_no_tiff_is_refused_by_the_pixel_limit(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((400, 300), np.uint8))
    with ThreadPoolExecutor(2) as pool:
        [failed] = run_batch([tmp_path / "big.png"], parse_pipeline("blur"), Output(), tmp_path / "out", pool,
                             workers=2, **LIMITS).failed
    assert failed.error == "300×400 is 0.1 MP, over the 0.1 MP limit", failed.error   # not split: refused


@pytest.mark.mpi
@pytest.mark.parametrize("workers", [2, 3])
def test_pixmill_run_splits_one_huge_tiff_over_every_mpi_worker(tmp_path: Path, workers: int):
    image = huge_tiff(tmp_path / "big.tif")
    done = subprocess.run([sys.executable, "-m", "pixmill", "run", str(tmp_path / "big.tif"), "-p", "blur(ksize=15)",
                           "-o", str(tmp_path / "out"), "-w", str(workers), "--max-pixels", "100000"],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert "1 of 1 images processed" in done.stdout and f"{workers} mpi workers" in done.stdout
    assert "split into 4 bands" in done.stdout
    whole, _ = run_pipeline(parse_pipeline("blur(ksize=15)"), image)
    assert np.array_equal(result_of(tmp_path / "out" / "big.blur.tif"), whole)
