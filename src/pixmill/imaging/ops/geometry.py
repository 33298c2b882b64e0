"""Geometry: operations that move pixels around or change the image size."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .registry import Param, operation, whole

_QUARTER_TURNS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
_WARP = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def rotate_shape(height: int, width: int, params: dict) -> tuple[int, int]:
    """The (height, width) that rotate gives for an input of this size."""
    turn = params["angle"] % 360
    if turn % 90 == 0:
        return (width, height) if turn in (90, 270) else (height, width)
    if not params["expand"]:
        return height, width
    cos, sin = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
    return max(1, round(height * cos + width * sin)), max(1, round(width * cos + height * sin))


@operation("rotate", "Rotate counter-clockwise by an angle; quarter turns are exact",
           Param("angle", "float", 90.0, "degrees counter-clockwise (negative turns clockwise)", min=-360, max=360),
           Param("expand", "bool", True, "grow the canvas to fit the whole rotated image (else keep the size)"),
           Param("interpolation", "choice", "linear", "resampling filter for angles that are not quarter turns",
                 choices=tuple(_WARP)),
           size=rotate_shape,
           split=whole("geometry is not split across workers yet"))
def rotate(image: np.ndarray, *, angle: float, expand: bool, interpolation: str) -> np.ndarray:
    turn = angle % 360
    if turn % 90 == 0:
        return image.copy() if turn == 0 else cv2.rotate(image, _QUARTER_TURNS[int(turn)])
    height, width = image.shape[:2]
    out_h, out_w = rotate_shape(height, width, {"angle": angle, "expand": expand})
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), turn, 1.0)
    matrix[0, 2] += (out_w - width) / 2
    matrix[1, 2] += (out_h - height) / 2
    # corners left uncovered are black, and transparent when there is an alpha channel
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=_WARP[interpolation],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


_FLIP = {"horizontal": 1, "vertical": 0, "both": -1}


@operation("flip", "Mirror the image left-right, top-bottom or both",
           Param("direction", "choice", "horizontal", "horizontal mirrors left-right, vertical top-bottom",
                 choices=tuple(_FLIP)),
           split=whole("geometry is not split across workers yet"))
def flip(image: np.ndarray, *, direction: str) -> np.ndarray:
    return cv2.flip(image, _FLIP[direction])


def crop_shape(height: int, width: int, params: dict) -> tuple[int, int]:
    """The (height, width) that crop gives: the rectangle clipped to the image (0 if outside it)."""
    x, y, w, h = params["x"], params["y"], params["width"], params["height"]
    out_w = width - x if w is None else min(w, width - x)
    out_h = height - y if h is None else min(h, height - y)
    return max(0, out_h), max(0, out_w)


@operation("crop", "Cut out a rectangle; a rectangle reaching past the edges is clipped to the image",
           Param("x", "int", 0, "left edge in pixels", min=0, max=100_000),
           Param("y", "int", 0, "top edge in pixels", min=0, max=100_000),
           Param("width", "int", None, "width in pixels (empty: to the right edge)", min=1, max=100_000,
                 nullable=True),
           Param("height", "int", None, "height in pixels (empty: to the bottom edge)", min=1, max=100_000,
                 nullable=True),
           size=crop_shape,
           split=whole("geometry is not split across workers yet"))
def crop(image: np.ndarray, *, x: int, y: int, width: int | None, height: int | None) -> np.ndarray:
    img_h, img_w = image.shape[:2]
    if x >= img_w or y >= img_h:
        raise ValueError(f"the crop starts at x={x}, y={y}, outside the {img_w}×{img_h} image; "
                         f"x must be below {img_w} and y below {img_h}")
    out_h, out_w = crop_shape(img_h, img_w, {"x": x, "y": y, "width": width, "height": height})
    return image[y:y + out_h, x:x + out_w].copy()


def thumbnail_shape(height: int, width: int, params: dict) -> tuple[int, int]:
    """The (height, width) that thumbnail gives: inside the box, aspect kept, never larger."""
    scale = min(params["width"] / width, params["height"] / height, 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


@operation("thumbnail", "Shrink to fit inside a box, keeping the aspect ratio (never enlarges); "
           "as the first step, a JPEG is decoded straight at a reduced scale",
           Param("width", "int", 256, "box width in pixels", min=1, max=30_000),
           Param("height", "int", 256, "box height in pixels", min=1, max=30_000),
           size=thumbnail_shape, shrink_on_load=True,
           split=whole("geometry is not split across workers yet"))
def thumbnail(image: np.ndarray, *, width: int, height: int) -> np.ndarray:
    out_h, out_w = thumbnail_shape(image.shape[0], image.shape[1], {"width": width, "height": height})
    if (out_h, out_w) == image.shape[:2]:
        return image.copy()
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)


_BORDER = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE,
           "reflect": cv2.BORDER_REFLECT_101, "wrap": cv2.BORDER_WRAP}


def pad_shape(height: int, width: int, params: dict) -> tuple[int, int]:
    """The (height, width) that pad gives: a border added on every side."""
    return height + 2 * params["size"], width + 2 * params["size"]


@operation("pad", "Add a border of the same width on every side",
           Param("size", "int", 16, "border width in pixels", min=0, max=2000),
           Param("mode", "choice", "constant", "constant fills with a gray level; the others repeat the image",
                 choices=tuple(_BORDER)),
           Param("fill", "int", 0, "gray level 0..255 of a constant border (opaque)", min=0, max=255),
           size=pad_shape,
           split=whole("geometry is not split across workers yet"))
def pad(image: np.ndarray, *, size: int, mode: str, fill: int) -> np.ndarray:
    top = np.iinfo(image.dtype).max
    level = fill * top // 255
    channels = 1 if image.ndim == 2 else image.shape[2]
    value = (level,) * min(channels, 3) + ((top,) if channels == 4 else ())
    return cv2.copyMakeBorder(image, size, size, size, size, _BORDER[mode], value=value)
