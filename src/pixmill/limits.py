"""Limits shared by the CLI, the web and the workers: the default pixel cap, byte sizes in words,
and reading a file no larger than a limit."""

from __future__ import annotations

from pathlib import Path

from .errors import ImageTooLarge

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_TILED_PIXELS", "DEFAULT_MAX_TILED_FILE_BYTES", "KiB", "MiB", "GiB",
           "format_bytes", "read_limited"]

DEFAULT_MAX_PIXELS = 100_000_000   # per image, read from the header before decoding
KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
DEFAULT_MAX_TILED_PIXELS = 2_000_000_000   # a huge image (over DEFAULT_MAX_PIXELS), split across the workers
DEFAULT_MAX_TILED_FILE_BYTES = 16 * GiB    # per huge input file: 2 GP of 16-bit RGBA is 16 GB uncompressed
_UNITS = (("TiB", 1024 ** 4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def format_bytes(n: float) -> str:
    """A byte count for people, in binary units: '512 B', '1.5 KiB', '50 MiB', '10 GiB'."""
    for unit, size in _UNITS:
        if abs(n) >= size:
            value = n / size
            text = f"{value:.0f}" if value >= 100 else f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n:.0f} B"


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; ImageTooLarge, naming both sizes, if it holds more than max_bytes."""
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)   # never more than the limit, even if the file grows meanwhile
        if len(data) > max_bytes:
            size = max(len(data), path.stat().st_size)
            raise ImageTooLarge(f"the file is {format_bytes(size)}, over the {format_bytes(max_bytes)} per-file limit")
    return data
