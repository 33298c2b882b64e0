"""The operation registry: each operation is a small function plus its declared parameters."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Param", "Operation", "Split", "POINT", "neighbourhood", "global_stats", "whole", "operation",
           "get_operation", "operations", "catalogue"]

KINDS = ("int", "float", "choice", "bool")


@dataclass(frozen=True)
class Param:
    """One declared parameter of an operation: its type, default and allowed values."""

    name: str
    kind: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    odd: bool = False
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}")

    def allowed(self) -> str:
        """Say in words what values this parameter takes."""
        if self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "bool":
            text = "true or false"
        else:
            noun = "an odd integer" if self.odd else ("an integer" if self.kind == "int" else "a number")
            text = f"{noun} in {_fmt(self.min)}..{_fmt(self.max)}"
        return text + (" (or empty for automatic)" if self.nullable else "")

    def coerce(self, value: Any) -> Any:
        """Turn a parsed value into this parameter's type, or raise ValueError saying what is allowed."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "auto")):
            if self.nullable:
                return None
            raise ValueError(f"{self.name} must be {self.allowed()}, got {_show(value)}")
        problem = ValueError(f"{self.name} must be {self.allowed()}, got {_show(value)}")
        if self.kind == "choice":
            text = str(value).strip().lower()
            if text not in self.choices:
                raise problem
            return text
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise problem
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise problem
        if self.kind == "int":
            if number != int(number):
                raise problem
            number = int(number)
            if self.odd and number % 2 == 0:
                raise problem
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            raise problem
        return number

    def to_dict(self) -> dict:
        """The JSON description served by /api/v1/operations."""
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default,
                               "description": self.description}
        if self.kind in ("int", "float"):
            out.update(min=self.min, max=self.max)
            if self.kind == "int":
                out["step"] = 2 if self.odd else 1
            if self.odd:
                out["odd"] = True
        if self.kind == "choice":
            out["choices"] = list(self.choices)
        if self.nullable:
            out["nullable"] = True
        return out


@dataclass(frozen=True)
class Split:
    """How an operation's work on one huge image divides into regions of rows, each done apart.

    point: an output pixel depends on its input pixel alone. neighbourhood: on the input within `halo`
    pixels of it, so a region read with that much context around it comes out exactly as the same rows
    of the whole image (at the image's edges the region's edge is the image's, and OpenCV's borders
    agree); the rows read then start and end at multiples of `align` (pixelate's blocks). global: each
    region's `gather(image, params)` gives an array of counts (a histogram), their sum over the image is
    the statistics, and `apply(image, params, stats)` is then a point step equal to the operation on the
    whole image. whole: it cannot be split exactly, and a huge image is refused with `reason`, never
    approximated."""

    kind: str
    halo: int = 0
    align: int = 1
    reason: str = ""
    gather: Callable[[np.ndarray, dict], np.ndarray] | None = None
    apply: Callable[[np.ndarray, dict, np.ndarray], np.ndarray] | None = None


POINT = Split("point")


def neighbourhood(halo: Callable[[dict], int], align: Callable[[dict], int] = lambda p: 1
                  ) -> Callable[[dict], Split]:
    """The split of an operation that looks halo(params) pixels around each pixel."""
    return lambda params: Split("neighbourhood", halo(params), align(params))


def global_stats(gather: Callable[[np.ndarray, dict], np.ndarray],
                 apply: Callable[[np.ndarray, dict, np.ndarray], np.ndarray]) -> Callable[[dict], Split]:
    """The split of an operation that needs statistics of the whole image, summed from each region's."""
    return lambda params: Split("global", gather=gather, apply=apply)


def whole(reason: str) -> Callable[[dict], Split]:
    """The split of an operation that needs the whole image at once, and why."""
    return lambda params: Split("whole", reason=reason)


@dataclass(frozen=True)
class Operation:
    """An operation: a pure function of an image array and keyword parameters.

    Images are numpy arrays in OpenCV's layout: H×W (gray), H×W×3 (BGR) or H×W×4 (BGRA),
    of dtype uint8 or uint16.  `depth16` says whether the function accepts uint16 (if not, the
    pipeline converts to 8 bits first and says so); `alpha` says whether it handles a fourth
    channel itself ("native") or works on BGR with the alpha channel put back after ("split").
    `check` validates the parameters together, raising ValueError.  `size`, for operations that
    change the size, gives the output (height, width) from the input's and the parameters, so
    the pipeline can refuse an output over the pixel limit before allocating it.  `shrink_on_load`
    marks an operation that only shrinks the image to `size` with INTER_AREA: as a pipeline's first
    step, a JPEG may then be decoded at 1/2, 1/4 or 1/8 scale (never below that size) and shrunk
    the rest of the way, as thumbor, Pillow's thumbnail and libvips do.  `split` says, from the
    parameters, how the work on one huge image divides into regions (Split).
    """

    name: str
    func: Callable[..., np.ndarray]
    description: str
    params: tuple[Param, ...] = ()
    depth16: bool = True
    alpha: str = "native"
    check: Callable[[dict], None] | None = None
    size: Callable[[int, int, dict], tuple[int, int]] | None = None
    family: str = ""
    shrink_on_load: bool = False
    split: Callable[[dict], Split] | None = None

    def split_for(self, params: dict) -> Split:
        """How this operation, with these parameters (defaults filled in), divides into regions."""
        if self.split is None:
            return Split("whole", reason="it does not declare how it splits")
        return self.split({**self.defaults(), **params})

    def param(self, name: str) -> Param | None:
        """The declared parameter called name, if there is one."""
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        """Every parameter at its default."""
        return {p.name: p.default for p in self.params}

    def apply(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """Run the function on an image, with missing parameters at their defaults."""
        return self.func(image, **{**self.defaults(), **params})

    def to_dict(self) -> dict:
        """The JSON description served by /api/v1/operations."""
        return {"name": self.name, "description": self.description, "family": self.family,
                "params": [p.to_dict() for p in self.params],
                "supports_16bit": self.depth16, "alpha": self.alpha}


@dataclass
class _Registry:
    ops: dict[str, Operation] = field(default_factory=dict)


_REGISTRY = _Registry()


def operation(name: str, description: str, *params: Param, depth16: bool = True, alpha: str = "native",
              check: Callable[[dict], None] | None = None,
              size: Callable[[int, int, dict], tuple[int, int]] | None = None,
              shrink_on_load: bool = False, split: Callable[[dict], Split] | Split | None = None) -> Callable:
    """Register the decorated function as the operation `name`."""
    if shrink_on_load and size is None:
        raise ValueError(f"operation {name!r}: shrink_on_load needs the output size function")

    def register(func: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in _REGISTRY.ops:
            raise ValueError(f"operation {name!r} is registered twice")
        family = func.__module__.rsplit(".", 1)[-1]
        how = (lambda p: split) if isinstance(split, Split) else split
        _REGISTRY.ops[name] = Operation(name, func, description, tuple(params), depth16, alpha, check,
                                         size, family, shrink_on_load, how)
        return func

    return register


def get_operation(name: str) -> Operation:
    """The operation called name; KeyError with a suggestion if there is none."""
    try:
        return _REGISTRY.ops[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY.ops, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise KeyError(f"unknown operation {name!r}{hint}") from None


def operations() -> list[Operation]:
    """Every registered operation, sorted by name."""
    return sorted(_REGISTRY.ops.values(), key=lambda op: op.name)


def catalogue() -> list[dict]:
    """The catalogue as JSON-ready dicts."""
    return [op.to_dict() for op in operations()]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    try:
        return float(str(value).strip())
    except (ValueError, OverflowError):
        return None


def _fmt(bound: float | None) -> str:
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) and not value.strip() else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
