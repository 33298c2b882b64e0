"""Morphology: erosion, dilation and the operations built from them."""

from __future__ import annotations

import cv2
import numpy as np

from .registry import Param, neighbourhood, operation

_MORPH = {"erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE, "open": cv2.MORPH_OPEN,
          "close": cv2.MORPH_CLOSE, "gradient": cv2.MORPH_GRADIENT, "tophat": cv2.MORPH_TOPHAT,
          "blackhat": cv2.MORPH_BLACKHAT}
_SHAPES = {"rect": cv2.MORPH_RECT, "ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS}


_TWICE = {"open", "close", "tophat", "blackhat"}   # an erosion and a dilation, one after the other


def morphology_halo(params: dict) -> int:
    """How far the result of one morphology step reaches: half the element, per pass and iteration."""
    passes = 2 if params["op"] in _TWICE else 1
    return passes * params["iterations"] * (params["ksize"] // 2)


@operation("morphology", "Morphological operation with a structuring element",
           Param("op", "choice", "open", "erode shrinks light areas, dilate grows them, open removes "
                 "light specks, close fills dark holes, gradient outlines, tophat/blackhat keep small details",
                 choices=tuple(_MORPH)),
           Param("ksize", "int", 3, "structuring element size in pixels", min=1, max=99, odd=True),
           Param("shape", "choice", "rect", "structuring element shape", choices=tuple(_SHAPES)),
           Param("iterations", "int", 1, "how many times to apply it", min=1, max=20),
           alpha="split",
           split=neighbourhood(morphology_halo))
def morphology(image: np.ndarray, *, op: str, ksize: int, shape: str, iterations: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(_SHAPES[shape], (ksize, ksize))
    return cv2.morphologyEx(image, _MORPH[op], kernel, iterations=iterations)
