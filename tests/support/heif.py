"""HEIF files built box by box, for the hostile inputs pixmill's own writers never make.

A grid image is what a phone writes for a large photo: one `grid` item whose `dimg` references
name its tiles, each an HEVC-coded image. `grid` builds one from a small real HEIC (written
by libheif through pillow-heif), every tile sharing that HEIC's coded picture, so that a grid of
thousands of tiles is a file of a few kilobytes. The layout follows ISO/IEC 23008-12 (HEIF).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import pillow_heif
from PIL import Image

__all__ = ["heic", "boxes", "grid", "patched_ispe"]


def heic(image: Image.Image, quality: int = 90) -> bytes:
    """The image as a HEIC, through libheif."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=quality)
    return buffer.getvalue()


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start of body, end) of each box between start and end."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        body = start + 8
        if size == 1:
            size, body = struct.unpack(">Q", data[start + 8:start + 16])[0], start + 16
        elif size == 0:
            size = end - start
        yield kind, body, start + size
        start += size


def patched_ispe(data: bytes, width: int, height: int) -> bytes:
    """The file with its first ispe box claiming width×height."""
    at = data.find(b"ispe")
    return data[:at + 8] + struct.pack(">II", width, height) + data[at + 16:]


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full(kind: bytes, body: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags) + body)


def _coded_tile(tile: bytes) -> tuple[bytes, bytes, int, int]:
    """The codec configuration box (hvcC or av1C), the coded picture and the size of the image of a
    one-image HEIC or AVIF."""
    meta = next((body + 4, end) for kind, body, end in boxes(tile) if kind == b"meta")
    inner = {kind: (body, end) for kind, body, end in boxes(tile, *meta)}
    ipco = next((body, end) for kind, body, end in boxes(tile, *inner[b"iprp"]) if kind == b"ipco")
    properties = {kind: (body, end) for kind, body, end in boxes(tile, *ipco)}
    config = properties.get(b"hvcC") or properties[b"av1C"]
    config_box = tile[config[0] - 8:config[1]]
    width, height = struct.unpack(">II", tile[properties[b"ispe"][0] + 4:properties[b"ispe"][0] + 12])
    iloc = inner[b"iloc"][0]
    version = tile[iloc]
    sizes = tile[iloc + 4] << 8 | tile[iloc + 5]
    offset_size, length_size, base_size = sizes >> 12, sizes >> 8 & 15, sizes >> 4 & 15
    at = iloc + 6
    assert struct.unpack(">H", tile[at:at + 2])[0] == 1, "a one-image HEIC"
    at += 2 + 2 + (2 if version else 0) + 2                   # item count, item_ID, construction method, data ref
    base = int.from_bytes(tile[at:at + base_size], "big")
    at += base_size
    assert struct.unpack(">H", tile[at:at + 2])[0] == 1, "one extent"
    at += 2
    offset = base + int.from_bytes(tile[at:at + offset_size], "big")
    length = int.from_bytes(tile[at + offset_size:at + offset_size + length_size], "big")
    return config_box, tile[offset:offset + length], width, height


def grid(tile: bytes, columns: int, rows: int, width: int | None = None, height: int | None = None) -> bytes:
    """A HEIC (or, from an AVIF tile, an AVIF) whose primary image is a columns×rows grid of tile's
    picture, claiming width×height
    (by default the grid's true size), with one item per tile, all pointing at one coded picture."""
    config, coded, tile_width, tile_height = _coded_tile(tile)
    avif = config[4:8] == b"av1C"
    brand, item_type = (b"avif", b"av01") if avif else (b"heic", b"hvc1")
    width = columns * tile_width if width is None else width
    height = rows * tile_height if height is None else height
    count = columns * rows
    grid_id, tile_ids = 1, range(2, 2 + count)
    ftyp = _box(b"ftyp", brand + struct.pack(">I", 0) + b"mif1" + brand)
    hdlr = _full(b"hdlr", struct.pack(">I4s12s", 0, b"pict", b"") + b"\0")
    pitm = _full(b"pitm", struct.pack(">H", grid_id))
    infe = [_full(b"infe", struct.pack(">HH4s", grid_id, 0, b"grid") + b"\0", version=2)]
    # tiles are hidden items (flags 1): only the grid is an image of the file
    infe += [_full(b"infe", struct.pack(">HH4s", n, 0, item_type) + b"\0", version=2, flags=1) for n in tile_ids]
    iinf = _full(b"iinf", struct.pack(">H", 1 + count) + b"".join(infe))
    dimg = _box(b"dimg", struct.pack(">HH", grid_id, count) + b"".join(struct.pack(">H", n) for n in tile_ids))
    iref = _full(b"iref", dimg)
    ipco = _box(b"ipco", config + _full(b"ispe", struct.pack(">II", tile_width, tile_height))
                + _full(b"ispe", struct.pack(">II", width, height)))
    # property 1 is the codec configuration (essential), 2 the tile's ispe, 3 the grid's ispe
    entries = [struct.pack(">HBB", grid_id, 1, 3)] + [struct.pack(">HBBB", n, 2, 0x81, 2) for n in tile_ids]
    ipma = _full(b"ipma", struct.pack(">I", 1 + count) + b"".join(entries))
    iprp = _box(b"iprp", ipco + ipma)
    descriptor = struct.pack(">BBBBII", 0, 1, rows - 1, columns - 1, width, height)   # flags 1: 32-bit size
    idat = _box(b"idat", descriptor)

    def meta(mdat_at: int) -> bytes:
        # iloc version 1, 4-byte offsets and lengths: the grid in idat (construction method 1), the tiles in mdat
        items = [struct.pack(">HHHHII", grid_id, 1, 0, 1, 0, len(descriptor))]
        items += [struct.pack(">HHHHII", n, 0, 0, 1, mdat_at + 8, len(coded)) for n in tile_ids]
        iloc = _full(b"iloc", struct.pack(">BBH", 0x44, 0x00, 1 + count) + b"".join(items), version=1)
        return _full(b"meta", hdlr + pitm + iloc + iinf + iref + iprp + idat)

    head = ftyp + meta(0)
    return ftyp + meta(len(head)) + _box(b"mdat", coded)
