"""Read the chunk structure of PNG and WebP files without decoding any pixels."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["PngHeader", "read_png", "clean_png", "webp_is_lossy"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What OpenCV's libpng decoder needs for the still image; animation (acTL/fcTL/fdAT), text,
# metadata and private chunks are left out, so no code path but plain libpng sees them.
_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}


class ChunkError(ValueError):
    """The chunk structure is broken."""


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields, whether the file is animated, and its eXIf chunk if any."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    animated: bool
    exif: bytes | None


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    if not data.startswith(PNG_SIGNATURE):
        raise ChunkError("not a PNG")
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise ChunkError(f"the {kind.decode('latin-1')!r} chunk runs past the end of the file (truncated)")
        yield kind, pos, end
        if kind == b"IEND":
            return
        pos = end
    raise ChunkError("the file ends before its IEND chunk (truncated)")


def read_png(data: bytes) -> PngHeader:
    """The PNG's header, checking IHDR is first and intact; ChunkError if the structure is broken."""
    chunks = _png_chunks(data)
    kind, start, end = next(chunks, (None, 0, 0))
    if kind != b"IHDR" or end - start != 25:
        raise ChunkError("the first chunk is not a valid IHDR")
    body = data[start + 8:start + 21]
    if zlib.crc32(data[start + 4:start + 21]) != struct.unpack(">I", data[start + 21:start + 25])[0]:
        raise ChunkError("the IHDR chunk's checksum is wrong")
    width, height, depth, color = struct.unpack(">IIBB", body[:10])
    animated, exif = False, None
    for kind, start, end in chunks:
        if kind == b"acTL":
            animated = True
        elif kind == b"eXIf" and exif is None:
            exif = data[start + 8:end - 4]
    return PngHeader(width, height, depth, color, animated, exif)


def clean_png(data: bytes) -> bytes:
    """The PNG with only the chunks of its still image (see _KEPT)."""
    parts = [PNG_SIGNATURE]
    for kind, start, end in _png_chunks(data):
        if kind in _KEPT:
            parts.append(data[start:end])
    return b"".join(parts)


def webp_is_lossy(data: bytes) -> bool:
    """Whether a WebP holds lossy (VP8) rather than lossless (VP8L) image data, from its chunks."""
    pos = 12
    while pos + 8 <= len(data):
        kind, length = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if kind in (b"VP8 ", b"VP8L"):
            return kind == b"VP8 "
        if kind == b"ANMF":  # an animation frame holds its image chunks inside it
            pos += 8 + 16
            continue
        pos += 8 + length + (length & 1)
    return True


def bmp_rle_problem(data: bytes) -> str | None:
    """What is wrong with a BMP's RLE8/RLE4 pixel data, or None if it is sound (or not RLE)."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return None
    compression = int.from_bytes(data[30:34], "little")
    if compression not in (1, 2):
        return None
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = abs(int.from_bytes(data[22:26], "little", signed=True))
    pos, x, y, rle4 = int.from_bytes(data[10:14], "little"), 0, 0, compression == 2
    while pos + 2 <= len(data):
        count, value = data[pos], data[pos + 1]
        pos += 2
        if count:  # a run of one value
            x += count
        elif value == 0:  # end of row
            x, y = 0, y + 1
        elif value == 1:  # end of bitmap
            return None
        elif value == 2:  # move right and down
            if pos + 2 > len(data):
                break
            x, y = x + data[pos], y + data[pos + 1]
            pos += 2
        else:  # a run of literal pixels, padded to a whole 16-bit word
            size = (value + 1) // 2 if rle4 else value
            pos += size + (size & 1)
            x += value
        if x > width:
            return f"its RLE data runs past the end of row {y + 1}"
        if y > height:
            return "its RLE data runs past the last row"
    return "its RLE data ends before the end-of-bitmap code (truncated)"
