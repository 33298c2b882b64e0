"""The task a worker runs: image bytes, a pipeline and output options in; result bytes out.

`process` is pure: it touches no file system and no store, so it can run in any process on any
machine that MPI reaches.  Every failure is a PixmillError whose message a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2

from ..errors import PixmillError, ProcessingFailed
from ..limits import DEFAULT_MAX_PIXELS
from . import codec
from .color import COLOR_MODES
from .ops import get_operation
from .pipeline import Pipeline, run_pipeline

__all__ = ["Output", "Result", "process", "OUTPUT_FORMATS", "NEGOTIABLE_FORMATS", "COLOR_MODES"]

OUTPUT_FORMATS = ("auto", "png", "jpeg", "webp", "tiff", "avif")
# The formats `auto` may switch to when the client says it accepts them, best first.
NEGOTIABLE_FORMATS = ("avif", "webp")


@dataclass(frozen=True)
class Output:
    """How to encode a result: a format (auto keeps JPEG as JPEG and lossless as PNG), a quality, what
    to do with an embedded colour profile (convert to sRGB, or keep it), and for auto the formats the
    client accepts (negotiated from its Accept header), best first."""

    format: str = "auto"
    quality: int = 90
    color: str = "srgb"
    accept: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be an integer in 1..100, got {self.quality}")
        if self.color not in COLOR_MODES:
            raise ValueError(f"color must be one of {', '.join(COLOR_MODES)}, got {self.color!r}")
        object.__setattr__(self, "accept", tuple(self.accept))
        if any(fmt not in NEGOTIABLE_FORMATS for fmt in self.accept):
            raise ValueError(f"accept holds only {', '.join(NEGOTIABLE_FORMATS)}, got {self.accept!r}")


@dataclass(frozen=True)
class Result:
    """A processed image: its encoded bytes, format, size and notes on what was converted."""

    data: bytes
    format: str
    width: int
    height: int
    notes: tuple[str, ...] = field(default=())

    @property
    def media_type(self) -> str:
        """The HTTP content type of the bytes."""
        return codec.MEDIA_TYPES[self.format]

    @property
    def extension(self) -> str:
        """The file name extension for the bytes, without the dot."""
        return codec.EXTENSIONS[self.format]


def process(data: bytes, pipeline: Pipeline, output: Output = Output(), *,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> Result:
    """Decode data, run the pipeline on it and encode the result."""
    try:
        decoded, pipeline = _decode(data, pipeline, max_pixels, output.color)
        image, notes = run_pipeline(pipeline, decoded.image, max_pixels=max_pixels)
        fmt = codec.output_format(output.format, decoded.format, lossy=decoded.lossy, accept=output.accept)
        encoded, encode_notes = codec.encode(image, fmt, quality=output.quality, profile=decoded.profile)
    except PixmillError:
        raise
    except MemoryError:
        raise ProcessingFailed("not enough memory to process this image") from None
    except Exception as exc:  # a library bug must come back as data, never kill the worker
        raise ProcessingFailed(f"{type(exc).__name__}: {exc}") from None
    return Result(encoded, fmt, image.shape[1], image.shape[0],
                  tuple(decoded.notes) + tuple(notes) + tuple(encode_notes))


def _decode(data: bytes, pipeline: Pipeline, max_pixels: int, color_mode: str) -> tuple[codec.Decoded, Pipeline]:
    """Decode for this pipeline; return the image and the steps left to run.

    An opening shrink-on-load step is begun by the JPEG decoder (at 1/2, 1/4 or 1/8 scale) and
    finished here; a `grayscale` right after it is done by the decoder too (the JPEG's own luma)."""
    first = pipeline.steps[0] if pipeline.steps else None
    op = get_operation(first.op) if first else None
    if op is None or not op.shrink_on_load:
        return codec.decode(data, max_pixels=max_pixels, color_mode=color_mode), pipeline
    params = first.kwargs
    gray = len(pipeline.steps) > 1 and pipeline.steps[1].op == "grayscale"
    decoded = codec.decode(data, max_pixels=max_pixels, shrink_to=lambda h, w: op.size(h, w, params), gray=gray,
                           color_mode=color_mode)
    if decoded.scale == 1:
        return decoded, pipeline
    height, width = op.size(*decoded.full_shape, params)  # the size the step gives the whole image
    if decoded.image.shape[:2] != (height, width):
        decoded.image = cv2.resize(decoded.image, (width, height), interpolation=cv2.INTER_AREA)
    return decoded, Pipeline(pipeline.steps[2 if gray and decoded.image.ndim == 2 else 1:])
