"""Tone and colour: operations that remap pixel values without moving them."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from .classic import to_gray
from .registry import POINT, Param, global_stats, operation, whole


def apply_curve(image: np.ndarray, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Map every value through curve, a function of values scaled to 0..1, at the image's own depth."""
    top = np.iinfo(image.dtype).max
    values = np.arange(top + 1, dtype=np.float64) / top
    lut = np.clip(np.rint(curve(values) * top), 0, top).astype(image.dtype)
    return cv2.LUT(image, lut) if image.dtype == np.uint8 else lut[image]


def to_depth(values: np.ndarray, dtype: np.dtype | type[np.integer]) -> np.ndarray:
    """Round and clip float values (in the dtype's units) back to the integer dtype."""
    return np.clip(np.rint(values), 0, np.iinfo(dtype).max).astype(dtype)


@operation("brightness_contrast", "Adjust brightness and contrast",
           Param("brightness", "int", 10, "added light: -100 is black, 100 is white", min=-100, max=100),
           Param("contrast", "int", 10, "spread around mid-gray: -100 is flat gray, 100 is 4×", min=-100, max=100),
           alpha="split",
           split=POINT)
def brightness_contrast(image: np.ndarray, *, brightness: int, contrast: int) -> np.ndarray:
    factor = ((100 + contrast) / 100) ** 2
    return apply_curve(image, lambda x: (x - 0.5) * factor + 0.5 + brightness / 100)


@operation("gamma", "Gamma correction: above 1 brightens the mid-tones, below 1 darkens them",
           Param("gamma", "float", 1.5, "gamma; 1 leaves the image unchanged", min=0.1, max=5),
           alpha="split",
           split=POINT)
def gamma(image: np.ndarray, *, gamma: float) -> np.ndarray:
    return apply_curve(image, lambda x: x ** (1 / gamma))


@operation("equalize", "Adaptive histogram equalization (CLAHE); colour images on the L channel of Lab",
           Param("clip_limit", "float", 2.0, "contrast limit per tile; higher is stronger", min=0.1, max=40),
           Param("tiles", "int", 8, "the image is split into tiles×tiles regions", min=1, max=32),
           alpha="split",
           split=whole("CLAHE needs the histograms of its tiles across the whole image"))
def equalize(image: np.ndarray, *, clip_limit: float, tiles: int) -> np.ndarray:
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    if image.ndim == 2:
        return clahe.apply(image)
    if image.dtype == np.uint8:
        lab = cv2.cvtColor(image, cv2.COLOR_BGR2Lab)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)
    # OpenCV's Lab is 8-bit or float: equalize a 16-bit copy of L to keep the precision
    lab = cv2.cvtColor(image.astype(np.float32) / 65535, cv2.COLOR_BGR2Lab)
    light = to_depth(lab[..., 0] * (65535 / 100), np.uint16)
    lab[..., 0] = clahe.apply(light).astype(np.float32) * (100 / 65535)
    return to_depth(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR) * 65535, np.uint16)


@operation("posterize", "Reduce each channel to a few evenly spaced levels",
           Param("levels", "int", 4, "number of levels per channel", min=2, max=64),
           alpha="split",
           split=POINT)
def posterize(image: np.ndarray, *, levels: int) -> np.ndarray:
    return apply_curve(image, lambda x: np.minimum(np.floor(x * levels), levels - 1) / (levels - 1))


def stretch_bounds(channel: np.ndarray, cutoff: float) -> tuple[int, int]:
    """The values below which and above which cutoff percent of the pixels lie."""
    return bounds_of(_histogram(channel), cutoff)


def _histogram(channel: np.ndarray) -> np.ndarray:
    return np.bincount(channel.ravel(), minlength=np.iinfo(channel.dtype).max + 1).astype(np.int64)


def bounds_of(histogram: np.ndarray, cutoff: float) -> tuple[int, int]:
    """stretch_bounds from a channel's histogram."""
    cdf = np.cumsum(histogram)
    total = cdf[-1]
    low = int(np.searchsorted(cdf, total * cutoff / 100, side="right"))
    high = int(np.searchsorted(cdf, total * (1 - cutoff / 100), side="left"))
    return low, high


def _stretch_lut(low: int, high: int, dtype: np.dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    values = np.arange(top + 1, dtype=np.float64)
    if high <= low:
        return values.astype(dtype)
    return to_depth((values - low) * top / (high - low), dtype)


@operation("autocontrast", "Stretch the values so the darkest become black and the lightest white",
           Param("cutoff", "float", 1.0, "percent of pixels ignored at each end", min=0, max=45),
           Param("mode", "choice", "luminance",
                 "luminance keeps the colours; per_channel also corrects a colour cast",
                 choices=("luminance", "per_channel")),
           alpha="split",
           split=global_stats(lambda image, p: _autocontrast_histograms(image, p["mode"]),
                              lambda image, p, stats: _autocontrast_with(image, p["cutoff"], p["mode"], stats)))
def autocontrast(image: np.ndarray, *, cutoff: float, mode: str) -> np.ndarray:
    return _autocontrast_with(image, cutoff, mode, _autocontrast_histograms(image, mode))


def _autocontrast_histograms(image: np.ndarray, mode: str) -> np.ndarray:
    """The histograms the stretch is made from: the gray image's, or each channel's (one row each)."""
    if mode == "luminance" or image.ndim == 2:
        return _histogram(to_gray(image))[None]
    return np.stack([_histogram(np.ascontiguousarray(image[..., c])) for c in range(image.shape[2])])


def _autocontrast_with(image: np.ndarray, cutoff: float, mode: str, histograms: np.ndarray) -> np.ndarray:
    luts = np.stack([_stretch_lut(*bounds_of(h, cutoff), image.dtype) for h in histograms])
    if len(luts) == 1:
        return luts[0][image]
    return luts[np.arange(image.shape[2]), image]


@operation("saturation", "Make colours more vivid (above 1) or duller (below 1; 0 is gray)",
           Param("factor", "float", 1.5, "saturation factor; 1 leaves the image unchanged", min=0, max=4),
           alpha="split",
           split=POINT)
def saturation(image: np.ndarray, *, factor: float) -> np.ndarray:
    if image.ndim == 2:
        return image.copy()
    values = image.astype(np.float32)
    gray = cv2.cvtColor(values, cv2.COLOR_BGR2GRAY)[..., None]
    return to_depth(gray + (values - gray) * factor, image.dtype)


@operation("hue_shift", "Turn every hue around the colour wheel",
           Param("degrees", "float", 90.0, "angle on the colour wheel", min=-180, max=180),
           alpha="split",
           split=POINT)
def hue_shift(image: np.ndarray, *, degrees: float) -> np.ndarray:
    if image.ndim == 2:
        return image.copy()
    top = np.iinfo(image.dtype).max
    hsv = cv2.cvtColor(image.astype(np.float32) / top, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0] + degrees) % 360
    return to_depth(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * top, image.dtype)
