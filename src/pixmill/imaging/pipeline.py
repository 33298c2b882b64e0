"""Pipelines: parse the text and JSON forms into one typed Pipeline, and run it on an image."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageTooLarge, InvalidPipeline, ProcessingFailed
from .ops import get_operation

__all__ = ["Step", "Pipeline", "parse_pipeline", "run_pipeline", "MAX_STEPS"]

MAX_STEPS = 20
MAX_SPEC_CHARS = 4000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Step:
    """One operation with every parameter given (defaults filled in)."""

    op: str
    params: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments."""
        return dict(self.params)

    def text(self) -> str:
        """The text form of this step, naming only parameters that differ from the default."""
        defaults = get_operation(self.op).defaults()
        args = [f"{k}={_text_value(v)}" for k, v in self.params if defaults.get(k) != v]
        return f"{self.op}({', '.join(args)})" if args else self.op


@dataclass(frozen=True)
class Pipeline:
    """A validated chain of operations, safe to pickle and to run."""

    steps: tuple[Step, ...]

    def text(self) -> str:
        """The text form, `grayscale | blur(ksize=7)`."""
        return " | ".join(step.text() for step in self.steps)

    def to_json(self) -> list[dict]:
        """The JSON form, `[{"op": "blur", "params": {"ksize": 7}}]`."""
        return [{"op": s.op, "params": s.kwargs} for s in self.steps]

    def slug(self) -> str:
        """A short name for file names: the operations joined by '+'."""
        return "+".join(step.op for step in self.steps)

    def __str__(self) -> str:
        return self.text()


def parse_pipeline(spec: Any) -> Pipeline:
    """Parse a pipeline given as text, as JSON text, or as a JSON list, or raise InvalidPipeline."""
    if isinstance(spec, Pipeline):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if len(text) > MAX_SPEC_CHARS:
            raise InvalidPipeline(f"pipeline is {len(text)} characters long, over the {MAX_SPEC_CHARS} limit")
        if text.startswith(("[", "{")):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidPipeline(f"pipeline is not valid JSON: {exc.msg} at character {exc.pos}") from None
            except RecursionError:
                raise InvalidPipeline("pipeline JSON is nested too deeply") from None
        else:
            return _build([_parse_text_step(part, n) for n, part in enumerate(_split_steps(text), 1)])
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, list):
        raise InvalidPipeline("pipeline must be text like 'grayscale | blur(ksize=7)' or a JSON list of steps")
    return _build([_parse_json_step(item, n) for n, item in enumerate(spec, 1)])


def run_pipeline(pipeline: Pipeline, image: np.ndarray, *, max_pixels: int | None = None,
                 override: Mapping[int, Callable[..., np.ndarray]] | None = None) -> tuple[np.ndarray, list[str]]:
    """Apply each step in turn; return the image and notes on any conversions made. override maps a step's
    index to a function run in place of its operation's (with the same conversions around it): a global
    step of a huge image, applied with the statistics of the whole (imaging.regions)."""
    notes: list[str] = []
    for n, step in enumerate(pipeline.steps, 1):
        op = get_operation(step.op)
        apply = override.get(n - 1, op.apply) if override else op.apply
        where = f"step {n} {op.name}"
        if op.size is not None and max_pixels:
            height, width = op.size(image.shape[0], image.shape[1], step.kwargs)
            if height * width > max_pixels:
                raise ImageTooLarge(f"{where}: the output would be {width}×{height} = "
                                    f"{height * width / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit")
        if image.dtype == np.uint16 and not op.depth16:
            image = (image >> 8).astype(np.uint8)
            notes.append(f"{where}: converted 16-bit to 8-bit, which this operation needs")
        try:
            if op.alpha == "split" and image.ndim == 3 and image.shape[2] == 4:
                out = apply(np.ascontiguousarray(image[..., :3]), **step.kwargs)
                image = _reattach_alpha(out, image[..., 3])
            else:
                image = apply(image, **step.kwargs)
        except (ValueError, ArithmeticError) as exc:
            raise ProcessingFailed(f"{where}: {exc}") from None
        except MemoryError:
            raise ProcessingFailed(f"{where}: not enough memory for this operation on a "
                                   f"{image.shape[1]}×{image.shape[0]} image") from None
        except Exception as exc:  # cv2.error and the like: say which step, never crash the worker
            lines = str(exc).strip().splitlines()
            if "Insufficient memory" in str(exc):
                raise ProcessingFailed(f"{where}: not enough memory for this operation on a "
                                       f"{image.shape[1]}×{image.shape[0]} image") from None
            raise ProcessingFailed(f"{where}: {type(exc).__name__}" + (f": {lines[-1]}" if lines else "")) from None
        if image.size == 0:
            raise ProcessingFailed(f"{where}: the result is empty")
    return image, notes


def _reattach_alpha(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if image.shape[:2] != alpha.shape:
        return image
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if alpha.dtype != image.dtype:
        alpha = (alpha >> 8).astype(image.dtype) if alpha.dtype == np.uint16 else alpha.astype(image.dtype) * 257
    return np.dstack([image, alpha])


def _build(steps: list[Step]) -> Pipeline:
    if not steps:
        raise InvalidPipeline("pipeline is empty: give at least one operation, e.g. 'grayscale'")
    if len(steps) > MAX_STEPS:
        raise InvalidPipeline(f"pipeline has {len(steps)} steps, over the limit of {MAX_STEPS}")
    return Pipeline(tuple(steps))


def _make_step(n: int, name: Any, raw: dict[str, Any]) -> Step:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidPipeline(f"step {n}: {name!r} is not an operation name")
    try:
        op = get_operation(name)
    except KeyError as exc:
        raise InvalidPipeline(f"step {n}: {exc.args[0]}") from None
    values = {}
    for key, value in raw.items():
        param = op.param(key)
        if param is None:
            allowed = ", ".join(p.name for p in op.params) or "none"
            raise InvalidPipeline(f"step {n} {name}: unknown parameter {key!r}; allowed: {allowed}")
        try:
            values[key] = param.coerce(value)
        except ValueError as exc:
            raise InvalidPipeline(f"step {n} {name}: {exc}") from None
    merged = {**op.defaults(), **values}
    if op.check is not None:
        try:
            op.check(merged)
        except ValueError as exc:
            raise InvalidPipeline(f"step {n} {name}: {exc}") from None
    return Step(name, tuple((p.name, merged[p.name]) for p in op.params))


def _parse_json_step(item: Any, n: int) -> Step:
    if isinstance(item, str):
        return _make_step(n, item, {})
    if not isinstance(item, dict) or "op" not in item:
        raise InvalidPipeline(f'step {n}: each step must be an object like {{"op": "blur", "params": {{"ksize": 7}}}}')
    extra = set(item) - {"op", "params"}
    if extra:
        raise InvalidPipeline(f"step {n}: unknown key {sorted(extra)[0]!r}; a step has 'op' and 'params'")
    params = item.get("params")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InvalidPipeline(f"step {n} {item['op']}: params must be an object")
    if any(isinstance(v, (list, dict)) for v in params.values()):
        raise InvalidPipeline(f"step {n} {item['op']}: parameter values must be numbers, strings or booleans")
    return _make_step(n, item["op"], params)


def _split_steps(text: str) -> list[str]:
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if len(parts) == 1 and not parts[0].strip():
        return []
    return parts


_STEP = re.compile(r"\s*([^\s(]+)\s*(?:\((.*)\))?\s*\Z", re.S)
_ARG = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('[^']*'|\"[^\"]*\"|[^,]*?)\s*(?:,|\Z)")


def _parse_text_step(text: str, n: int) -> Step:
    if not text.strip():
        raise InvalidPipeline(f"step {n}: empty step (two '|' in a row, or one at an end)")
    match = _STEP.match(text)
    if not match:
        raise InvalidPipeline(f"step {n}: cannot read {text.strip()!r}; write name(param=value, ...)")
    name, args = match.group(1), (match.group(2) or "").strip()
    raw: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = _ARG.match(args, pos)
        if not arg or arg.end() == pos:
            raise InvalidPipeline(f"step {n} {name}: cannot read the parameters {args!r}; "
                                  f"write them as name=value separated by commas")
        key, value = arg.group(1), arg.group(2)
        if key in raw:
            raise InvalidPipeline(f"step {n} {name}: parameter {key!r} is given twice")
        raw[key] = value[1:-1] if value[:1] in "'\"" and len(value) >= 2 else value
        pos = arg.end()
    return _make_step(n, name, raw)


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "auto"
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)
