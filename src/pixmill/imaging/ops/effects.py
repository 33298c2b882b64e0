"""Effects: stylised looks built from simpler operations."""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from .classic import to_bgr, to_gray
from .registry import POINT, Param, neighbourhood, operation, whole
from .tone import apply_curve, to_depth


@operation("pixelate", "Pixelate: replace each block by its average colour",
           Param("block", "int", 8, "block size in pixels", min=2, max=512),
           split=neighbourhood(lambda p: p["block"] - 1, align=lambda p: p["block"]))
def pixelate(image: np.ndarray, *, block: int) -> np.ndarray:
    height, width = image.shape[:2]
    rows, cols = -(-height // block), -(-width // block)
    padded = cv2.copyMakeBorder(image, 0, rows * block - height, 0, cols * block - width, cv2.BORDER_REPLICATE)
    # an exact integer factor makes INTER_AREA the mean of each block
    small = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA)
    return small.repeat(block, axis=0).repeat(block, axis=1)[:height, :width].copy()


_SEPIA = np.array([[0.131, 0.534, 0.272], [0.168, 0.686, 0.349], [0.189, 0.769, 0.393]])


@operation("sepia", "Sepia tone, like an old photograph (gray images become colour)",
           Param("strength", "float", 1.0, "0 leaves the image unchanged, 1 is full sepia", min=0, max=1),
           alpha="split",
           split=POINT)
def sepia(image: np.ndarray, *, strength: float) -> np.ndarray:
    matrix = (1 - strength) * np.eye(3) + strength * _SEPIA
    return cv2.transform(to_bgr(image), matrix)


@operation("vignette", "Darken the corners towards the edges",
           Param("strength", "float", 0.5, "how dark the corners get: 1 is black", min=0, max=1),
           Param("radius", "float", 1.0, "where the darkening is complete, as a fraction of the "
                 "centre-to-corner distance", min=0.2, max=3),
           alpha="split",
           split=whole("its darkening depends on where each pixel lies in the whole image"))
def vignette(image: np.ndarray, *, strength: float, radius: float) -> np.ndarray:
    height, width = image.shape[:2]
    # -1..1 from the first to the last pixel centre, so the corner pixels get the full strength
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / ((height - 1) / 2 or 1)
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / ((width - 1) / 2 or 1)
    distance = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2) / np.sqrt(2)
    mask = 1 - strength * np.clip(distance / radius, 0, 1) ** 2
    if image.ndim == 3:
        mask = mask[..., None]
    return to_depth(image * mask, image.dtype)


@operation("cartoon", "Cartoon: flat colours with dark outlines",
           Param("levels", "int", 8, "colour levels per channel", min=2, max=32),
           Param("block", "int", 9, "neighbourhood for finding outlines; larger gives bolder lines",
                 min=3, max=51, odd=True),
           depth16=False, alpha="split",
           split=neighbourhood(lambda p: max(2 + p["block"] // 2, 9 // 2)))
def cartoon(image: np.ndarray, *, levels: int, block: int) -> np.ndarray:
    edges = cv2.adaptiveThreshold(cv2.medianBlur(to_gray(image), 5), 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                  cv2.THRESH_BINARY, block, 2)
    smooth = cv2.bilateralFilter(image, 9, 75, 75)
    flat = apply_curve(smooth, lambda x: np.minimum(np.floor(x * levels), levels - 1) / (levels - 1))
    return cv2.bitwise_and(flat, flat, mask=edges)


_ORDERS = tuple("".join(p) for p in itertools.permutations("bgr"))


@operation("channel_swap", "Reorder the colour channels (rgb swaps red and blue)",
           Param("order", "choice", "rgb", "which input channels become blue, green and red",
                 choices=_ORDERS),
           alpha="split",
           split=POINT)
def channel_swap(image: np.ndarray, *, order: str) -> np.ndarray:
    if image.ndim == 2:
        return image.copy()
    return np.ascontiguousarray(image[..., ["bgr".index(c) for c in order]])


_COLORMAPS = {"viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "inferno": cv2.COLORMAP_INFERNO,
              "plasma": cv2.COLORMAP_PLASMA, "cividis": cv2.COLORMAP_CIVIDIS, "turbo": cv2.COLORMAP_TURBO,
              "jet": cv2.COLORMAP_JET, "hot": cv2.COLORMAP_HOT, "bone": cv2.COLORMAP_BONE,
              "ocean": cv2.COLORMAP_OCEAN, "twilight": cv2.COLORMAP_TWILIGHT}


@operation("colormap", "False colour: map the gray levels onto a colour scale",
           Param("name", "choice", "viridis", "colour scale", choices=tuple(_COLORMAPS)),
           depth16=False, alpha="split",
           split=POINT)
def colormap(image: np.ndarray, *, name: str) -> np.ndarray:
    return cv2.applyColorMap(to_gray(image), _COLORMAPS[name])
