"""The six operations of the original application, with its names and defaults."""

from __future__ import annotations

import cv2
import numpy as np

from .registry import POINT, Param, Split, neighbourhood, operation, whole

INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def to_gray(image: np.ndarray) -> np.ndarray:
    """A single-channel view of a gray, BGR or BGRA image."""
    if image.ndim == 2:
        return image
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def to_bgr(image: np.ndarray) -> np.ndarray:
    """A three-channel version of a gray or BGR image."""
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


@operation("edge_detection", "Canny edge detection (white edges on black)",
           Param("low", "int", 100, "lower hysteresis threshold", min=0, max=1000),
           Param("high", "int", 200, "upper hysteresis threshold", min=0, max=1000),
           Param("aperture", "int", 3, "Sobel aperture size", min=3, max=7, odd=True),
           depth16=False, alpha="split",
           check=lambda p: _require(p["low"] <= p["high"], "low must not be above high"),
           split=whole("Canny's hysteresis follows each edge across the whole image"))
def edge_detection(image: np.ndarray, *, low: int, high: int, aperture: int) -> np.ndarray:
    return cv2.Canny(image, low, high, apertureSize=aperture)


@operation("color_inversion", "Invert every colour (a photographic negative); alpha is kept", alpha="split",
           split=POINT)
def color_inversion(image: np.ndarray) -> np.ndarray:
    return cv2.bitwise_not(image)


@operation("grayscale", "Convert to gray (ITU-R BT.601 weights)", alpha="split",
           split=POINT)
def grayscale(image: np.ndarray) -> np.ndarray:
    return to_gray(image)


@operation("blur", "Gaussian blur",
           Param("ksize", "int", 5, "kernel size in pixels", min=1, max=99, odd=True),
           Param("sigma", "float", 0.0, "standard deviation; 0 derives it from the kernel size", min=0, max=100),
           split=neighbourhood(lambda p: p["ksize"] // 2))
def blur(image: np.ndarray, *, ksize: int, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (ksize, ksize), sigma)


_THRESHOLD = {"binary": cv2.THRESH_BINARY, "binary_inv": cv2.THRESH_BINARY_INV, "trunc": cv2.THRESH_TRUNC,
              "tozero": cv2.THRESH_TOZERO, "tozero_inv": cv2.THRESH_TOZERO_INV}


def threshold_split(params: dict) -> Split:
    """Plain thresholds look at each pixel; adaptive at its block; otsu at the whole image's histogram."""
    if params["mode"] == "adaptive":
        return Split("neighbourhood", params["block"] // 2)
    if params["mode"] == "otsu":
        return Split("global", gather=lambda image, p: np.bincount(to_gray(image).ravel(), minlength=256)[None],
                     apply=lambda image, p, stats: cv2.threshold(to_gray(image), otsu_threshold(stats[0]), 255,
                                                                 cv2.THRESH_BINARY)[1])
    if params["mode"] == "triangle":
        return Split("whole", reason="triangle mode needs the histogram of the whole image, and is not split yet")
    return POINT


def otsu_threshold(histogram: np.ndarray) -> int:
    """Otsu's threshold of a gray histogram, as OpenCV computes it (the same sums in the same order)."""
    total = int(histogram.sum())
    scale = 1.0 / total
    mu = 0.0
    for i, count in enumerate(histogram.tolist()):
        mu += i * float(count)
    mu *= scale
    mu1 = q1 = max_sigma = 0.0
    best = 0
    epsilon = float(np.finfo(np.float32).eps)
    for i, count in enumerate(histogram.tolist()):
        p_i = count * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < epsilon or max(q1, q2) > 1.0 - epsilon:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma, best = sigma, i
    return best


@operation("threshold", "Black and white at a threshold on the gray image",
           Param("value", "int", 127, "threshold (ignored by otsu, triangle and adaptive)", min=0, max=255),
           Param("mode", "choice", "binary", "how pixels are split",
                 choices=("binary", "binary_inv", "trunc", "tozero", "tozero_inv", "otsu", "triangle", "adaptive")),
           Param("block", "int", 11, "neighbourhood size for adaptive mode", min=3, max=99, odd=True),
           depth16=False, alpha="split",
           split=threshold_split)
def threshold(image: np.ndarray, *, value: int, mode: str, block: int) -> np.ndarray:
    gray = to_gray(image)
    if mode == "adaptive":
        return cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, block, 2)
    if mode in ("otsu", "triangle"):
        flag = cv2.THRESH_OTSU if mode == "otsu" else cv2.THRESH_TRIANGLE
        return cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | flag)[1]
    return cv2.threshold(gray, value, 255, _THRESHOLD[mode])[1]


def resize_shape(height: int, width: int, params: dict) -> tuple[int, int]:
    """The (height, width) that resize gives for an input of this size."""
    w, h, scale = params.get("width"), params.get("height"), params.get("scale", 0.5)
    if w and h:
        return h, w
    if w:
        return max(1, round(height * w / width)), w
    if h:
        return h, max(1, round(width * h / height))
    return max(1, int(np.rint(height * scale))), max(1, int(np.rint(width * scale)))


@operation("resize", "Resize by a scale, or to a width and/or height (one of them keeps the aspect ratio)",
           Param("width", "int", None, "target width in pixels", min=1, max=30000, nullable=True),
           Param("height", "int", None, "target height in pixels", min=1, max=30000, nullable=True),
           Param("scale", "float", 0.5, "scale factor when no width or height is given", min=0.01, max=8),
           Param("interpolation", "choice", "linear", "resampling filter", choices=tuple(INTERPOLATION)),
           size=resize_shape,
           split=whole("geometry is not split across workers yet"))
def resize(image: np.ndarray, *, width: int | None, height: int | None, scale: float, interpolation: str) -> np.ndarray:
    flag = INTERPOLATION[interpolation]
    h, w = resize_shape(image.shape[0], image.shape[1], {"width": width, "height": height, "scale": scale})
    if width is None and height is None and min(image.shape[0], image.shape[1]) * scale >= 1:
        # the original's call, pixel for pixel (it would round a side under one pixel to nothing)
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=flag)
    return cv2.resize(image, (w, h), interpolation=flag)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
