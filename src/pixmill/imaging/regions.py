"""One image as bands of rows, each processed apart with the context its pipeline needs: exact, not tiled.

A pipeline of point and neighbourhood steps (see Split in the registry) reaches at most the sum of its
steps' halos around each pixel, so a band read with that many more rows above and below (rounded out
to the steps' alignment; fewer at the image's top and bottom, where the band's edge is the image's)
and run through the whole pipeline comes out, on its own rows, equal to the same rows of the whole
image processed at once. A global step (autocontrast, otsu) is a point step once the whole image's
statistics are known: each band gathers its share (a histogram of what the steps before it give), the
shares are summed, and the step is applied with the sum. Each worker holds a band and its halo, never
the whole image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidPipeline
from .ops import get_operation
from .ops.registry import Split
from .pipeline import Pipeline, run_pipeline

__all__ = ["Band", "RowPlan", "plan_rows", "bands", "global_steps", "gather_band", "process_band",
           "process_in_bands"]


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


def global_steps(pipeline: Pipeline) -> list[int]:
    """The indices of the steps that need statistics of the whole image, in order."""
    return [n for n, step in enumerate(pipeline.steps)
            if get_operation(step.op).split_for(step.kwargs).kind == "global"]


def _with_stats(pipeline: Pipeline, stats: Sequence[np.ndarray]) -> dict[int, Callable[..., np.ndarray]]:
    """run_pipeline's override: the first len(stats) global steps applied with the whole image's statistics."""
    override = {}
    for n, stat in zip(global_steps(pipeline), stats):
        op = get_operation(pipeline.steps[n].op)
        split = op.split_for(pipeline.steps[n].kwargs)
        override[n] = functools.partial(_apply_global, split, op.defaults(), stat)
    return override


def _apply_global(split: Split, defaults: dict, stats: np.ndarray, image: np.ndarray, **params: Any) -> np.ndarray:
    return split.apply(image, {**defaults, **params}, stats)


def gather_band(pipeline: Pipeline, rows: np.ndarray, band: Band, stats: Sequence[np.ndarray]) -> np.ndarray:
    """The band's share of the statistics of the next global step (the one after len(stats) of them): its
    gather over the band's own rows of what the steps before it give."""
    index = global_steps(pipeline)[len(stats)]
    step = pipeline.steps[index]
    op = get_operation(step.op)
    split, found = op.split_for(step.kwargs), []
    skip = band.start - band.top

    def gather(image: np.ndarray, **params: Any) -> np.ndarray:
        found.append(split.gather(image[skip:skip + band.stop - band.start], {**op.defaults(), **params}))
        return image

    _check_rows(rows, band)
    run_pipeline(Pipeline(pipeline.steps[:index + 1]), rows, override={**_with_stats(pipeline, stats), index: gather})
    return found[0]


def process_band(pipeline: Pipeline, rows: np.ndarray, band: Band, stats: Sequence[np.ndarray] = ()
                 ) -> tuple[np.ndarray, list[str]]:
    """The output rows of band, from its input rows (rows top..bottom of the image) and the statistics of
    every global step (the sums of gather_band over the bands, in order); and the pipeline's notes."""
    _check_rows(rows, band)
    if len(stats) != len(global_steps(pipeline)):
        raise ValueError(f"the pipeline has {len(global_steps(pipeline))} global steps, given {len(stats)} statistics")
    out, notes = run_pipeline(pipeline, rows, override=_with_stats(pipeline, stats))
    skip = band.start - band.top
    return out[skip:skip + band.stop - band.start], notes


def _check_rows(rows: np.ndarray, band: Band) -> None:
    if rows.shape[0] != band.bottom - band.top:
        raise ValueError(f"band {band}: got {rows.shape[0]} input rows")


def process_in_bands(pipeline: Pipeline, read: Callable[[int, int], np.ndarray], height: int, *,
                     rows: int = 256) -> Iterator[tuple[Band, np.ndarray]]:
    """Each band of the output in turn, from read(top, bottom), the input's rows top..bottom: a pass over
    the bands for each global step's statistics first (summed, as the workers' are), then the output."""
    cut = bands(height, rows, plan_rows(pipeline))
    stats: list[np.ndarray] = []
    for _ in global_steps(pipeline):
        stats.append(sum(gather_band(pipeline, read(b.top, b.bottom), b, stats) for b in cut))
    for band in cut:
        yield band, process_band(pipeline, read(band.top, band.bottom), band, stats)[0]
