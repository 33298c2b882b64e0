"""Run one pipeline over many image files in parallel and write the results beside each other."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PixmillError
from ..imaging import codec, containers
from ..imaging.pipeline import Pipeline
from ..imaging.process import Output, Result, process
from ..limits import DEFAULT_MAX_TILED_FILE_BYTES, DEFAULT_MAX_TILED_PIXELS, read_limited
from . import split

__all__ = ["IMAGE_SUFFIXES", "Outcome", "BatchReport", "collect_inputs", "plan_targets", "process_file", "run_batch"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".mpo",
                  ".heic", ".heif", ".hif", ".avif"}
NOT_RUN = "not processed: a worker process died earlier in this run, and its pool took no more work"


@dataclass
class Outcome:
    """What became of one input: where its result went, or why it failed."""

    source: Path
    target: Path | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class BatchReport:
    """Every outcome of a batch, and how long it took."""

    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        """The outcomes that failed."""
        return [o for o in self.outcomes if o.error]

    @property
    def succeeded(self) -> list[Outcome]:
        """The outcomes that wrote a result."""
        return [o for o in self.outcomes if not o.error]


def collect_inputs(paths: Iterable[Path]) -> list[Path]:
    """The files named, plus the image files directly inside each directory named, without repeats."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(child.resolve(), None)
        else:
            found.setdefault(path.resolve(), None)
    return list(found)


def plan_targets(sources: list[Path], out_dir: Path, pipeline: Pipeline, output: Output) -> list[Path]:
    """`name.<op-slug>.<ext>` in out_dir for each source: never an input, never the same twice."""
    taken = {s.resolve() for s in sources}
    targets = []
    for source in sources:
        fmt = output.format
        if fmt == "auto":
            fmt = _predicted_format(source)
        stem, ext = f"{source.stem}.{pipeline.slug()}", codec.EXTENSIONS[fmt]
        target, n = out_dir / f"{stem}.{ext}", 2
        while target.resolve() in taken:
            target, n = out_dir / f"{stem}-{n}.{ext}", n + 1
        taken.add(target.resolve())
        targets.append(target)
    return targets


def run_batch(sources: list[Path], pipeline: Pipeline, output: Output, out_dir: Path, executor: Executor, *,
              workers: int, max_pixels: int, max_file_bytes: int, max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS,
              max_tiled_file_bytes: int = DEFAULT_MAX_TILED_FILE_BYTES,
              on_done: Callable[[Outcome], None] = lambda outcome: None) -> BatchReport:
    """Process every source on the executor, keeping a few tasks per worker in flight; a huge image (a TIFF
    over max_pixels) first, split across every worker."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Absolute targets: a worker may not share this process's working directory.
    todo = deque(zip(sources, plan_targets(sources, out_dir.absolute(), pipeline, output)))
    running: dict[Future, Path] = {}
    report = BatchReport()

    def finish(outcome: Outcome) -> None:
        report.outcomes.append(outcome)
        on_done(outcome)

    for source, target in [(s, t) for s, t in todo if split.is_huge(s, max_pixels)]:
        todo.remove((source, target))
        finish(_run_huge(source, target, pipeline, output, executor, workers=workers,
                         max_tiled_pixels=max_tiled_pixels, max_tiled_file_bytes=max_tiled_file_bytes))

    while todo or running:
        while todo and len(running) < 2 * workers:
            source, target = todo.popleft()
            try:
                future = executor.submit(process_file, source, target, pipeline, output, max_pixels=max_pixels,
                                         max_file_bytes=max_file_bytes)
            except BrokenExecutor:  # a worker died and took the pool with it: report what is left, run nothing
                for left, _ in [(source, target), *todo]:
                    finish(Outcome(left, error=NOT_RUN))
                todo.clear()
                break
            running[future] = source
        if not running:
            continue
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            finish(_record(future, running.pop(future)))
    report.outcomes.sort(key=lambda o: sources.index(o.source))
    report.seconds = time.perf_counter() - started
    return report


def _run_huge(source: Path, target: Path, pipeline: Pipeline, output: Output, executor: Executor, *,
              workers: int, max_tiled_pixels: int, max_tiled_file_bytes: int) -> Outcome:
    """One huge image, its bands on every worker: its outcome once every band is written."""
    if output.format not in ("auto", "tiff"):
        return Outcome(source, error=f"a huge image is written as a tiled TIFF: ask for format tiff or auto, "
                                     f"not {output.format}")
    target = target.with_suffix(".tif")
    try:
        plan = split.plan_huge(source, target, pipeline, workers=workers, max_tiled_pixels=max_tiled_pixels,
                               max_tiled_file_bytes=max_tiled_file_bytes)
        futures = split.start_huge(plan, pipeline, executor)
    except (OSError, PixmillError) as exc:
        return Outcome(source, error=_describe(exc))
    except BrokenExecutor:
        target.unlink(missing_ok=True)
        return Outcome(source, error="a worker process died while processing this image")
    notes: tuple[str, ...] | None = None
    for future in futures:   # each band's outcome, in order; the first failure stops the bands not yet begun
        outcome = _record(future, source)
        if outcome.error:
            for rest in futures:
                rest.cancel()
            target.unlink(missing_ok=True)
            return outcome
        notes = outcome.notes if notes is None else notes
    bands = f"{len(futures)} bands" if len(futures) > 1 else "1 band"
    return Outcome(source, target=target, notes=(*(notes or ()), f"split into {bands} of rows across the workers"))


def process_file(source: Path, target: Path, pipeline: Pipeline, output: Output, *, max_pixels: int,
                 max_file_bytes: int, task: Callable[..., Result] = process) -> tuple[Path, tuple[str, ...]]:
    """Read source, process it and write the result to target (its suffix corrected to the result's
    format), in the worker: the images never pass through the process that hands out the work."""
    data = read_limited(source, max_file_bytes)
    result = task(data, pipeline, output, max_pixels=max_pixels)
    if target.suffix != "." + result.extension:  # the head of the file predicted another format
        target = target.with_suffix("." + result.extension)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(result.data)
    partial.replace(target)
    return target, result.notes


def _record(future: Future, source: Path) -> Outcome:
    try:
        target, notes = future.result()
    except (OSError, PixmillError) as exc:  # the input unreadable, or the result unwritable
        return Outcome(source, error=_describe(exc))
    except BrokenProcessPool:
        return Outcome(source, error="a worker process died while processing this image")
    except Exception as exc:
        return Outcome(source, error=f"{type(exc).__name__}: {exc}")
    return Outcome(source, target=target, notes=notes)


def _predicted_format(path: Path) -> str:
    """The format auto output will have, from the head of the file (WebP: lossy or lossless)."""
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
        source = codec.sniff(head)
    except (OSError, PixmillError):
        return "png"
    return codec.output_format("auto", source, lossy=source != "webp" or containers.webp_is_lossy(head))


def _describe(exc: Exception) -> str:
    if isinstance(exc, PixmillError):
        return exc.message
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
