"""Read and write image bytes safely: sniff by magic bytes, check the header, decode, encode.

Formats are found from the bytes, never the file name.  The header is read and the pixel limit
enforced before anything is decoded.  Decoders are strict: a truncated or corrupt file is an error,
never a partly grey image.  JPEG is decoded by libjpeg-turbo in strict mode (simplejpeg), PNG by
OpenCV's libpng after the still image's chunks are picked out (containers.clean_png), HEIC by
libheif (pillow-heif), and GIF, BMP, WebP, TIFF and AVIF by Pillow.  An embedded ICC profile is
applied on decoding (see color.py).  Outputs are encoded by OpenCV, AVIF by Pillow (and a TIFF
with a profile by tifffile); they carry no metadata but, when asked to keep it, the source's ICC profile.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import cv2
import numpy as np
import simplejpeg
from PIL import AvifImagePlugin, Image, UnidentifiedImageError

from ..errors import CorruptImage, ImageTooLarge, ProcessingFailed, UnsupportedFormat
from ..limits import format_bytes
from . import color, containers

__all__ = ["FORMATS", "MEDIA_TYPES", "EXTENSIONS", "ImageInfo", "Decoded",
           "sniff", "probe", "decode", "encode", "output_format", "jpeg_scale", "set_threads"]

FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "heic", "avif")
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
               "bmp": "image/bmp", "tiff": "image/tiff", "heic": "image/heic", "avif": "image/avif"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tif",
              "heic": "heic", "avif": "avif"}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC and AVIF"
MAX_SIDE = {"jpeg": 65535, "webp": 16383, "avif": 65535}
# A HEIC photo from a phone is a grid of a few dozen to a few hundred tiles, each an item of the file;
# libheif refuses a file of more than 1000 items, so pixmill says so from the boxes, in its own words.
MAX_HEIF_ITEMS = 1000
# 16-bit colour takes 6 or 8 bytes a pixel: the decoded size is capped as for 8-bit RGBA at the pixel limit.
MAX_BYTES_PER_PIXEL = 4

_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (containers.PNG_SIGNATURE, "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))
_OTHER_BINARY = ((b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                 (b"8BPS", "Photoshop (PSD)"), (b"\x01\xda", "SGI"), (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP"),
                 (b"\x00\x00\x01\x00", "ICO"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"))
_OTHER_TEXT = ((b"<svg", "SVG"), (b"<?xml", "XML or SVG"), (b"<!doctype html", "HTML"), (b"<html", "HTML"))
_PILLOW_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "DIB": "bmp",
                   "TIFF": "tiff", "AVIF": "avif"}
_ORIENTATION_TAG = 0x0112
# pixmill's own limit, checked on the header's size with a message naming it, replaces Pillow's.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format, size, Pillow mode, more frames, orientation, lossy or not."""

    format: str
    width: int
    height: int
    mode: str = ""
    animated: bool = False
    orientation: int = 1
    lossy: bool = False
    notes: tuple[str, ...] = ()
    bytes_per_pixel: int = 4
    icc: bytes | None = None

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


@dataclass
class Decoded:
    """A decoded image in OpenCV layout, its source format and notes on what was done to it.

    `scale` is 1, or 2, 4 or 8 for a JPEG that the decoder shrank by that factor on request;
    `full_shape` is the (height, width) of the whole image, orientation applied; `profile` is the
    source's when its colours were kept (color="keep"), for the encoder to embed."""

    image: np.ndarray
    format: str
    lossy: bool = False
    notes: list[str] = field(default_factory=list)
    scale: int = 1
    full_shape: tuple[int, int] = (0, 0)
    profile: color.Profile | None = None


def sniff(data: bytes) -> str:
    """The format the bytes are in, or UnsupportedFormat saying what they look like."""
    if not data:
        raise UnsupportedFormat(f"the file is empty; pixmill accepts {ACCEPTED}")
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    heif = containers.heif_kind(data)
    if heif:
        return "avif" if heif == "avif" else "heic"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    text = all(32 <= b < 127 or b in (9, 10, 13) for b in data[:256])
    if data[:2] == b"BM" and not text:
        return "bmp"
    head = data[:256].lstrip().lower()
    kind = next((label for magic, label in _OTHER_BINARY if data.startswith(magic)), None)
    kind = kind or next((label for magic, label in _OTHER_TEXT if head.startswith(magic)), None)
    if kind is None and text:
        kind = "text"
    what = f"it looks like {kind}" if kind else "its first bytes match no image format"
    raise UnsupportedFormat(f"not a supported image: {what}; pixmill accepts {ACCEPTED}")


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Read the header (never the pixels), and refuse an image over max_pixels."""
    fmt = sniff(data)
    heif = _check_heif_boxes(data, fmt, max_pixels) if fmt in ("heic", "avif") else None
    if fmt == "png":
        info = _probe_png(data)
    elif fmt == "heic":
        info = _probe_heic(data, heif)
    else:
        info = _probe_pillow(data, fmt)
    if info.width <= 0 or info.height <= 0:
        raise CorruptImage(f"the header says the image is {info.width}×{info.height}")
    _check_pixels(info.width, info.height, max_pixels)
    if info.pixels * info.bytes_per_pixel > max_pixels * MAX_BYTES_PER_PIXEL:
        raise ImageTooLarge(f"{info.width}×{info.height} at {info.bytes_per_pixel} bytes a pixel needs "
                            f"{format_bytes(info.pixels * info.bytes_per_pixel)} decoded, over the "
                            f"{format_bytes(max_pixels * MAX_BYTES_PER_PIXEL)} limit (4 bytes × the pixel limit)")
    return info


def _check_pixels(width: int, height: int, max_pixels: int, where: str = "") -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}×{height} is {width * height / 1e6:.1f} MP, "
                            f"over the {max_pixels / 1e6:g} MP limit{where}")


def decode(data: bytes, *, max_pixels: int,
           shrink_to: Callable[[int, int], tuple[int, int]] | None = None, gray: bool = False,
           color_mode: str = "srgb") -> Decoded:
    """Decode into an OpenCV-layout array with EXIF orientation applied, or raise a PixmillError.

    shrink_to(height, width) may give the smallest (height, width) the caller needs of the whole
    (oriented) image: a JPEG is then decoded at 1/2, 1/4 or 1/8 scale if that still covers it.
    With gray, a colour JPEG so decoded at a reduced scale is decoded to the luma it stores (BT.601
    weights, as grayscale uses), unless its colours are to be converted first.  With color_mode
    "srgb" an embedded profile is applied; with "keep" it is handed on in `Decoded.profile`."""
    info = probe(data, max_pixels=max_pixels)
    profile = color.read_profile(info.icc)
    cmyk = info.mode == "CMYK"
    if profile is not None and not profile.is_srgb and (color_mode == "srgb" or cmyk):
        gray = False
    transposed = info.orientation in (5, 6, 7, 8)
    full = (info.width, info.height) if transposed else (info.height, info.width)
    scale = 1
    if info.format == "jpeg" and shrink_to is not None:
        need_h, need_w = shrink_to(*full)
        scale = jpeg_scale(info.height, info.width, *((need_w, need_h) if transposed else (need_h, need_w)))
    if info.format == "jpeg":
        image = _decode_jpeg(data, info, scale, gray=gray and scale > 1)
    elif info.format == "png":
        image = _decode_png(data)
    elif info.format == "heic":
        image = _decode_heic(data, info)
    elif info.format == "tiff" and info.bytes_per_pixel > MAX_BYTES_PER_PIXEL:  # 16-bit colour
        image = _decode_opencv(data, "TIFF")
    else:
        image = _decode_pillow(data, info)
    if image.shape[:2] != (-(-info.height // scale), -(-info.width // scale)):
        raise CorruptImage(f"the header says {info.width}×{info.height} but the data holds "
                           f"{image.shape[1] * scale}×{image.shape[0] * scale}")
    notes = list(info.notes)
    if info.animated:
        notes.append("the file has several frames or pages: only the first was processed")
    if info.orientation != 1:
        image = _orient(image, info.orientation)
        notes.append(f"EXIF orientation {info.orientation} applied")
    image, kept = _manage_color(image, info, profile, cmyk, color_mode, notes)
    return Decoded(np.ascontiguousarray(image), info.format, info.lossy, notes, scale, full, kept)


def _manage_color(image: np.ndarray, info: ImageInfo, profile: color.Profile | None, cmyk: bool,
                  color_mode: str, notes: list[str]) -> tuple[np.ndarray, color.Profile | None]:
    """The image in sRGB (or, keeping its colours, as it is with the profile to embed), noting what was done."""
    if cmyk:
        image, note = color.cmyk_to_srgb(image, profile)
        notes.append(note + ("; CMYK is always converted" if color_mode == "keep" else ""))
        return image, None
    if info.icc and profile is None:
        notes.append("the embedded ICC profile cannot be read: colours taken as sRGB")
        return image, None
    if profile is None or profile.is_srgb:
        return image, None
    if color_mode == "keep":
        notes.append(f"colours kept in {profile.name}: its profile is embedded in the result")
        return image, profile
    image, note = color.to_srgb(image, profile)
    if note:
        notes.append(note)
    return image, None


def jpeg_scale(height: int, width: int, need_height: int, need_width: int) -> int:
    """The largest of 8, 4 and 2 that a height×width JPEG can be decoded smaller by and still cover
    need_height×need_width, or 1.  Both sides must divide by it: libjpeg rounds a scaled size up,
    and the last column or row, standing for part of a block only, would stretch the picture when
    resized (an edge at 80% of a 1001-px-wide image moved by 0.6 px in a 100-px thumbnail)."""
    for scale in (8, 4, 2):
        if (height % scale == 0 and width % scale == 0 and height // scale >= need_height
                and width // scale >= need_width):
            return scale
    return 1


def output_format(requested: str, source: str, *, lossy: bool = True, accept: tuple[str, ...] = ()) -> str:
    """The format to write: the requested one, or for auto the first of accept (formats the client
    said it takes), else JPEG→JPEG, HEIC→JPEG, AVIF→AVIF, lossy WebP→WebP, the rest→PNG."""
    if requested != "auto":
        return requested
    if accept:
        return accept[0]
    if source in ("jpeg", "avif") or (source == "webp" and lossy):
        return source
    return "jpeg" if source == "heic" else "png"


def encode(image: np.ndarray, fmt: str, *, quality: int = 90,
           profile: color.Profile | None = None) -> tuple[bytes, list[str]]:
    """Encode an OpenCV-layout array, with profile embedded if given; returns the bytes and notes on any conversion."""
    notes: list[str] = []
    limit = MAX_SIDE.get(fmt)
    if limit and max(image.shape[:2]) > limit:
        raise ProcessingFailed(f"{fmt.upper()} images are at most {limit} pixels wide and high, and the result is "
                               f"{image.shape[1]}×{image.shape[0]}; choose png or tiff output")
    if fmt in ("jpeg", "webp", "avif") and image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes.append(f"{fmt.upper()} holds 8 bits per channel here: converted from 16-bit")
    if fmt == "jpeg" and image.ndim == 3 and image.shape[2] == 4:
        image = _flatten_alpha(image)
        notes.append("JPEG has no transparency: composited on white")
    icc = profile.data if profile is not None else None
    if profile is not None and profile.space != ("gray" if image.ndim == 2 else "rgb"):
        kind = "gray" if image.ndim == 2 else "colour"
        notes.append(f"the source's {profile.space} profile ({profile.name}) does not fit a {kind} result: "
                     f"not embedded, the colours are those of the source's space")
        icc = None
    if fmt == "tiff" and icc:
        return _encode_tiff(image, icc), notes
    if fmt == "avif":
        return _encode_avif(image, quality, icc), notes
    params = {"jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality], "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
              "png": [cv2.IMWRITE_PNG_COMPRESSION, 3], "tiff": []}[fmt]
    ok, buffer = cv2.imencode("." + EXTENSIONS[fmt], image, params)
    if not ok:
        raise ProcessingFailed(f"the result could not be encoded as {fmt.upper()}")
    data = buffer.tobytes()
    if icc and fmt == "png":
        data = containers.png_with_icc(data, icc)
    elif icc and fmt == "jpeg":
        data = containers.jpeg_with_icc(data, icc)
    elif icc:
        data = containers.webp_with_icc(data, icc, image.shape[1], image.shape[0],
                                        image.ndim == 3 and image.shape[2] == 4)
    return data, notes


_HEIF_THREADS = [1]


def set_threads(threads: int) -> None:
    """Let OpenCV and the HEIC and AVIF codecs use this many threads in this process."""
    cv2.setNumThreads(threads)
    _HEIF_THREADS[0] = max(1, threads)
    AvifImagePlugin.DEFAULT_MAX_THREADS = max(1, threads)


def _pillow_heif() -> ModuleType:
    """pillow-heif, imported by the first HEIC or AVIF (not by every process that starts), with the
    thread count of set_threads."""
    import pillow_heif

    pillow_heif.options.DECODE_THREADS = _HEIF_THREADS[0]
    return pillow_heif


def _encode_tiff(image: np.ndarray, icc: bytes) -> bytes:
    """TIFF with a profile, through tifffile (OpenCV's writer has no ICC tag): deflate, unassociated alpha."""
    colour = image.ndim == 3
    pixels = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB) if colour else image
    import tifffile  # only TIFF with a profile needs it: not imported by every process that starts

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric="rgb" if colour else "minisblack", compression="zlib",
                     extrasamples=("unassalpha",) if colour and image.shape[2] == 4 else None,
                     iccprofile=icc, metadata=None)
    return buffer.getvalue()


def _encode_avif(image: np.ndarray, quality: int, icc: bytes | None) -> bytes:
    """AVIF through Pillow's libavif, one thread per worker like OpenCV."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    buffer = io.BytesIO()
    params = {"icc_profile": icc} if icc else {}
    try:
        Image.fromarray(image).save(buffer, "AVIF", quality=quality, max_threads=max(1, cv2.getNumThreads()),
                                    **params)
    except (OSError, ValueError) as exc:
        raise ProcessingFailed(f"the result could not be encoded as AVIF ({_reason(exc)})") from None
    return buffer.getvalue()


def _probe_png(data: bytes) -> ImageInfo:
    try:
        header = containers.read_png(data)
    except containers.ChunkError as exc:
        raise CorruptImage(f"the PNG is damaged: {exc}") from None
    notes: list[str] = []
    orientation = 1
    if header.exif:
        exif = Image.Exif()
        orientation = _orientation(lambda: (exif.load(header.exif), exif)[1], notes)
    channels = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}.get(header.color_type, 4)
    depth = 2 if header.bit_depth == 16 else 1
    return ImageInfo("png", header.width, header.height, "", header.animated, orientation, False, tuple(notes),
                     channels * depth, header.icc)


def _check_heif_boxes(data: bytes, fmt: str, max_pixels: int) -> containers.HeifHeader:
    """Refuse, from the boxes alone, a HEIF whose image items are over max_pixels or whose grids are too big."""
    label = fmt.upper()
    try:
        header = containers.read_heif(data)
    except containers.ChunkError as exc:
        raise CorruptImage(f"the {label} is damaged: {exc}") from None
    for width, height in header.sizes:
        _check_pixels(width, height, max_pixels, f" (from the {label}'s ispe box)")
    if max(header.items, header.derived_refs) > MAX_HEIF_ITEMS:
        width, height = max(header.sizes, key=lambda size: size[0] * size[1], default=(0, 0))
        grid = f", a grid of {header.derived_refs} tiles" if header.derived_refs else ""
        raise ImageTooLarge(f"the {label} holds {max(header.items, header.derived_refs)} images "
                            f"({width}×{height} is {width * height / 1e6:.1f} MP{grid}), "
                            f"over the limit of {MAX_HEIF_ITEMS} images in a file")
    return header


def _probe_heic(data: bytes, header: containers.HeifHeader) -> ImageInfo:
    try:
        heif = _pillow_heif().open_heif(io.BytesIO(data), convert_hdr_to_8bit=False, bgr_mode=True)
        width, height = heif.size
        mode, depth, icc = heif.mode, heif.info.get("bit_depth", 8), heif.info.get("icc_profile")
        images = len(heif)
    except (ValueError, RuntimeError, EOFError, OSError) as exc:
        text = str(exc)
        if "end of file" in text.lower() or "insufficient input" in text.lower():
            raise CorruptImage(f"the HEIC is truncated ({_reason(exc)})") from None
        if "unsupported" in text.lower():
            raise UnsupportedFormat(f"this HEIF cannot be read ({_reason(exc)}); pixmill reads HEVC-coded HEIC "
                                    f"and AVIF") from None
        raise CorruptImage(f"the HEIC header is damaged ({_reason(exc)})") from None
    notes = ["HEIF rotation and mirroring (irot, imir) applied; its EXIF orientation is ignored"] \
        if header.transformed else []
    bytes_per_pixel = (2 if depth > 8 else 1) * (4 if "A" in mode else 3 if mode != "L" else 1)
    return ImageInfo("heic", width, height, "", images > 1, 1, True, tuple(notes), bytes_per_pixel, icc)


def _probe_pillow(data: bytes, fmt: str) -> ImageInfo:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            mode, pillow_format = im.mode, im.format
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
    notes: list[str] = []
    orientation = _orientation(im.getexif, notes)
    try:
        animated = bool(getattr(im, "is_animated", False))
    except Exception:
        animated = False
    lossy = fmt in ("jpeg", "avif") or (fmt == "webp" and containers.webp_is_lossy(data))
    deep = fmt == "tiff" and _tiff_is_deep(im)
    return ImageInfo(fmt, width, height, mode, animated, orientation, lossy, tuple(notes), 8 if deep else 4,
                     im.info.get("icc_profile") or None)


def _orientation(read_exif: Callable[[], Image.Exif], notes: list[str]) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = int(read_exif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:
        notes.append("EXIF metadata is unreadable; orientation ignored")
        return 1
    if value not in range(1, 9):
        notes.append(f"EXIF orientation {value} is invalid; ignored")
        return 1
    return value


def _decode_jpeg(data: bytes, info: ImageInfo, scale: int = 1, *, gray: bool = False) -> np.ndarray:
    # libjpeg-turbo scales in the inverse DCT: the smallest of its sizes that is at least this one
    size = {} if scale == 1 else {"min_height": -(-info.height // scale), "min_width": -(-info.width // scale)}
    try:
        if info.mode == "L" or (gray and info.mode == "RGB"):
            return simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True, **size)[..., 0]
        if info.mode == "CMYK":
            # as ink amounts: CMYK JPEGs store them inverted, as Photoshop writes them; browsers and
            # Pillow read every CMYK JPEG so, with or without Adobe's APP14 marker, and so does pixmill
            return 255 - simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True, **size)
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, **size)
    except ValueError as exc:
        text = str(exc).strip()
        if "premature end" in text.lower():
            raise CorruptImage("the JPEG is truncated: its data ends early") from None
        raise CorruptImage(f"the JPEG data is corrupt ({_reason(exc)})") from None


def _decode_png(data: bytes) -> np.ndarray:
    try:
        clean = containers.clean_png(data)
    except containers.ChunkError as exc:
        raise CorruptImage(f"the PNG is damaged: {exc}") from None
    return _decode_opencv(clean, "PNG")


def _decode_opencv(data: bytes, label: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise CorruptImage(f"the {label} data is truncated or damaged and cannot be decoded")
    if image.dtype not in (np.uint8, np.uint16):
        raise UnsupportedFormat(f"{label} with {image.dtype} samples is not supported; use 8 or 16 bits per channel")
    if image.ndim == 3 and image.shape[2] == 2:
        image = np.dstack([cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR), image[..., 1]])
    return image


def _decode_heic(data: bytes, info: ImageInfo) -> np.ndarray:
    try:
        heif = _pillow_heif().open_heif(io.BytesIO(data), convert_hdr_to_8bit=False, bgr_mode=True)
        image = np.asarray(heif)
    except MemoryError:
        raise ImageTooLarge("the image needs more memory to decode than is allowed") from None
    except (ValueError, RuntimeError, EOFError, OSError) as exc:
        text = str(exc).lower()
        # libheif allows a picture no larger than its header says: a larger one is a lying header
        coded = re.search(r"image size (\d+)x(\d+) exceeds the maximum", text)
        if coded:
            raise CorruptImage(f"the HEIC's picture is {coded[1]}×{coded[2]}, larger than the {info.width}×"
                               f"{info.height} its header declares: the file is damaged") from None
        if "security limit" in text:
            raise ImageTooLarge(f"the HEIC is over libheif's limits ({_reason(exc)})") from None
        what = "truncated" if "end of file" in text or "insufficient" in text else "damaged"
        raise CorruptImage(f"the HEIC data is {what} and cannot be decoded ({_reason(exc)})") from None
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    return image


def _decode_pillow(data: bytes, info: ImageInfo) -> np.ndarray:
    problem = containers.bmp_rle_problem(data) if info.format == "bmp" else None
    if problem:
        raise CorruptImage(f"the BMP is damaged: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.load()
            if info.format == "bmp" and im.mode == "P":
                _check_palette(im)
            return _pillow_to_array(im)
    except CorruptImage:
        raise
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
    return cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR)


def _check_palette(im: Image.Image) -> None:
    colors = len(im.getpalette() or ()) // 3
    highest = int(np.asarray(im).max(initial=0))
    if highest >= colors:
        raise CorruptImage(f"the BMP is damaged: a pixel uses colour {highest} of a {colors}-colour palette")


def _tiff_is_deep(im: Image.Image) -> bool:
    """Whether an opened TIFF has 16-bit colour samples, which Pillow would cut to 8 bits."""
    try:
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
