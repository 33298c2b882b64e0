"""Read and write image bytes safely: sniff by magic bytes, check the header, decode, encode.

Formats are found from the bytes, never the file name.  The header is read (with Pillow, which
reads only the header on open) and the pixel limit enforced before anything is decoded.  JPEG and
PNG are decoded with OpenCV for speed (a JPEG without its end marker is refused, because libjpeg
would fill the missing part with grey); GIF, BMP, WebP and TIFF with Pillow, which refuses
truncated data.  Outputs are encoded with OpenCV and carry no metadata.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CorruptImage, ImageTooLarge, UnsupportedFormat

__all__ = ["FORMATS", "MEDIA_TYPES", "EXTENSIONS", "ImageInfo", "Decoded",
           "sniff", "probe", "decode", "encode", "output_format"]

FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff")
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
               "bmp": "image/bmp", "tiff": "image/tiff"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tif"}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP and TIFF"

_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))
_LOOKS_LIKE = ((b"<svg", "SVG"), (b"<?xml", "XML or SVG"), (b"<!doctype html", "HTML"), (b"<html", "HTML"),
               (b"8bps", "Photoshop (PSD)"), (b"\x00\x00\x00\x0cjp2", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
               (b"\x01\xda", "SGI"), (b"%pdf", "PDF"), (b"pk\x03\x04", "ZIP"), (b"\x00\x00\x01\x00", "ICO"),
               (b"ii+\x00", "BigTIFF"), (b"mm\x00+", "BigTIFF"))
_PILLOW_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                   "DIB": "bmp", "TIFF": "tiff"}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format, size, Pillow mode, whether it has more frames, orientation."""

    format: str
    width: int
    height: int
    mode: str
    animated: bool = False
    orientation: int = 1
    notes: tuple[str, ...] = ()

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


@dataclass
class Decoded:
    """A decoded image in OpenCV layout, its source format and notes on what was done to it."""

    image: np.ndarray
    format: str
    notes: list[str] = field(default_factory=list)


def sniff(data: bytes) -> str:
    """The format the bytes are in, or UnsupportedFormat saying what they look like."""
    if not data:
        raise UnsupportedFormat(f"the file is empty; pixmill accepts {ACCEPTED}")
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:256].lstrip().lower()
    kind = next((label for magic, label in _LOOKS_LIKE if head.startswith(magic)), None)
    if kind is None and all(32 <= b < 127 or b in (9, 10, 13) for b in data[:256]):
        kind = "text"
    what = f"it looks like {kind}" if kind else "its first bytes match no image format"
    raise UnsupportedFormat(f"not a supported image: {what}; pixmill accepts {ACCEPTED}")


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Read the header (never the pixels), and refuse an image over max_pixels."""
    fmt = sniff(data)
    if (Image.MAX_IMAGE_PIXELS or 0) < max_pixels:  # only ever raised: pixmill's own check below is the limit
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            mode, pillow_format = im.mode, im.format
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the header claims over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP, "
                            f"over the {max_pixels / 1e6:g} MP limit") from None
    except UnidentifiedImageError:
        if fmt == "tiff":
            raise UnsupportedFormat("this TIFF layout cannot be read (for example several planes, "
                                    "an unusual compression or a damaged directory)") from None
        raise CorruptImage(f"the {fmt.upper()} header is damaged and cannot be read") from None
    except Exception as exc:
        if isinstance(exc, (EOFError, struct.error)) or "truncated" in str(exc).lower():
            raise CorruptImage(f"the {fmt.upper()} is truncated: the file ends inside its header") from None
        raise CorruptImage(f"the {fmt.upper()} header is damaged ({_reason(exc)})") from None
    if _PILLOW_FORMATS.get(pillow_format or "") != fmt:
        raise UnsupportedFormat(f"not a supported image: the header is {pillow_format}; pixmill accepts {ACCEPTED}")
    if width <= 0 or height <= 0:
        raise CorruptImage(f"the header says the image is {width}×{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}×{height} is {width * height / 1e6:.1f} MP, "
                            f"over the {max_pixels / 1e6:g} MP limit")
    notes: list[str] = []
    orientation = 1
    try:
        orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
        if orientation not in range(1, 9):
            notes.append(f"EXIF orientation {orientation} is invalid; ignored")
            orientation = 1
    except Exception:
        notes.append("EXIF metadata is unreadable; orientation ignored")
    try:
        animated = bool(getattr(im, "is_animated", False))
    except Exception:
        animated = False
    return ImageInfo(fmt, width, height, mode, animated, orientation, tuple(notes))


def decode(data: bytes, *, max_pixels: int) -> Decoded:
    """Decode into an OpenCV-layout array with EXIF orientation applied, or raise a PixmillError."""
    info = probe(data, max_pixels=max_pixels)
    if info.format == "jpeg":
        image = _decode_jpeg(data, info)
    elif info.format == "png" or (info.format == "tiff" and _tiff_is_deep(data)):
        image = _decode_opencv(data, info)
    else:
        image = _decode_pillow(data, info)
    if image.shape[0] * image.shape[1] > max_pixels:  # the decoder disagreed with the header
        raise ImageTooLarge(f"{image.shape[1]}×{image.shape[0]} is over the {max_pixels / 1e6:g} MP limit")
    notes = list(info.notes)
    if info.animated:
        notes.append("the file has several frames or pages: only the first was processed")
    if info.orientation != 1:
        image = _orient(image, info.orientation)
        notes.append(f"EXIF orientation {info.orientation} applied")
    return Decoded(np.ascontiguousarray(image), info.format, notes)


def output_format(requested: str, source: str) -> str:
    """The format to write: the requested one, or for auto JPEG→JPEG, WebP→WebP, anything else→PNG."""
    if requested != "auto":
        return requested
    return source if source in ("jpeg", "webp") else "png"


def encode(image: np.ndarray, fmt: str, *, quality: int = 90) -> tuple[bytes, list[str]]:
    """Encode an OpenCV-layout array; returns the bytes and notes on any conversion."""
    notes: list[str] = []
    if fmt in ("jpeg", "webp") and image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes.append(f"{fmt.upper()} holds 8 bits per channel: converted from 16-bit")
    if fmt == "jpeg" and image.ndim == 3 and image.shape[2] == 4:
        image = _flatten_alpha(image)
        notes.append("JPEG has no transparency: composited on white")
    params = {"jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality], "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
              "png": [cv2.IMWRITE_PNG_COMPRESSION, 3], "tiff": []}[fmt]
    ok, buffer = cv2.imencode("." + EXTENSIONS[fmt], image, params)
    if not ok:
        raise CorruptImage(f"could not encode the result as {fmt.upper()}")
    return buffer.tobytes(), notes


def _decode_jpeg(data: bytes, info: ImageInfo) -> np.ndarray:
    scan = _jpeg_scan_start(data)
    if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
        raise CorruptImage("the JPEG is truncated: its end-of-image marker is missing")
    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_GRAYSCALE if info.mode == "L" else cv2.IMREAD_COLOR)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise CorruptImage("the JPEG data is damaged and cannot be decoded")
    return image


def _jpeg_scan_start(data: bytes) -> int:
    """The offset of the first start-of-scan segment, skipping headers (an EXIF thumbnail has its own end marker)."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return -1


def _decode_opencv(data: bytes, info: ImageInfo) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise CorruptImage(f"the {info.format.upper()} data is truncated or damaged and cannot be decoded")
    if image.dtype not in (np.uint8, np.uint16):
        raise UnsupportedFormat(f"{info.format.upper()} with {image.dtype} samples is not supported; "
                                f"use 8 or 16 bits per channel")
    if image.ndim == 3 and image.shape[2] == 2:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR), image[..., 1]
        image = np.dstack(image)
    return image


def _decode_pillow(data: bytes, info: ImageInfo) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.load()
            return _pillow_to_array(im)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"a frame of the image is over the {info.width}×{info.height} the header "
                            f"claims and the pixel limit") from None
    except MemoryError:
        raise ImageTooLarge("the image needs more memory to decode than is allowed") from None
    except Exception as exc:
        raise CorruptImage(f"the {info.format.upper()} data is truncated or damaged ({_reason(exc)})") from None


def _pillow_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im.convert("I;16"), dtype=np.uint16)
    if mode in ("I", "F"):
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode == "LA":
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")
    array = np.asarray(im)
    if array.ndim == 2:
        return array
    code = cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR
    return cv2.cvtColor(array, code)


def _tiff_is_deep(data: bytes) -> bool:
    """Whether a TIFF has 16-bit colour samples, which Pillow would cut to 8 bits."""
    try:
        im = Image.open(io.BytesIO(data))
        bits = im.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) == 16 and len(bits) >= 3
    except Exception:
        return False


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def _flatten_alpha(image: np.ndarray) -> np.ndarray:
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    return (image[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
