"""One image as bands of rows, each processed apart with the context its pipeline needs: exact, not tiled.

A pipeline of point and neighbourhood steps (see Split in the registry) reaches at most the sum of its
steps' halos around each pixel, so a band read with that many more rows above and below (rounded out
to the steps' alignment; fewer at the image's top and bottom, where the band's edge is the image's)
and run through the whole pipeline comes out, on its own rows, equal to the same rows of the whole
image processed at once. This is the first part of processing huge images across workers: each
worker holds a band and its halo, never the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidPipeline
from .ops import get_operation
from .pipeline import Pipeline, run_pipeline

__all__ = ["Band", "RowPlan", "plan_rows", "bands", "process_band", "process_in_bands"]


@dataclass(frozen=True)
class RowPlan:
    """What a pipeline needs to be run band by band: rows of context each side, and a band's row alignment."""

    halo: int
    align: int


@dataclass(frozen=True)
class Band:
    """Rows start..stop of the output, and the rows top..bottom of the input read to make them."""

    start: int
    stop: int
    top: int
    bottom: int


def plan_rows(pipeline: Pipeline) -> RowPlan:
    """The halo and alignment of the pipeline; InvalidPipeline naming the first step that cannot be split."""
    halo, align = 0, 1
    for n, step in enumerate(pipeline.steps, 1):
        op = get_operation(step.op)
        split = op.split_for(step.kwargs)
        if split.kind == "whole":
            raise InvalidPipeline(f"step {n} {op.name} cannot be split across workers for a huge image: "
                                  f"{split.reason}")
        halo += split.halo
        align = math.lcm(align, split.align)
    return RowPlan(halo, align)


def bands(height: int, rows: int, plan: RowPlan, *, start_align: int = 1) -> list[Band]:
    """The image's rows in bands of about `rows` (a multiple of start_align, such as the output's tiles), with
    their input rows. A band may start anywhere: the rows read start and end on the plan's alignment."""
    step, align = max(start_align, rows // start_align * start_align), plan.align
    out = []
    for start in range(0, height, step):
        stop = min(height, start + step)
        # The rows read start and end on the alignment too: a block of pixelate read in part would differ.
        top = max(0, (start - plan.halo) // align * align)
        bottom = min(height, -(-(stop + plan.halo) // align) * align)
        out.append(Band(start, stop, top, bottom))
    return out


def process_band(pipeline: Pipeline, rows: np.ndarray, band: Band) -> tuple[np.ndarray, list[str]]:
    """The output rows of band, from its input rows (rows top..bottom of the image); and the pipeline's notes."""
    if rows.shape[0] != band.bottom - band.top:
        raise ValueError(f"band {band}: got {rows.shape[0]} input rows")
    out, notes = run_pipeline(pipeline, rows)
    skip = band.start - band.top
    return out[skip:skip + band.stop - band.start], notes


def process_in_bands(pipeline: Pipeline, read: Callable[[int, int], np.ndarray], height: int, *,
                     rows: int = 256) -> Iterator[tuple[Band, np.ndarray]]:
    """Each band of the output in turn, from read(top, bottom), the input's rows top..bottom."""
    plan = plan_rows(pipeline)
    for band in bands(height, rows, plan):
        yield band, process_band(pipeline, read(band.top, band.bottom), band)[0]
