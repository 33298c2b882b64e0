"""Huge TIFFs by bands of rows: reading tiled, striped and compressed files, and writing tiles in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pixmill.errors import UnsupportedFormat
from pixmill.imaging.bigtiff import TILE, create_tiled, read_rows, tiff_info, write_rows

RNG = np.random.default_rng(5)
SHAPES = {"rgb": (601, 533, 3), "rgba": (301, 777, 4), "gray": (700, 259)}


def rgb_order(a: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) as the file's RGB(A)."""
    return a[..., [2, 1, 0, 3][:a.shape[2]]] if a.ndim == 3 else a


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("layout", [{"tile": (64, 128), "compression": "zlib"}, {"rowsperstrip": 37},
                                    {"rowsperstrip": 16, "compression": "lzw"}])
def test_rows_read_equal_the_whole_file(tmp_path: Path, kind: str, dtype, layout: dict):
    data = RNG.integers(0, np.iinfo(dtype).max, SHAPES[kind], dtype=dtype)
    path = tmp_path / "in.tif"
    extra = {"extrasamples": ("unassalpha",)} if kind == "rgba" else {}
    tifffile.imwrite(path, data, photometric="minisblack" if kind == "gray" else "rgb", **layout, **extra)
    info = tiff_info(path)
    channels = SHAPES[kind][2] if kind != "gray" else 1
    assert (info.height, info.width, info.channels, info.dtype) == (*SHAPES[kind][:2], channels, np.dtype(dtype))
    for top, bottom in [(0, 1), (40, 170), (SHAPES[kind][0] - 3, SHAPES[kind][0])]:
        assert np.array_equal(rgb_order(read_rows(path, top, bottom)), data[top:bottom])


def test_a_file_that_is_no_tiff_has_no_info_and_odd_layouts_are_refused(tmp_path: Path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert tiff_info(tmp_path / "x.png") is None
    tifffile.imwrite(tmp_path / "planar.tif", RNG.integers(0, 255, (3, 40, 50), dtype=np.uint8),
                     photometric="rgb", planarconfig="separate")
    with pytest.raises(UnsupportedFormat, match="separate colour planes"):
        tiff_info(tmp_path / "planar.tif")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((20, 20), np.float32))
    with pytest.raises(UnsupportedFormat, match="float32"):
        tiff_info(tmp_path / "float.tif")


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiles_written_band_by_band_make_the_whole_image(tmp_path: Path, channels: int):
    height, width = 3 * TILE + 77, 2 * TILE + 5
    image = RNG.integers(0, 255, (height, width) if channels == 1 else (height, width, channels), dtype=np.uint8)
    path = tmp_path / "out.tif"
    layout = create_tiled(path, height, width, channels, np.dtype(np.uint8))
    for start in (2 * TILE, 0, 3 * TILE, TILE):   # any order, as workers finish
        write_rows(path, layout, start, image[start:start + TILE])
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled
        assert np.array_equal(tif.asarray(), rgb_order(image))
    with pytest.raises(ValueError, match="whole tile rows"):
        write_rows(path, layout, 10, image[10:20])
