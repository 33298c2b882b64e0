"""Band by band equals the whole image at once: every point, neighbourhood and global operation, on images whose
sides do not divide evenly, in 2, 3 and many bands (bands thinner than their halo included); and the
operations that cannot be split are refused, naming the step."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pixmill.errors import InvalidPipeline
from pixmill.imaging.ops import get_operation, operations
from pixmill.imaging.pipeline import parse_pipeline, run_pipeline
from pixmill.imaging.regions import bands, plan_rows, process_band, process_in_bands

REAL = Path(__file__).parents[1] / "data" / "real"


def _images() -> dict[str, np.ndarray]:
    photo = cv2.resize(cv2.imread(str(REAL / "pil_flower.jpg")), (83, 97), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(3).integers(0, 256, photo.shape[:2], dtype=np.uint8)
    return {"bgr": photo, "gray": cv2.addWeighted(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), 0.7, noise, 0.3, 0),
            "bgra": np.dstack([photo, noise]), "bgr16": photo.astype(np.uint16) * 257 + 3}


IMAGES = _images()
ROWS = (49, 33, 7)  # 2 bands of the 97 rows, 3, and 14 bands thinner than most halos

SPLITTABLE = [
    "color_inversion", "grayscale", "brightness_contrast(brightness=20, contrast=30)", "gamma(gamma=1.8)",
    "posterize(levels=3)", "sepia(strength=0.7)", "channel_swap(order=rgb)", "colormap", "saturation(factor=1.6)",
    "hue_shift(degrees=40)", "threshold", "threshold(mode=tozero_inv, value=90)",
    "threshold(mode=adaptive, block=3)", "threshold(mode=adaptive, block=51)",
    "blur(ksize=1)", "blur", "blur(ksize=31, sigma=3)", "sharpen(radius=0.5)", "sharpen(amount=2, radius=3)",
    "median(ksize=3)", "median(ksize=21)", "bilateral(d=1)", "bilateral", "bilateral(d=25, sigma_space=20)",
    "denoise", "sobel(ksize=1)", "sobel(direction=x, ksize=7)", "sobel(direction=y)", "laplacian(ksize=1)",
    "laplacian(ksize=7)", "emboss(strength=2)", "morphology(op=erode, ksize=7)", "morphology(op=dilate)",
    "morphology(op=open, ksize=5, iterations=3)", "morphology(op=close, shape=ellipse, ksize=9)",
    "morphology(op=gradient, shape=cross)", "morphology(op=tophat, ksize=7)", "morphology(op=blackhat, ksize=5)",
    "cartoon(block=3)", "cartoon", "cartoon(block=51, levels=4)", "pixelate(block=2)", "pixelate(block=13)",
    "grayscale | blur(ksize=9) | sharpen | median(ksize=7) | pixelate(block=5) | threshold(mode=adaptive)",
    "blur(ksize=3) | pixelate(block=6) | pixelate(block=4) | emboss", "pixelate(block=30) | median(ksize=9)",
    "autocontrast", "autocontrast(mode=per_channel, cutoff=5)", "threshold(mode=otsu)",
    "blur(ksize=7) | autocontrast(cutoff=3) | median(ksize=5) | threshold(mode=otsu) | morphology(op=open)",
]


def in_bands(spec: str, image: np.ndarray, rows: int) -> np.ndarray:
    parts = [out for _, out in process_in_bands(parse_pipeline(spec), lambda top, bottom: image[top:bottom].copy(),
                                                image.shape[0], rows=rows)]
    return np.concatenate(parts)


@pytest.mark.parametrize("spec", SPLITTABLE)
def test_bands_equal_the_whole_image(spec: str):
    pipeline = parse_pipeline(spec)
    for name, image in IMAGES.items():
        whole, _ = run_pipeline(pipeline, image)
        for rows in ROWS:
            got = in_bands(spec, image, rows)
            assert got.dtype == whole.dtype and got.shape == whole.shape, (name, rows)
            assert np.array_equal(got, whole), f"{spec} on {name} in bands of {rows} rows: " \
                f"{np.count_nonzero(got != whole)} values differ"


def test_every_operation_says_how_it_splits():
    undeclared = [op.name for op in operations() if op.split is None]
    assert undeclared == []
    covered = {step.op for spec in SPLITTABLE for step in parse_pipeline(spec).steps}
    splittable = {op.name for op in operations() if op.split_for({}).kind != "whole"}
    assert splittable - covered == set()   # each is tested above


@pytest.mark.parametrize(("spec", "step", "why"), [
    ("edge_detection", "step 1 edge_detection", "hysteresis"),
    ("threshold(mode=triangle)", "step 1 threshold", "triangle mode"),
    ("grayscale | vignette", "step 2 vignette", "where each pixel lies"),
    ("equalize", "step 1 equalize", "CLAHE"),
    ("blur | resize(scale=0.5)", "step 2 resize", "geometry"),
])
def test_what_cannot_be_split_is_refused_naming_the_step(spec: str, step: str, why: str):
    with pytest.raises(InvalidPipeline) as refused:
        plan_rows(parse_pipeline(spec))
    assert step in refused.value.message and why in refused.value.message
    assert "cannot be split" in refused.value.message


def test_halos_add_up_and_bands_keep_the_alignment():
    plan = plan_rows(parse_pipeline("blur(ksize=9) | median(ksize=5) | pixelate(block=6) | pixelate(block=4)"))
    assert (plan.halo, plan.align) == (4 + 2 + 5 + 3, 12)   # a block's mean reaches block - 1 rows away
    cut = bands(100, 30, plan)
    assert [(b.start, b.stop) for b in cut] == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert [(b.top, b.bottom) for b in cut] == [(0, 48), (12, 84), (36, 100), (72, 100)]
    assert [(b.start, b.stop) for b in bands(100, 30, plan, start_align=16)] == [(0, 16), (16, 32), (32, 48),
                                                                                (48, 64), (64, 80), (80, 96), (96, 100)]
    assert get_operation("sharpen").split_for({"radius": 3.0}).halo >= 12   # OpenCV's kernel for sigma 3


def test_a_band_given_the_wrong_rows_is_an_error():
    band = bands(97, 49, plan_rows(parse_pipeline("blur")))[0]
    with pytest.raises(ValueError, match="input rows"):
        process_band(parse_pipeline("blur"), IMAGES["bgr"][:10], band)
