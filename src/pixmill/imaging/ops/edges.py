"""Edges: gradient and relief operations."""

from __future__ import annotations

import cv2
import numpy as np

from .classic import to_gray
from .registry import Param, neighbourhood, operation


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.clip(np.rint(values), 0, np.iinfo(dtype).max).astype(dtype)


@operation("sobel", "Sobel gradient magnitude on the gray image (white edges on black)",
           Param("direction", "choice", "both", "x finds vertical edges, y horizontal ones, both all",
                 choices=("x", "y", "both")),
           Param("ksize", "int", 3, "kernel size", min=1, max=7, odd=True),
           alpha="split",
           split=neighbourhood(lambda p: max(1, p["ksize"] // 2)))
def sobel(image: np.ndarray, *, direction: str, ksize: int) -> np.ndarray:
    gray = to_gray(image).astype(np.float32)
    if direction == "x":
        magnitude = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=ksize))
    elif direction == "y":
        magnitude = np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=ksize))
    else:
        magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=ksize),
                                  cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=ksize))
    return _saturate(magnitude, image.dtype)


@operation("laplacian", "Laplacian (second derivative) magnitude on the gray image",
           Param("ksize", "int", 3, "kernel size", min=1, max=7, odd=True),
           alpha="split",
           split=neighbourhood(lambda p: max(1, p["ksize"] // 2)))
def laplacian(image: np.ndarray, *, ksize: int) -> np.ndarray:
    gray = to_gray(image).astype(np.float32)
    return _saturate(np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=ksize)), image.dtype)


@operation("emboss", "Emboss: light and shadow along edges, as if pressed into metal",
           Param("strength", "float", 1.0, "depth of the relief", min=0.1, max=5),
           alpha="split",
           split=neighbourhood(lambda p: 1))
def emboss(image: np.ndarray, *, strength: float) -> np.ndarray:
    kernel = np.array([[-1, -1, 0], [-1, 0, 1], [0, 1, 1]], np.float32) * strength
    kernel[1, 1] = 1
    return cv2.filter2D(image, -1, kernel)
