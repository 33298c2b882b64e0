"""Filters: sharpening and noise removal."""

from __future__ import annotations

import cv2
import numpy as np

from .registry import Param, neighbourhood, operation


def gaussian_radius(sigma: float) -> int:
    """Half the kernel OpenCV derives from sigma alone (3 sigmas each side for 8 bits, 4 for 16: the larger)."""
    return (round(sigma * 4 * 2 + 1) | 1) // 2


@operation("sharpen", "Unsharp mask: add back the difference from a blurred copy",
           Param("amount", "float", 1.0, "strength; 0 leaves the image unchanged", min=0, max=10),
           Param("radius", "float", 1.0, "blur radius (Gaussian sigma) in pixels", min=0.1, max=50),
           alpha="split",
           split=neighbourhood(lambda p: gaussian_radius(p["radius"])))
def sharpen(image: np.ndarray, *, amount: float, radius: float) -> np.ndarray:
    soft = cv2.GaussianBlur(image, (0, 0), radius)
    return cv2.addWeighted(image, 1 + amount, soft, -amount, 0)


@operation("median", "Median filter: removes salt-and-pepper noise, keeps edges",
           Param("ksize", "int", 5, "window size in pixels (16-bit images keep full precision up to 5)",
                 min=3, max=99, odd=True),
           alpha="split",
           split=neighbourhood(lambda p: p["ksize"] // 2))
def median(image: np.ndarray, *, ksize: int) -> np.ndarray:
    if image.dtype == np.uint8 or ksize <= 5:
        return cv2.medianBlur(image, ksize)
    # OpenCV's median takes 16 bits only for windows of 3 and 5: larger ones run on the high byte
    return cv2.medianBlur((image >> 8).astype(np.uint8), ksize).astype(np.uint16) * 257


@operation("bilateral", "Bilateral filter: smooths flat areas and keeps edges sharp",
           Param("d", "int", 9, "diameter of the pixel neighbourhood", min=1, max=25),
           Param("sigma_color", "float", 75.0, "how different colours may be and still mix", min=1, max=300),
           Param("sigma_space", "float", 75.0, "how far apart pixels may be and still mix", min=1, max=300),
           depth16=False, alpha="split",
           split=neighbourhood(lambda p: max(1, p["d"] // 2)))  # OpenCV looks 1 pixel around at least
def bilateral(image: np.ndarray, *, d: int, sigma_color: float, sigma_space: float) -> np.ndarray:
    return cv2.bilateralFilter(image, d, sigma_color, sigma_space)


@operation("denoise", "Non-local means denoising (slow on large images)",
           Param("strength", "float", 10.0, "filter strength h; higher removes more noise and detail",
                 min=1, max=50),
           depth16=False, alpha="split",
           split=neighbourhood(lambda p: 21 // 2 + 7 // 2))
def denoise(image: np.ndarray, *, strength: float) -> np.ndarray:
    if image.ndim == 2:
        return cv2.fastNlMeansDenoising(image, None, strength, 7, 21)
    return cv2.fastNlMeansDenoisingColored(image, None, strength, strength, 7, 21)
