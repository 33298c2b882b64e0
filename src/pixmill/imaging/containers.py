"""Read the chunk and box structure of PNG, WebP and HEIF files without decoding any pixels, and
put an ICC profile into encoded PNG, JPEG and WebP bytes (OpenCV's encoders cannot)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["PngHeader", "HeifHeader", "read_png", "clean_png", "webp_is_lossy", "read_heif", "heif_kind",
           "png_with_icc", "jpeg_with_icc", "webp_with_icc", "MAX_ICC_BYTES"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What OpenCV's libpng decoder needs for the still image; animation (acTL/fcTL/fdAT), text,
# metadata and private chunks are left out, so no code path but plain libpng sees them.
_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
# A real ICC profile is a few kB to a few hundred; a compressed iCCP chunk could expand far beyond.
MAX_ICC_BYTES = 4 << 20
# ISO-BMFF brands: the coding brands of AVIF, then of HEVC-coded HEIF (HEIC); mif1/msf1 say only "HEIF".
AVIF_BRANDS = {b"avif", b"avis"}
HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
HEIF_BRANDS = AVIF_BRANDS | HEIC_BRANDS | {b"mif1", b"msf1", b"miaf"}


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
    icc: bytes | None = None


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
    animated, exif, icc = False, None, None
    for kind, start, end in chunks:
        if kind == b"acTL":
            animated = True
        elif kind == b"eXIf" and exif is None:
            exif = data[start + 8:end - 4]
        elif kind == b"iCCP" and icc is None:
            icc = _iccp_profile(data[start + 8:end - 4])
    return PngHeader(width, height, depth, color, animated, exif, icc)


def _iccp_profile(body: bytes) -> bytes | None:
    """The profile in an iCCP chunk (name, NUL, method 0, zlib data), or None if it is damaged or too big."""
    name_end = body.find(b"\0", 0, 80)
    if name_end < 1 or body[name_end + 1:name_end + 2] != b"\0":
        return None
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(body[name_end + 2:], MAX_ICC_BYTES)
    except zlib.error:
        return None
    return profile if profile and not inflater.unconsumed_tail else None


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


@dataclass(frozen=True)
class HeifHeader:
    """What an ISO-BMFF (HEIF or AVIF) file's boxes say: its brands, the sizes of its image items
    (the `ispe` properties), how many images its derived (`grid`) items put together, and how many
    items (images, tiles, metadata) it declares."""

    brands: tuple[bytes, ...]
    sizes: tuple[tuple[int, int], ...]
    derived_refs: int
    transformed: bool = False     # an irot or imir property: the decoder rotates or mirrors
    items: int = 0


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The boxes between start and end, as (type, body start, box end); ChunkError on a box that runs past end."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise ChunkError(f"the {kind.decode('latin-1')!r} box is cut short (truncated)")
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ChunkError(f"the {kind.decode('latin-1')!r} box runs past the end of the file (truncated)")
        yield kind, pos + header, pos + size
        pos += size


def heif_kind(data: bytes) -> str | None:
    """'avif' or 'heic' from the ftyp box's brands, 'heif' for another HEIF, or None if not ISO-BMFF image."""
    if data[4:8] != b"ftyp" or len(data) < 16:
        return None
    size = struct.unpack(">I", data[:4])[0]
    body = data[8:min(max(size, 16), len(data), 4096)]
    brands = {body[:4]} | {body[i:i + 4] for i in range(8, len(body) - 3, 4)}
    if body[:4] in AVIF_BRANDS or (body[:4] not in HEIC_BRANDS and brands & AVIF_BRANDS):
        return "avif"
    if brands & HEIC_BRANDS:
        return "heic"
    return "heif" if brands & HEIF_BRANDS else None


def read_heif(data: bytes) -> HeifHeader:
    """The ftyp brands, the ispe sizes and the count of derived-image references; ChunkError if broken."""
    brands: tuple[bytes, ...] = ()
    sizes: list[tuple[int, int]] = []
    derived = items = 0
    meta, transformed = False, False
    for kind, body, end in _boxes(data, 0, len(data)):
        if kind == b"ftyp":
            brands = (data[body:body + 4],) + tuple(data[i:i + 4] for i in range(body + 8, end - 3, 4))
        elif kind == b"meta":
            meta = True
            for inner, ibody, iend in _boxes(data, body + 4, end):   # meta is a full box: 4 bytes of version
                if inner == b"iprp":
                    found, moves = _properties(data, ibody, iend)
                    sizes += found
                    transformed = transformed or moves
                elif inner == b"iref":
                    derived += _dimg_count(data, ibody, iend)
                elif inner == b"iinf":
                    items += _entry_count(data, ibody, iend)
    if not meta:
        raise ChunkError("the file has no 'meta' box (truncated, or not an image)")
    return HeifHeader(brands, tuple(sizes), derived, transformed, items)


def _properties(data: bytes, start: int, end: int) -> tuple[list[tuple[int, int]], bool]:
    """The ispe sizes in an iprp box, and whether it holds an irot or imir property."""
    sizes, transformed = [], False
    for kind, body, box_end in _boxes(data, start, end):
        if kind == b"ipco":
            for prop, pbody, pend in _boxes(data, body, box_end):
                if prop == b"ispe" and pend - pbody >= 12:
                    sizes.append(struct.unpack(">II", data[pbody + 4:pbody + 12]))
                transformed = transformed or prop in (b"irot", b"imir")
    return sizes, transformed


def _entry_count(data: bytes, start: int, end: int) -> int:
    """The entry count of a full box (iinf): 16 bits in version 0, else 32."""
    width = 2 if start < end and data[start] == 0 else 4
    if start + 4 + width > end:
        return 0
    return int.from_bytes(data[start + 4:start + 4 + width], "big")


def _dimg_count(data: bytes, start: int, end: int) -> int:
    """How many images the iref box's dimg references name, summed over the derived items."""
    version = data[start] if start < end else 0
    width = 4 if version else 2
    count = 0
    for kind, body, box_end in _boxes(data, start + 4, end):
        if kind == b"dimg" and body + 2 * width <= box_end:
            count += struct.unpack(">H", data[body + width:body + width + 2])[0]
    return count


def png_with_icc(png: bytes, icc: bytes) -> bytes:
    """The PNG with an iCCP chunk holding icc, right after IHDR (where the standard wants it)."""
    body = b"icc\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    at = len(PNG_SIGNATURE) + 25
    return png[:at] + chunk + png[at:]


def jpeg_with_icc(jpeg: bytes, icc: bytes) -> bytes:
    """The JPEG with icc in APP2 ICC_PROFILE segments (at most 65,519 bytes each) after its JFIF header."""
    step = 65519
    parts = [icc[i:i + step] for i in range(0, len(icc), step)]
    segments = b"".join(b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(part)) + b"ICC_PROFILE\0"
                        + bytes([n + 1, len(parts)]) + part for n, part in enumerate(parts))
    at = 2
    if jpeg[2:4] == b"\xff\xe0":                 # after APP0 (JFIF), which must come first
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + segments + jpeg[at:]


def webp_with_icc(webp: bytes, icc: bytes, width: int, height: int, alpha: bool) -> bytes:
    """The WebP in the extended format (VP8X) with an ICCP chunk, which must come right after VP8X."""
    iccp = b"ICCP" + struct.pack("<I", len(icc)) + icc + b"\0" * (len(icc) & 1)
    rest = webp[12:]
    if rest[:4] == b"VP8X":
        flags = rest[8] | 0x20
        vp8x, rest = rest[:8] + bytes([flags]) + rest[9:18], rest[18:]
    else:
        flags = 0x20 | (0x10 if alpha else 0)
        vp8x = (b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0])
                + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + iccp + rest
    return b"RIFF" + struct.pack("<I", len(body)) + body
