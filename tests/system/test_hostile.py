"""Hostile inputs: every one gives a pixmill error that says why, or (if valid) a correct result.

Each file runs through `process()` in its own fresh interpreter (tests/support/hostile.py check), two at a
time, under an address-space limit of 2 GiB above the interpreter's baseline; the test then checks
the outcome against the table below, the time (under 10 s) and the peak resident memory (under
2 GiB).  A worker that dies or hangs fails the test of its file only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import hostile

HERE = Path(__file__).parents[1]
HOSTILE_REAL = HERE / "data" / "hostile_real"
TIME_LIMIT = 10.0               # seconds per file, measured inside the worker around process()
WALL_LIMIT = 60.0               # seconds per worker, start-up included, before it counts as hung
MEMORY_LIMIT = 2 << 30          # peak resident bytes per file
REFUSAL_MEMORY = 300 << 20      # an over-limit image must be refused without allocating it
RAISED_LIMIT = 300_000_000      # pixels: lets the 268 MP legal images through

CORRUPT, UNSUPPORTED, TOO_LARGE = "corrupt_image", "unsupported_format", "too_large"


@dataclass(frozen=True)
class Ok:
    """A valid image: processed (blur, auto format) into a result of this format and size."""

    format: str
    width: int
    height: int
    color: tuple[float, ...] | None = None     # expected per-channel means of the decoded result
    first_frame: bool = False                   # a note must say only the first frame was processed


@dataclass(frozen=True)
class Refused:
    """An image pixmill must refuse with one of these error codes and a message naming the reason."""

    codes: tuple[str, ...]
    words: tuple[str, ...] = ()                 # the message contains at least one of these
    size: str | None = None                     # for over-limit files: the claimed W×H the message names


def refused(*codes: str, words: tuple[str, ...] = (), size: str | None = None) -> Refused:
    """Shorthand for a Refused expectation."""
    return Refused(codes, words, size)


TRUNCATED = ("truncated",)
BAD = ("truncated", "damaged", "corrupt", "invalid", "broken", "missing", "cannot be read", "cannot be decoded")
SGI = refused(UNSUPPORTED, words=("SGI",))
J2K = refused(UNSUPPORTED)   # JPEG 2000 (codestream and JP2 box): pixmill does not accept it
PSD = refused(UNSUPPORTED, words=("PSD", "Photoshop"))

# Pillow's regression files (tests/data/hostile_real), each judged by what the file really is.
REAL_EXPECT: dict[str, Ok | Refused] = {
    # BMP suite 'bad' files: a header field no reader needs is wrong, the pixels are intact -> ok
    "bmpsuite_bad_badbitssize.bmp": Ok("png", 127, 64),       # biSizeImage claims several GB
    "bmpsuite_bad_baddens1.bmp": Ok("png", 127, 64),          # absurd pixels-per-metre
    "bmpsuite_bad_baddens2.bmp": Ok("png", 127, 64),
    "bmpsuite_bad_badfilesize.bmp": Ok("png", 127, 64),       # bfSize claims several GB
    "bmpsuite_bad_badplanes.bmp": Ok("png", 127, 64),         # biPlanes != 1, meaningless for BMP
    "bmpsuite_bad_rletopdown.bmp": Ok("png", 127, 64),        # top-down RLE: not allowed, but unambiguous
    # ... the header or the pixel data is broken -> error
    "bmpsuite_bad_badbitcount.bmp": refused(CORRUPT, UNSUPPORTED, words=BAD + ("depth",)),   # 30000 bits/pixel
    "bmpsuite_bad_badheadersize.bmp": refused(CORRUPT, UNSUPPORTED, words=BAD + ("header",)),
    "bmpsuite_bad_badpalettesize.bmp": refused(CORRUPT, words=BAD + ("palette",)),
    "bmpsuite_bad_badrle.bmp": refused(CORRUPT, words=BAD),   # RLE runs past the rows: decodes to garbage
    "bmpsuite_bad_pal8badindex.bmp": refused(CORRUPT, words=BAD + ("palette",)),  # indices beyond the palette
    "bmpsuite_bad_badwidth.bmp": refused(CORRUPT, TOO_LARGE, words=BAD + ("limit",)),  # width -127
    "bmpsuite_bad_reallybig.bmp": refused(TOO_LARGE, size="3000000×2000000"),
    "bmpsuite_bad_shortfile.bmp": refused(CORRUPT, words=TRUNCATED),
    # PNG
    "broken.png": refused(CORRUPT, words=BAD),
    "broken_data_stream.png": refused(CORRUPT, words=BAD),
    "truncated_end_chunk.png": refused(CORRUPT, words=TRUNCATED),
    "truncated_image.png": refused(CORRUPT, words=TRUNCATED),
    "png_decompression_dos.png": Ok("png", 1, 1),             # valid 1×1 image; huge text chunks are metadata
    # formats pixmill does not accept
    **{name: SGI for name in (
        "crash-465703f71a0f0094873a3e0e82c9f798161171b8.sgi", "crash-64834657ee604b8797bf99eac6a194c124a9a8ba.sgi",
        "crash-6b7f2244da6d0ae297ee0754a424213444e92778.sgi", "crash-754d9c7ec485ffb76a90eeaab191ef69a2a3a3cd.sgi",
        "crash-abcf1c97b8fe42a6c68f1fb0b978530c98d57ced.sgi", "crash-b82e64d4f3f76d7465b6af535283029eda211259.sgi",
        "crash-c1b2595b8b0b92cc5f38b6635e98e3a119ade807.sgi", "crash-db8bfa78b19721225425530c5946217720d7df4e.sgi")},
    **{name: J2K for name in (
        "crash-4fb027452e6988530aa5dabee76eecacb3b79f8a.j2k", "crash-7d4c83eb92150fb8f1653a697703ae06ae7c4998.j2k",
        "crash-ccca68ff40171fdae983d924e127a721cab2bd50.j2k", "crash-d2c93af851d3ab9a19e34503626368b2ecde9c03.j2k")},
    **{name: PSD for name in (
        "timeout-1ee28a249896e05b83840ae8140622de8e648ba9.psd", "timeout-598843abc37fc080ec36a2699ebbd44f795d3a6f.psd",
        "timeout-c8efc3fded6426986ba867a399791bae544f59bc.psd",
        "timeout-dedc7a4ebd856d79b4359bbcc79e8ef231ce38f6.psd")},
    "decompression_bomb.ico": refused(UNSUPPORTED, words=("ICO",)),
    # GIF
    "decompression_bomb.gif": refused(TOO_LARGE, words=("limit",)),   # a frame far beyond its 32×32 screen
    "decompression_bomb_extents.gif": Ok("png", 100, 100, color=(0, 0, 255), first_frame=True),  # frame 2 is the bomb
    "zero_width.gif": refused(CORRUPT, words=BAD + ("0×", "zero")),
    # JPEG: valid images with broken metadata -> processed, metadata ignored
    "exif-dpi-zerodivision.jpg": Ok("jpeg", 200, 200),
    "exif-ifd-offset.jpg": Ok("jpeg", 200, 200),
    "invalid-exif.jpg": Ok("jpeg", 200, 200),
    # besides its bad EXIF, 1214 stray bytes sit in the scan data: libjpeg would skip them and
    # lose part of the picture, so strict decoding refuses it
    "hopper_bad_exif.jpg": refused(CORRUPT, words=("corrupt",)),
    "sugarshack_bad_mpo_header.jpg": Ok("jpeg", 640, 480),
    "truncated_jpeg.jpg": refused(CORRUPT, words=TRUNCATED),
    # BMP from Pillow
    # RLE runs past the end of a row: corrupt, as bmpsuite's badrle is (Pillow would clip silently)
    "hopper_rle8_row_overflow.bmp": refused(CORRUPT, words=("RLE",)),
    "l2rgb_read.bmp": refused(TOO_LARGE, CORRUPT, words=TRUNCATED + ("limit",)),  # 57 bytes claiming 3158064×48
    # TIFF
    "oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif": refused(CORRUPT, UNSUPPORTED, words=BAD),
    "tiff_overflow_rows_per_strip.tif": refused(CORRUPT, UNSUPPORTED, words=BAD),
    "tiff_tiled_jpeg_oob_read.tif": refused(CORRUPT, words=BAD),
}

# The generated files (tests/support/hostile.py, after the corpus's make_hostile.py).
GENERATED_EXPECT: dict[str, Ok | Refused] = {
    "truncated_half.jpg": refused(CORRUPT, words=TRUNCATED),
    "truncated_header.jpg": refused(CORRUPT, words=TRUNCATED),
    "zero_bytes.jpg": refused(UNSUPPORTED, words=("empty",)),
    "zero_bytes.png": refused(UNSUPPORTED, words=("empty",)),
    "text_named.jpg": refused(UNSUPPORTED, words=("text",)),
    "png_content_named.jpg": Ok("png", 64, 64, color=(0, 0, 255)),
    "trailing_garbage.jpg": Ok("jpeg", 640, 480),
    "png_bad_crc.png": refused(CORRUPT, words=BAD + ("CRC", "checksum")),
    "png_bomb_header_only.png": refused(TOO_LARGE, size="100000×100000"),
    "png_bomb_1bit_65535x65535.png": refused(TOO_LARGE, size="65535×65535"),
    "jpeg_sof_65500x65500.jpg": refused(TOO_LARGE, size="65500×65500"),
    "gif_screen_65535.gif": refused(TOO_LARGE, size="65535×65535"),
    "svg_script_named.png": refused(UNSUPPORTED, words=("SVG",)),
    "svg_script.svg": refused(UNSUPPORTED, words=("SVG",)),
    "svg_xxe.svg": refused(UNSUPPORTED, words=("SVG",)),
    "html_script_named.png": refused(UNSUPPORTED, words=("HTML",)),
    "polyglot_gif_js.gif": Ok("png", 10799, 1),
    "polyglot_jpeg_zip.jpg": Ok("jpeg", 640, 480),
    "png_html_in_text.png": Ok("png", 1, 1, color=(0,)),
    "gif_5000_frames.gif": Ok("png", 400, 400, color=(2, 1, 0), first_frame=True),
    "exif_64k.jpg": Ok("jpeg", 640, 480),
    "exif_16mb.png": Ok("png", 32, 32, color=(0, 0, 0)),
    "ztxt_bomb.png": Ok("png", 1, 1, color=(0,)),
    # 268 MP is over the default 100 MP limit: refused, naming the size ...
    "solid_16384.png": refused(TOO_LARGE, size="16384×16384"),
    "solid_16384.jpg": refused(TOO_LARGE, size="16384×16384"),
    "aspect_1x65500.png": Ok("png", 1, 65500, color=(128,)),
    "noise_12mp.png": Ok("png", 4000, 3000),
}
# Beyond the corpus (tests/support/hostile.py EXTRA_NAMES).
EXTRA_EXPECT: dict[str, Ok | Refused | tuple[Ok | Refused, ...]] = {
    "truncated_half_eoi.jpg": refused(CORRUPT, words=BAD),      # must not come back half grey
    # damaged animation frames: refused as corrupt, or the intact default image processed
    "apng_bad_fdat_crc.png": (Ok("png", 8, 8, first_frame=True), refused(CORRUPT, words=BAD)),
    "apng_bad_fdat_type.png": (Ok("png", 8, 8, first_frame=True), refused(CORRUPT, words=BAD)),
    # 100 MP at 16 bits × 4 channels: processed within the limits, or refused by a byte budget
    "rgba16_100mp.png": (Ok("png", 10_000, 10_000, color=(0x9abc, 0x5678, 0x1234, 0xffff)), refused(TOO_LARGE)),
    # HEIC and AVIF (support/heif.py builds the grids box by box)
    "heic_truncated_half.heic": refused(CORRUPT, words=TRUNCATED),
    "heic_truncated_meta.heic": refused(CORRUPT, words=TRUNCATED),
    "avif_truncated_half.avif": refused(CORRUPT, words=TRUNCATED),
    "heic_ispe_60000.heic": refused(TOO_LARGE, size="60000×60000"),
    "avif_ispe_60000.avif": refused(TOO_LARGE, size="60000×60000"),
    "heic_ispe_smaller.heic": refused(CORRUPT, words=("640×480, larger than the 320×240",)),
    "heic_ispe_larger.heic": refused(CORRUPT, words=("size signaled",)),
    "avif_ispe_smaller.avif": Ok("avif", 320, 240),         # libavif scales the picture to the header's size
    "heic_grid_5000_tiles.heic": refused(TOO_LARGE, words=("5000 tiles",), size="6400×3200"),
    "avif_grid_5000_tiles.avif": refused(TOO_LARGE, words=("5000 tiles",), size="6400×3200"),
    "heic_grid_uncovered.heic": refused(CORRUPT, words=("do not cover",)),
    "heic_grid_94mp.heic": Ok("jpeg", 9728, 9728, color=(50, 100, 200)),   # 361 tiles of 512×512
}
# ... and processed with the limit raised (a pipeline that shrinks them, to stay in 2 GB)
RAISED_EXPECT: dict[str, Ok] = {
    "solid_16384.png": Ok("png", 1024, 1024, color=(255, 128, 0)),
    "solid_16384.jpg": Ok("jpeg", 1024, 1024, color=(255, 128, 0)),
}


@dataclass(frozen=True)
class Case:
    """One run of one file: where it is, what to run and what must come out."""

    id: str
    group: str
    name: str
    expect: Ok | Refused | tuple[Ok | Refused, ...]     # a tuple: any one of these is right
    pipeline: str = "blur"
    max_pixels: int = 100_000_000


CASES = ([Case(f"real/{n}", "real", n, e) for n, e in sorted(REAL_EXPECT.items())]
         + [Case(f"gen/{n}", "gen", n, GENERATED_EXPECT[n]) for n in hostile.NAMES]
         + [Case(f"gen/{n}", "gen", n, EXTRA_EXPECT[n]) for n in hostile.EXTRA_NAMES]
         + [Case(f"gen/{n}@300MP", "gen", n, e, "resize(width=1024)", RAISED_LIMIT) for n, e in RAISED_EXPECT.items()])


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated hostile files, written once for this module."""
    outdir = tmp_path_factory.mktemp("hostile")
    hostile.generate(outdir)
    return outdir


@pytest.fixture(scope="module")
def reports(generated: Path):
    """Every case started at once, two workers at a time; each test waits for its own report."""
    running: set[subprocess.Popen] = set()
    folders = {"real": HOSTILE_REAL, "gen": generated}
    with pytest.MonkeyPatch.context() as patch:
        # CPython spawns with vfork: the child shares this process's memory until execve, and
        # while other threads free memory here (the tests run beside these spawns) execve
        # sometimes failed with EFAULT ("Bad address"). Plain fork has no such window.
        patch.setattr(subprocess, "_USE_VFORK", False, raising=False)
        pool = ThreadPoolExecutor(max_workers=2)
        futures: dict[str, Future] = {
            case.id: pool.submit(_run_worker, folders[case.group] / case.name, case, running) for case in CASES}
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()
            for proc in list(running):
                _kill(proc)
            pool.shutdown(wait=True)


def _run_worker(path: Path, case: Case, running: set) -> dict:
    command = [sys.executable, str(HERE / "support" / "hostile.py"), "check", str(path), "--pipeline", case.pipeline,
               "--max-pixels", str(case.max_pixels)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    running.add(proc)
    try:
        out, err = proc.communicate(timeout=WALL_LIMIT)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        return {"outcome": "hung", "message": f"no answer within {WALL_LIMIT:.0f} s; killed"}
    finally:
        _kill(proc)
        running.discard(proc)
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        tail = err.decode(errors="replace").strip()[-1500:]
        return {"outcome": "crashed", "message": f"the worker died ({how}): {tail}"}
    return json.loads(lines[-1])


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file(case: Case, reports: dict[str, Future]) -> None:
    report = reports[case.id].result(timeout=len(CASES) * WALL_LIMIT)
    where = f"{case.name}: {report.get('message', '')}"
    assert report["outcome"] in ("ok", "error"), \
        f"{case.name} {report['outcome']}: {report.get('error', '')} {report.get('message', '')}"
    assert report["seconds"] < TIME_LIMIT, f"{case.name} took {report['seconds']:.1f} s"
    assert report["peak_rss"] < MEMORY_LIMIT, f"{case.name} used {report['peak_rss'] / 2**30:.2f} GiB"
    alternatives = case.expect if isinstance(case.expect, tuple) else (case.expect,)
    failures = []
    for expect in alternatives:
        try:
            _check(case, expect, report, where)
            return
        except AssertionError as exc:
            failures.append(str(exc))
    pytest.fail(" / or: ".join(failures), pytrace=False)


def _check(case: Case, expect: Ok | Refused, report: dict, where: str) -> None:
    if isinstance(expect, Ok):
        assert report["outcome"] == "ok", f"{case.name} is a valid image but was refused: {report.get('code')}: {where}"
        _check_result(case, expect, report)
    else:
        assert report["outcome"] == "error", f"{case.name} must be refused, got a {report.get('format')} result"
        _check_refusal(case, expect, report)


def _check_result(case: Case, expect: Ok, report: dict) -> None:
    assert (report["format"], report["width"], report["height"]) == (expect.format, expect.width, expect.height)
    shape = report["decoded_shape"]
    assert shape is not None, f"{case.name}: the result's bytes do not decode"
    assert shape[:2] == [expect.height, expect.width]
    for leak in ("markup", "zip", "exif", "text_chunk"):
        assert not report[leak], f"{case.name}: the result still carries the input's {leak}"
    if expect.color is not None:
        means = report["channel_means"]
        assert len(means) == len(expect.color) and all(abs(m - c) <= 3 for m, c in zip(means, expect.color)), \
            f"{case.name}: result colour {means}, expected {expect.color}"
    frame_notes = [n for n in report["notes"] if "first" in n.lower() and "frame" in n.lower()]
    assert bool(frame_notes) == expect.first_frame, f"{case.name}: notes {report['notes']}"


def _check_refusal(case: Case, expect: Refused, report: dict) -> None:
    code, message = report["code"], report["message"]
    assert code in expect.codes, f"{case.name}: {code} ({message}), expected {' or '.join(expect.codes)}"
    assert len(message) >= 20 and message.strip() != code, f"{case.name}: message too vague: {message!r}"
    lowered = message.lower()
    if expect.words:
        assert any(w.lower() in lowered for w in expect.words), \
            f"{case.name}: {message!r} should say why (one of {expect.words})"
    if code == UNSUPPORTED:
        assert any(w in lowered for w in ("accepts", "not supported", "not a supported", "cannot be read")), message
    if code == TOO_LARGE:
        assert "limit" in lowered and re.search(r"\d ?(MP|MB|GB|MiB|GiB|megapixels|pixels)\b", message), \
            f"{case.name}: {message!r} names no limit"
        assert re.search(r"\d+ ?[×x] ?\d+", message), f"{case.name}: {message!r} names no size"
        if expect.size:
            assert expect.size in message or expect.size.replace("×", "x") in message, \
                f"{case.name}: {message!r} should name the claimed size {expect.size}"
        assert report["peak_rss"] < REFUSAL_MEMORY, \
            f"{case.name}: refused only after using {report['peak_rss'] >> 20} MiB"


def test_every_hostile_real_file_has_an_expectation() -> None:
    assert sorted(p.name for p in HOSTILE_REAL.iterdir()) == sorted(REAL_EXPECT)


def test_generator_writes_every_corpus_kind(generated: Path) -> None:
    assert sorted(GENERATED_EXPECT) == sorted(hostile.NAMES)
    assert sorted(p.name for p in generated.iterdir()) == sorted(hostile.NAMES + hostile.EXTRA_NAMES)
    gif = (generated / "gif_5000_frames.gif").read_bytes()
    assert gif.count(b"\x21\xf9\x04") == 5000 and struct.unpack("<HH", gif[6:10]) == (400, 400)
    for name, size in (("png_bomb_header_only.png", (100_000, 100_000)),
                       ("png_bomb_1bit_65535x65535.png", (65535, 65535)), ("solid_16384.png", (16384, 16384))):
        assert struct.unpack(">II", (generated / name).read_bytes()[16:24]) == size
    assert (generated / "png_bomb_1bit_65535x65535.png").stat().st_size < 1 << 20
    assert (generated / "noise_12mp.png").stat().st_size > 35_000_000          # incompressible
    assert (generated / "exif_16mb.png").stat().st_size > 16 << 20
    assert (generated / "trailing_garbage.jpg").stat().st_size > 1 << 20
