"""process(): every real image through a few pipelines, the original defaults pixel-equal, pickling, errors."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pixmill import errors
from pixmill.errors import ImageTooLarge, PixmillError, UnsupportedFormat
from pixmill.imaging import codec
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result, process

REAL = Path(__file__).parents[1] / "data" / "real"
REAL_FILES = sorted(p.name for p in REAL.iterdir())
REFUSED = {"sk_multipage_rgb.tif": UnsupportedFormat}      # planar multi-page TIFF: a clear "unsupported"
PIPELINES = ["blur", "grayscale | resize(width=64)", "edge_detection | color_inversion"]
ROTATED = (5, 6, 7, 8)                                      # EXIF orientations that swap width and height


def upright_size(path: Path) -> tuple[int, int]:
    """The (width, height) of an image once its EXIF orientation is applied, as Pillow reads the header."""
    with Image.open(path) as im:
        width, height = im.size
        return (height, width) if im.getexif().get(0x0112) in ROTATED else (width, height)


@pytest.mark.parametrize("spec", PIPELINES)
@pytest.mark.parametrize("name", REAL_FILES)
def test_every_real_image_through_a_pipeline(name: str, spec: str) -> None:
    data = (REAL / name).read_bytes()
    if name in REFUSED:
        with pytest.raises(REFUSED[name]) as info:
            process(data, parse_pipeline(spec))
        assert len(info.value.message) > 20
        return
    result = process(data, parse_pipeline(spec))
    width, height = upright_size(REAL / name)
    if "resize(width=64)" in spec:
        width, height = 64, max(1, round(height * 64 / width))
    assert (result.width, result.height) == (width, height)
    out = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out is not None and out.shape[:2] == (height, width)
    source = codec.sniff(data)
    lossy_webp = source == "webp" and name != "pil_iss634.webp"  # its frames are VP8L: auto keeps it lossless, as PNG
    assert result.format == ("jpeg" if source == "jpeg" else "webp" if lossy_webp else "png")
    assert codec.sniff(result.data) == result.format
    assert all(isinstance(note, str) and note for note in result.notes)


ORIGINAL_DEFAULTS = {
    "edge_detection": lambda img: cv2.Canny(img, 100, 200),
    "color_inversion": lambda img: cv2.bitwise_not(img),
    "grayscale": lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY),
    "blur": lambda img: cv2.GaussianBlur(img, (5, 5), 0),
    "threshold": lambda img: cv2.threshold(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 127, 255, cv2.THRESH_BINARY)[1],
    "resize": lambda img: cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_LINEAR),
}


@pytest.mark.parametrize("op", sorted(ORIGINAL_DEFAULTS))
@pytest.mark.parametrize("name", ["sk_chelsea.png", "pil_rgb24.bmp", "pil_hopper.bmp"])
def test_original_defaults_equal_the_direct_opencv_calls(name: str, op: str) -> None:
    result = process((REAL / name).read_bytes(), parse_pipeline(op), Output(format="png"))
    out = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = ORIGINAL_DEFAULTS[op](cv2.imread(str(REAL / name), cv2.IMREAD_COLOR))
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert np.array_equal(out, expected), f"{op} on {name}: {np.count_nonzero(out != expected)} pixels differ"


def test_result_pickles() -> None:
    result = process((REAL / "pil_iss634.gif").read_bytes(), parse_pipeline("blur"), Output(format="webp"))
    assert result.notes
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result and isinstance(copy, Result)
    assert (copy.media_type, copy.extension) == ("image/webp", "webp")
    assert pickle.loads(pickle.dumps(Output(format="jpeg", quality=40))) == Output(format="jpeg", quality=40)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_pickles(name: str) -> None:
    cls = getattr(errors, name)
    error = cls("photo.png: 24000×24000 is 576 MP, over the 100 MP limit")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and issubclass(cls, PixmillError)
    assert (copy.message, copy.status, copy.code, copy.to_dict()) == (error.message, error.status, error.code,
                                                                     error.to_dict())


@pytest.mark.parametrize("data, spec", [
    (b"", "blur"), (b"GIF89a", "blur"), (b"\x89PNG\r\n\x1a\n", "blur"), (b"\xff\xd8\xff", "blur"),
    ((REAL / "sk_retina.jpg").read_bytes(), "resize(scale=8)"),
])
def test_errors_raised_by_process_pickle(data: bytes, spec: str) -> None:
    with pytest.raises(PixmillError) as info:
        process(data, parse_pipeline(spec))
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value) and copy.message == info.value.message


def test_an_output_over_the_pixel_limit_is_refused_before_it_is_made() -> None:
    with pytest.raises(ImageTooLarge) as info:
        process((REAL / "sk_retina.jpg").read_bytes(), parse_pipeline("resize(scale=8)"))   # 1411² → 127 MP
    assert "100 MP" in info.value.message and "step 1 resize" in info.value.message


FUZZ_WORKER = r"""
import json, random, sys
from pixmill.errors import PixmillError
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import process

path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = open(path, "rb").read()
rng = random.Random(seed)
pipeline = parse_pipeline("blur | grayscale")

def mutate(data, kind):
    raw = bytearray(data)
    where = rng.randrange(len(raw))
    near = rng.randrange(min(len(raw), 600))
    if kind == 0:
        return bytes(raw[:where])
    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(min(len(raw), 600))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 2:
        raw[near:near + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
        return bytes(raw)
    if kind == 3:
        for _ in range(rng.randint(1, 50)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if kind == 4:
        return bytes(raw[:where] + raw[where + rng.randint(1, 4096):])
    return bytes(raw[:where] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + raw[where:])

for case in range(count):
    mutated = mutate(data, case % 6)
    print(json.dumps({"case": case, "state": "start"}), flush=True)
    try:
        result = process(mutated, pipeline)
        outcome = {"state": "ok", "width": result.width, "height": result.height}
    except PixmillError as exc:
        outcome = {"state": "error", "error": type(exc).__name__, "message": exc.message}
    except BaseException as exc:
        outcome = {"state": "other", "error": type(exc).__name__, "message": str(exc)[:300]}
    print(json.dumps({"case": case, **outcome}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pil_flower.jpg", "sk_coins.png", "pil_flower.webp", "pil_hopper.gif",
                                  "pil_pal8.bmp", "pil_hopper.tif", "pil_tiff_16bit_RGB.tiff",
                                  "pil_iss634.gif", "pil_mode_16bit.png"])
def test_damaged_files_give_only_pixmill_errors(name: str) -> None:
    """Mutated copies (cut, bit flips, overwritten, deleted or inserted bytes) in a separate interpreter."""
    count = 60
    proc = subprocess.Popen([sys.executable, "-c", FUZZ_WORKER, str(REAL / name), "7", str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line["state"] != "start"]
    others = [line for line in finished if line["state"] == "other"]
    assert not others, f"{name}: exceptions that are not PixmillError: {others}"
    if len(finished) < count:
        last = lines[-1]["case"] if lines else None
        pytest.fail(f"{name}: the worker died or hung on mutated case {last} "
                    f"(exit {proc.returncode}): {err.decode(errors='replace')[-800:]}")
    for line in finished:
        if line["state"] == "error":
            assert len(line["message"]) > 15, line
