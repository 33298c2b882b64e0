"""One huge image across every worker: bands of rows, each read, processed and written by a worker alone.

An image over the single-image pixel limit and within the huge-image one (a TIFF: it can be read by
rows) becomes an uncompressed tiled BigTIFF of the same size. The process that holds the pool creates
the output file and hands out the bands; each worker reads its band's rows and the halo its pipeline
needs (imaging.regions), and writes its tiles in place, so no process ever holds the whole image. A global
step (autocontrast, otsu) first takes a pass in which each band returns its histogram; the sum is the
reduction, sent with every band of the next pass.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageTooLarge, InvalidPipeline, PixmillError
from ..imaging import bigtiff
from ..imaging.pipeline import Pipeline, run_pipeline
from ..imaging.regions import Band, bands, gather_band, global_steps, plan_rows, process_band
from ..limits import format_bytes

__all__ = ["HugePlan", "plan_huge", "is_huge", "start_huge", "run_band", "BAND_BYTES"]

BAND_BYTES = 16 * 1024 * 1024   # decoded bytes of input in one band: enough work per hand-off, little memory


@dataclass(frozen=True)
class HugePlan:
    """How one huge image is split: its bands, and the output's shape."""

    source: Path
    target: Path
    info: bigtiff.TiffInfo
    bands: tuple[Band, ...]
    channels: int
    dtype: str


TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")   # classic TIFF and BigTIFF, both byte orders


def is_huge(path: Path, max_pixels: int) -> bool:
    """Whether the file is a TIFF over the single-image pixel limit (so it would be split)."""
    try:
        with path.open("rb") as f:
            if f.read(4) not in TIFF_MAGIC:   # most files of a batch: no TIFF parser for them
                return False
        info = bigtiff.tiff_info(path)
    except (OSError, PixmillError):
        return False
    return info is not None and info.pixels > max_pixels


def plan_huge(source: Path, target: Path, pipeline: Pipeline, *, workers: int, max_tiled_pixels: int,
              max_tiled_file_bytes: int) -> HugePlan:
    """The bands of a huge TIFF and the shape of its result; ImageTooLarge or InvalidPipeline if refused."""
    size = source.stat().st_size
    if size > max_tiled_file_bytes:
        raise ImageTooLarge(f"the file is {format_bytes(size)}, over the {format_bytes(max_tiled_file_bytes)} "
                            f"per-file limit for huge images")
    info = bigtiff.tiff_info(source)
    if info is None:
        raise ImageTooLarge("the image is over the single-image pixel limit, and only a TIFF is split")
    if info.pixels > max_tiled_pixels:
        raise ImageTooLarge(f"the image is {info.width}×{info.height} = {_mp(info.pixels)}, over the "
                            f"{_mp(max_tiled_pixels)} limit for huge images")
    plan = plan_rows(pipeline)
    row_bytes = info.width * info.channels * info.dtype.itemsize
    # About BAND_BYTES of input per band, and at least two bands per worker while the image has the rows.
    rows = min(BAND_BYTES // row_bytes, -(-info.height // (2 * workers)))
    rows = max(bigtiff.TILE, rows // bigtiff.TILE * bigtiff.TILE)
    cut = bands(info.height, rows, plan, start_align=bigtiff.TILE)  # each output tile written by one worker
    # The output's samples and depth depend on the input's and the steps, not on the pixels: a tiny blank
    # image of the same kind says what each band gives, with nothing of the file decoded here.
    sample = np.zeros((2, 8) if info.channels == 1 else (2, 8, info.channels), info.dtype)
    out, _ = run_pipeline(pipeline, sample)   # point, neighbourhood and global steps keep the size
    if out.shape[:2] != sample.shape[:2]:
        raise InvalidPipeline("the pipeline changes the image's size, which huge images do not support yet")
    return HugePlan(source, target, info, tuple(cut), 1 if out.ndim == 2 else out.shape[2], out.dtype.str)


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f} MP" if pixels >= 10_000_000 else f"{pixels / 1e6:.2g} MP"


def start_huge(plan: HugePlan, pipeline: Pipeline, executor: Executor) -> list[Future]:
    """Gather the statistics of each global step (a pass over the bands, their histograms summed here),
    then create the output file and submit every band; the futures give (target, notes) as process_file's do.
    A gathering band's error is raised here."""
    stats: list[np.ndarray] = []
    for _ in global_steps(pipeline):
        shares = [executor.submit(gather_band_file, plan.source, pipeline, band, tuple(stats)) for band in plan.bands]
        stats.append(sum(share.result() for share in shares))
    layout = bigtiff.create_tiled(plan.target, plan.info.height, plan.info.width, plan.channels,
                                  np.dtype(plan.dtype))
    return [executor.submit(run_band, plan.source, plan.target, layout, pipeline, band, tuple(stats))
            for band in plan.bands]


def gather_band_file(source: Path, pipeline: Pipeline, band: Band, stats: tuple[np.ndarray, ...]) -> np.ndarray:
    """In a worker: the band's share of the next global step's statistics."""
    return gather_band(pipeline, bigtiff.read_rows(source, band.top, band.bottom), band, stats)


def run_band(source: Path, target: Path, layout: bigtiff.TiledLayout, pipeline: Pipeline, band: Band,
             stats: tuple[np.ndarray, ...] = ()) -> tuple[Path, tuple[str, ...]]:
    """In a worker: read the band's rows, process them (global steps with the whole image's statistics),
    write the output's tiles; the target and the pipeline's notes (as process_file gives them)."""
    out, notes = process_band(pipeline, bigtiff.read_rows(source, band.top, band.bottom), band, stats)
    bigtiff.write_rows(target, layout, band.start, out)
    return target, tuple(notes)
