"""limits.py: the byte formatter every message uses, and the size-limited file reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.errors import ImageTooLarge
from pixmill.limits import DEFAULT_MAX_PIXELS, GiB, KiB, MiB, format_bytes, read_limited


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (KiB, "1 KiB"), (1536, "1.5 KiB"), (999 * KiB, "999 KiB"),
    (50 * MiB, "50 MiB"), (50 * MiB + 1, "50 MiB"), (int(2.25 * MiB), "2.2 MiB"), (150 * MiB, "150 MiB"),
    (10 * GiB, "10 GiB"), (1024 * GiB, "1 TiB"),
])
def test_format_bytes_uses_binary_units_and_says_so(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_the_defaults_read_as_round_figures_in_messages() -> None:
    settings = Settings()
    assert settings.max_pixels == DEFAULT_MAX_PIXELS == 100_000_000
    assert [format_bytes(n) for n in (settings.max_file_bytes, settings.max_request_bytes, settings.quota_bytes)] \
        == ["50 MiB", "500 MiB", "10 GiB"]


def test_read_limited_reads_a_file_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    assert read_limited(path, 100) == b"x" * 100


def test_read_limited_refuses_a_larger_file_naming_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * (3 * MiB))
    with pytest.raises(ImageTooLarge) as info:
        read_limited(path, MiB)
    assert info.value.message == "the file is 3 MiB, over the 1 MiB per-file limit"
    assert info.value.status == 413


def test_read_limited_raises_oserror_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_limited(tmp_path / "gone.png", MiB)
