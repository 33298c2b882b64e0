"""Huge TIFFs a band of rows at a time: read through tifffile's segment reader (only the tiles or strips
that hold the rows are decoded, compressed ones by imagecodecs) and written as an uncompressed tiled BigTIFF
whose tiles sit at offsets fixed when it is created, so each worker writes its own tiles in place.

Pixels are in OpenCV's order (BGR, BGRA) in memory and RGB in the file, as everywhere in pixmill.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from ..errors import CorruptImage, UnsupportedFormat

__all__ = ["TILE", "TiffInfo", "tiff_info", "read_rows", "create_tiled", "TiledLayout", "write_rows"]

TILE = 256          # rows and columns of an output tile: bands written by workers start on multiples of it


@dataclass(frozen=True)
class TiffInfo:
    """The first image of a TIFF, from its header: rows, columns, samples per pixel and dtype."""

    height: int
    width: int
    channels: int
    dtype: np.dtype

    @property
    def pixels(self) -> int:
        return self.height * self.width


def tiff_info(path: Path) -> TiffInfo | None:
    """The TIFF's first image as pixmill would split it, None if the file is not a TIFF; UnsupportedFormat
    for a TIFF whose layout pixmill cannot read by rows."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            shape, dtype, planar = page.shape, page.dtype, page.planarconfig
    except tifffile.TiffFileError:
        return None
    except (OSError, ValueError, IndexError) as exc:
        raise CorruptImage(f"the TIFF cannot be read: {exc}") from None
    if dtype not in (np.uint8, np.uint16):
        raise UnsupportedFormat(f"a huge TIFF of {dtype} samples is not supported (8 or 16 bits)")
    if len(shape) == 3 and planar == tifffile.PLANARCONFIG.SEPARATE:
        raise UnsupportedFormat("a huge TIFF with separate colour planes is not supported (interleaved only)")
    if len(shape) == 2:
        return TiffInfo(shape[0], shape[1], 1, np.dtype(dtype))
    if len(shape) == 3 and shape[2] in (3, 4):
        return TiffInfo(shape[0], shape[1], shape[2], np.dtype(dtype))
    raise UnsupportedFormat(f"a huge TIFF of shape {shape} is not supported (gray, RGB or RGBA)")


def read_rows(path: Path, top: int, bottom: int) -> np.ndarray:
    """Rows top..bottom of the TIFF's first image, in OpenCV's channel order: only the tiles or strips that
    hold them are read and decoded (tifffile's segment reader and decoder, imagecodecs for compression)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        height, width, samples = page.imagelength, page.imagewidth, page.samplesperpixel
        out = np.zeros((bottom - top, width, samples), page.dtype)
        if page.is_tiled:
            length, across = page.tilelength, -(-width // page.tilewidth)
            wanted = [r * across + c for r in range(top // length, -(-bottom // length)) for c in range(across)]
        else:
            length = min(page.rowsperstrip, height)
            wanted = list(range(top // length, -(-bottom // length)))
        extra = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} if page.compression in _JPEG else {}
        offsets = [page.dataoffsets[i] for i in wanted]
        counts = [page.databytecounts[i] for i in wanted]
        for data, index in tif.filehandle.read_segments(offsets, counts, indices=wanted):
            segment, (_, _, y, x, _), _ = page.decode(data, index, **extra)
            if segment is None:   # an empty tile: zeros
                continue
            part = segment.reshape(segment.shape[-3:])   # (rows, columns, samples)
            y0, y1, x1 = max(y, top), min(y + part.shape[0], bottom, height), min(x + part.shape[1], width)
            out[y0 - top:y1 - top, x:x1] = part[y0 - y:y1 - y, :x1 - x]
    return _swap_red_blue(out[..., 0] if samples == 1 else out)


_JPEG = {6, 7, 33007, 34892}   # the compressions whose tiles need the page's JPEG tables


@dataclass(frozen=True)
class TiledLayout:
    """Where each tile of an uncompressed tiled TIFF starts in the file, and the shape of a tile."""

    height: int
    width: int
    channels: int
    dtype: str
    offsets: tuple[int, ...]

    @property
    def across(self) -> int:
        return -(-self.width // TILE)


def create_tiled(path: Path, height: int, width: int, channels: int, dtype: np.dtype) -> TiledLayout:
    """An uncompressed tiled BigTIFF of this shape, its tiles all zero (the file is sparse); its layout."""
    import tifffile

    shape = (height, width) if channels == 1 else (height, width, channels)
    photometric = "minisblack" if channels == 1 else "rgb"
    with open(path, "wb") as raw, _Sparse(raw) as sink:
        tifffile.imwrite(sink, shape=shape, dtype=dtype, tile=(TILE, TILE), bigtiff=True, photometric=photometric,
                         extrasamples=("unassalpha",) if channels == 4 else None, metadata=None)
    with tifffile.TiffFile(path) as tif:
        offsets = tuple(int(o) for o in tif.pages.first.dataoffsets)
    return TiledLayout(height, width, channels, np.dtype(dtype).str, offsets)


class _Sparse(io.RawIOBase):
    """A file for tifffile to write an empty image into: runs of zeros become holes, not written bytes,
    so the tiles of a huge output cost nothing until the workers fill them."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def write(self, data) -> int:  # noqa: ANN001 (bytes, or a buffer such as a numpy array)
        view = memoryview(data).cast("B")
        if len(view) >= 4096 and not np.frombuffer(view, np.uint8).any():
            self.raw.seek(len(view), io.SEEK_CUR)
            self.raw.truncate(max(self.raw.tell(), os.fstat(self.raw.fileno()).st_size))
            return len(view)
        return self.raw.write(view)


def write_rows(path: Path, layout: TiledLayout, start: int, rows: np.ndarray) -> None:
    """Write rows (OpenCV's channel order) from row `start`, a multiple of TILE, into their tiles in place."""
    if start % TILE or (start + rows.shape[0] != layout.height and rows.shape[0] % TILE):
        raise ValueError(f"rows {start}..{start + rows.shape[0]} do not cover whole tile rows")
    rows = _swap_red_blue(rows).astype(layout.dtype, copy=False)
    samples = rows.shape[2:]
    fd = os.open(path, os.O_WRONLY)
    try:
        for r in range(0, rows.shape[0], TILE):
            # One tile row as its tiles one after the other (edges padded with zeros), as the file holds them.
            band = np.zeros((TILE, layout.across * TILE) + samples, dtype=rows.dtype)
            part = rows[r:r + TILE]
            band[:part.shape[0], :part.shape[1]] = part
            tiles = np.ascontiguousarray(band.reshape((TILE, layout.across, TILE) + samples).swapaxes(0, 1))
            first = (start + r) // TILE * layout.across
            offsets = layout.offsets[first:first + layout.across]
            size = tiles[0].nbytes
            if all(b - a == size for a, b in zip(offsets, offsets[1:])):
                os.pwrite(fd, tiles, offsets[0])
            else:
                for tile, offset in zip(tiles, offsets):
                    os.pwrite(fd, tile, offset)
    finally:
        os.close(fd)


def _swap_red_blue(rows: np.ndarray) -> np.ndarray:
    # OpenCV's conversion: numpy's fancy indexing of the channels is several times slower on big bands.
    if rows.ndim == 3 and rows.shape[2] == 3:
        return cv2.cvtColor(rows, cv2.COLOR_RGB2BGR)
    if rows.ndim == 3 and rows.shape[2] == 4:
        return cv2.cvtColor(rows, cv2.COLOR_RGBA2BGRA)
    return rows
