"""Huge TIFFs a band of rows at a time: read through tifffile's zarr view (only the tiles or strips that
hold the rows are decoded, compressed ones by imagecodecs) and written as an uncompressed tiled BigTIFF
whose tiles sit at offsets fixed when it is created, so each worker writes its own tiles in place.

Pixels are in OpenCV's order (BGR, BGRA) in memory and RGB in the file, as everywhere in pixmill.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    """Rows top..bottom of the TIFF's first image, in OpenCV's channel order."""
    import tifffile
    import zarr

    with tifffile.imread(path, aszarr=True, key=0) as store:
        rows = np.asarray(zarr.open(store, mode="r")[top:bottom])
    return _swap_red_blue(rows)


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
    tifffile.imwrite(path, shape=shape, dtype=dtype, tile=(TILE, TILE), bigtiff=True, photometric=photometric,
                     extrasamples=("unassalpha",) if channels == 4 else None, metadata=None)
    with tifffile.TiffFile(path) as tif:
        offsets = tuple(int(o) for o in tif.pages.first.dataoffsets)
    return TiledLayout(height, width, channels, np.dtype(dtype).str, offsets)


def write_rows(path: Path, layout: TiledLayout, start: int, rows: np.ndarray) -> None:
    """Write rows (OpenCV's channel order) from row `start`, a multiple of TILE, into their tiles in place."""
    if start % TILE or (start + rows.shape[0] != layout.height and rows.shape[0] % TILE):
        raise ValueError(f"rows {start}..{start + rows.shape[0]} do not cover whole tile rows")
    rows = _swap_red_blue(rows).astype(layout.dtype, copy=False)
    tile = np.zeros((TILE, TILE) + rows.shape[2:], dtype=rows.dtype)
    fd = os.open(path, os.O_WRONLY)
    try:
        for r in range(0, rows.shape[0], TILE):
            band = rows[r:r + TILE]
            for c in range(layout.across):
                part = band[:, c * TILE:(c + 1) * TILE]
                tile[...] = 0
                tile[:part.shape[0], :part.shape[1]] = part
                index = (start + r) // TILE * layout.across + c
                os.pwrite(fd, tile.tobytes(), layout.offsets[index])
    finally:
        os.close(fd)


def _swap_red_blue(rows: np.ndarray) -> np.ndarray:
    if rows.ndim == 3 and rows.shape[2] in (3, 4):
        return np.ascontiguousarray(rows[..., [2, 1, 0, 3][:rows.shape[2]]])
    return rows
