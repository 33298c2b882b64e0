"""Shrink on load: `thumbnail` as a pipeline's first step decodes a JPEG at 1/2, 1/4 or 1/8 scale.

The reference is always the long way: decode the whole image, then run the same pipeline on it.
The shortcut must give exactly the reference's size and pixels close to it (PSNR), and change
nothing for other formats or other first steps.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pixmill.errors import CorruptImage, ImageTooLarge
from pixmill.imaging import codec
from pixmill.imaging.ops import classic, get_operation
from pixmill.imaging.pipeline import parse_pipeline, run_pipeline
from pixmill.imaging.process import Output, process

REAL = Path(__file__).parents[1] / "data" / "real"
HOSTILE = Path(__file__).parents[1] / "data" / "hostile_real"
LIMIT = 100_000_000

PHOTOS = ["pil_flower.jpg", "sk_retina.jpg", "sk_rocket.jpg", "pil_sugarshack.mpo"]     # colour, 8-bit
# width × height boxes: exact halves and quarters, odd ones, tiny, and larger than every image here
BOXES = [(256, 256), (100, 100), (33, 77), (127, 255), (64, 48), (1, 1), (240, 135), (5000, 5000)]
# PSNR floors, from what libjpeg-turbo 3 and OpenCV 4 give here (the lowest measured in brackets):
# real photos at BOXES 30 dB (32.2), at any box width 29 dB (29.6: sugarshack 157 px wide, where the
# decoded 160 px are resized by only 1.02); the generated photos 38 dB (39.6); the 128×128 hopper
# files, whose thumbnails are tiny, 27 dB (28.0; 25.6 for 15 px); the CMYK sample, red hatched text
# on black, 25 dB (28.2). When nothing shrinks on load the pixels are the reference's (99 dB).
PHOTO_DB, ANY_BOX_DB, GENERATED_DB, SMALL_DB, GRAPHIC_DB = 30.0, 29.0, 38.0, 27.0, 25.0


def read(name: str, folder: Path = REAL) -> bytes:
    return (folder / name).read_bytes()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images of the same shape, in dB (99 if equal)."""
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def thumb(width: int, height: int, rest: str = "") -> str:
    return f"thumbnail(width={width}, height={height})" + (f" | {rest}" if rest else "")


def shortcut(data: bytes, spec: str) -> np.ndarray:
    """process() with the pipeline, written losslessly and read back as it was stored."""
    result = process(data, parse_pipeline(spec), Output("png"))
    image = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (result.width, result.height) == (image.shape[1], image.shape[0])
    return image


def long_way(data: bytes, spec: str) -> np.ndarray:
    """The whole image decoded, then the pipeline run on it."""
    return run_pipeline(parse_pipeline(spec), codec.decode(data, max_pixels=LIMIT).image, max_pixels=LIMIT)[0]


def scale_for(data: bytes, width: int, height: int) -> int:
    """The scale the decoder picks for a thumbnail box."""
    op = get_operation("thumbnail")
    params = {"width": width, "height": height}
    return codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: op.size(h, w, params)).scale


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A BGR image with smooth colour regions, fine grain, a hard-edged disc and text."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    cv2.circle(image, (width // 3, height // 2), height // 4, (30, 200, 90), -1)
    cv2.putText(image, "pixmill", (width // 10, height // 5), cv2.FONT_HERSHEY_SIMPLEX, height / 300,
                (255, 255, 255), max(1, height // 200))
    return image


@functools.cache
def generated_jpeg(width: int = 1920, height: int = 1080, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", photo_like(width, height), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


@functools.cache
def oriented_jpeg(orientation: int) -> bytes:
    """A 640×360 photo-like JPEG whose EXIF says how to turn it for viewing."""
    rgb = cv2.cvtColor(photo_like(640, 360, seed=orientation), cv2.COLOR_BGR2RGB)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


# ---- the same size as the long way, and pixels close to it

def check_close(data: bytes, spec: str, floor: float) -> float:
    fast, slow = shortcut(data, spec), long_way(data, spec)
    assert fast.shape == slow.shape, f"{spec}: {fast.shape} != {slow.shape}"
    score = psnr(fast, slow)
    assert score > floor, f"{spec}: PSNR {score:.1f} dB"
    return score


@pytest.mark.parametrize("box", BOXES, ids=[f"{w}x{h}" for w, h in BOXES])
@pytest.mark.parametrize("name", PHOTOS)
def test_thumbnail_of_a_real_jpeg_matches_the_full_decode(name: str, box: tuple[int, int]):
    data = read(name)
    score = check_close(data, thumb(*box), PHOTO_DB)
    if scale_for(data, *box) == 1:
        assert score == 99.0, "nothing shrank on load, so the pixels must be the reference's"


@pytest.mark.parametrize("name", ["sk_rocket.jpg", "pil_sugarshack.mpo"])
def test_thumbnail_has_the_reference_size_for_every_box(name: str):
    data = read(name)
    height, width = codec.decode(data, max_pixels=LIMIT).image.shape[:2]
    boxes = [(w, 30_000) for w in range(1, width + 20, 29)] + [(30_000, h) for h in range(1, height + 20, 29)]
    scales = set()
    for box in boxes:
        check_close(data, thumb(*box), ANY_BOX_DB)
        scales.add(scale_for(data, *box))
    height, width = codec.probe(data, max_pixels=LIMIT).height, codec.probe(data, max_pixels=LIMIT).width
    assert scales == {1} | {s for s in (2, 4, 8) if height % s == 0 and width % s == 0}


@pytest.mark.parametrize("box", BOXES + [(960, 540), (480, 270), (961, 541)],
                         ids=lambda b: f"{b[0]}x{b[1]}")
def test_thumbnail_of_a_generated_photo_matches_the_full_decode(box: tuple[int, int]):
    data = generated_jpeg()
    score = check_close(data, thumb(*box), GENERATED_DB)
    assert (scale_for(data, *box) == 1) == (score == 99.0)


def test_the_decoder_really_shrinks_the_generated_photo():
    data = generated_jpeg()
    assert [scale_for(data, *box) for box in [(960, 540), (961, 540), (480, 270), (240, 135), (100, 100),
                                              (1920, 1080), (5000, 5000)]] == [2, 2, 4, 8, 8, 1, 1]
    assert scale_for(data, 961, 541) == 1          # 541×961 is a pixel over half of each side: no shrink


def test_thumbnail_of_a_cmyk_jpeg_keeps_its_size_and_colours():
    data = read("pil_pil_sample_cmyk.jpg")
    for box in [(33, 77), (64, 48), (1, 1), (100, 100)]:
        check_close(data, thumb(*box), GRAPHIC_DB)
        check_close(data, thumb(*box, "grayscale"), GRAPHIC_DB)


@pytest.mark.parametrize("box", [(33, 77), (64, 48), (20, 20), (1, 1), (128, 128)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_thumbnail_of_a_gray_jpeg_stays_gray(box):
    data = read("pil_hopper_gray.jpg")
    check_close(data, thumb(*box), SMALL_DB)
    assert shortcut(data, thumb(*box)).ndim == 2
    assert shortcut(data, thumb(*box, "grayscale")).ndim == 2


# ---- thumbnail | grayscale: the JPEG's own luma

@pytest.mark.parametrize("box", [(256, 256), (100, 100), (33, 77), (127, 255), (5000, 5000)],
                         ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("name", PHOTOS + ["generated"])
def test_thumbnail_then_grayscale_is_close_to_the_full_decode(name, box):
    data = generated_jpeg() if name == "generated" else read(name)
    spec = thumb(*box, "grayscale")
    check_close(data, spec, GENERATED_DB if name == "generated" else PHOTO_DB)
    assert shortcut(data, spec).ndim == 2


def test_grayscale_after_a_shrunk_thumbnail_is_left_to_the_decoder(monkeypatch):
    calls = []
    real_to_gray = classic.to_gray
    monkeypatch.setattr(classic, "to_gray", lambda image: calls.append(image.shape) or real_to_gray(image))
    data = generated_jpeg()
    assert shortcut(data, thumb(100, 100, "grayscale")).shape == (56, 100)
    assert calls == [], "grayscale ran although the decoder gave luma"
    assert shortcut(data, thumb(5000, 5000, "grayscale")).shape == (1080, 1920)     # nothing shrinks: it runs
    assert calls == [(1080, 1920, 3)]
    assert shortcut(read("sk_chelsea.png"), thumb(100, 100, "grayscale")).ndim == 2  # not a JPEG: it runs
    assert len(calls) == 2
    assert shortcut(data, thumb(100, 100, "blur | grayscale")).ndim == 2             # not right after: it runs
    assert len(calls) == 3


def test_the_decoders_luma_matches_grayscale_of_its_colour():
    data = generated_jpeg()

    def need(h: int, w: int) -> tuple[int, int]:
        return h // 4, w // 4

    luma = codec.decode(data, max_pixels=LIMIT, shrink_to=need, gray=True)
    colour = codec.decode(data, max_pixels=LIMIT, shrink_to=need)
    assert luma.scale == colour.scale == 4
    assert luma.image.shape == (270, 480) and colour.image.shape == (270, 480, 3)
    assert psnr(luma.image, cv2.cvtColor(colour.image, cv2.COLOR_BGR2GRAY)) > 40


@pytest.mark.parametrize("rest", ["grayscale | color_inversion", "grayscale | blur(ksize=3)", "blur(ksize=3)",
                                  "color_inversion | grayscale", "thumbnail(width=20, height=20)"])
def test_the_steps_after_a_shrunk_thumbnail_still_run(rest):
    data = generated_jpeg()
    spec = thumb(200, 200, rest)
    check_close(data, spec, GENERATED_DB)
    assert (shortcut(data, spec).ndim == 2) == ("grayscale" in rest)


# ---- unchanged: other formats, other first steps, resize

@pytest.mark.parametrize("name", ["sk_chelsea.png", "sk_horse.png", "pil_mode_16bit.png", "pil_flower.webp",
                                  "pil_hopper.gif", "pil_rgb24.bmp", "pil_hopper.tif", "pil_tiff_16bit_RGB.tiff"])
def test_other_formats_give_the_reference_pixels_exactly(name):
    data = read(name)
    for box in [(100, 100), (33, 77), (1, 1)]:
        fast, slow = shortcut(data, thumb(*box)), long_way(data, thumb(*box))
        assert fast.dtype == slow.dtype and np.array_equal(fast, slow), (name, box)
    assert scale_for(data, 1, 1) == 1


def test_a_png_grayscale_after_thumbnail_is_the_reference_exactly():
    data = read("sk_chelsea.png")
    spec = thumb(100, 100, "grayscale")
    assert np.array_equal(shortcut(data, spec), long_way(data, spec))


@pytest.mark.parametrize("spec", ["blur | " + thumb(100, 100), "grayscale | " + thumb(64, 48),
                                  "resize(width=300) | " + thumb(100, 100), "flip | " + thumb(33, 77)])
def test_a_thumbnail_that_is_not_the_first_step_gives_the_reference_pixels(spec):
    data = generated_jpeg()
    assert np.array_equal(shortcut(data, spec), long_way(data, spec))


@pytest.mark.parametrize("name", ["sk_rocket.jpg", "sk_retina.jpg", "generated"])
def test_resize_is_still_the_original_cv2_resize(name):
    data = generated_jpeg() if name == "generated" else read(name)
    full = codec.decode(data, max_pixels=LIMIT).image
    expected = cv2.resize(full, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(shortcut(data, "resize"), expected)
    assert np.array_equal(shortcut(data, "resize(scale=0.5)"), expected)
    assert np.array_equal(shortcut(data, "resize(width=100)"), long_way(data, "resize(width=100)"))


# ---- EXIF orientation

@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_rotated_jpeg_gives_the_oriented_size(orientation):
    data = oriented_jpeg(orientation)
    transposed = orientation in (5, 6, 7, 8)
    full = codec.decode(data, max_pixels=LIMIT)
    assert full.image.shape[:2] == ((640, 360) if transposed else (360, 640))
    for box in [(100, 300), (45, 80), (300, 100), (80, 45), (33, 77)]:
        check_close(data, thumb(*box), GENERATED_DB)
    # viewed 360×640, the box 45×80 is met exactly at 1/8; met on the stored 640×360 it would need 1/4
    assert scale_for(data, 45, 80) == 8
    result = process(data, parse_pipeline(thumb(45, 80)), Output("png"))
    assert (result.width, result.height) == ((45, 80) if transposed else (45, 25))
    if orientation != 1:
        assert any("orientation" in note for note in result.notes), result.notes


@pytest.mark.parametrize("orientation", range(2, 9))
def test_the_orientation_files_give_the_reference(orientation):
    data = read(f"pil_hopper_orientation_{orientation}.jpg")
    for box in [(30, 40), (16, 16), (64, 64), (100, 50)]:
        check_close(data, thumb(*box), SMALL_DB)
        check_close(data, thumb(*box, "grayscale"), SMALL_DB)


def test_decode_reports_scale_and_the_oriented_full_shape():
    data = oriented_jpeg(6)                                                   # stored 640×360, viewed 360×640
    decoded = codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: (h // 8, w // 8))
    assert (decoded.scale, decoded.full_shape, decoded.image.shape) == (8, (640, 360), (80, 45, 3))
    more = codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: (h // 8 + 1, w // 8))
    assert (more.scale, more.image.shape) == (4, (160, 90, 3))
    whole = codec.decode(data, max_pixels=LIMIT)
    assert (whole.scale, whole.full_shape, whole.image.shape) == (1, (640, 360), (640, 360, 3))


# ---- codec.jpeg_scale and codec.decode

@pytest.mark.parametrize("height, width, need_height, need_width, scale", [
    (1080, 1920, 540, 960, 2), (1080, 1920, 540, 961, 1), (1080, 1920, 541, 960, 1),
    (1080, 1920, 100, 100, 8), (1080, 1920, 135, 240, 8), (1080, 1920, 136, 240, 4), (1080, 1920, 270, 480, 4),
    (1080, 1920, 1080, 1920, 1), (1080, 1920, 5000, 5000, 1), (1080, 1920, 1, 1, 8),
    # a side that does not divide by the scale is never shrunk (libjpeg would round it up: see below)
    (601, 1001, 76, 126, 1), (601, 1001, 1, 1, 1), (600, 1000, 75, 125, 8), (600, 1000, 76, 125, 4),
    (600, 1000, 150, 250, 4), (600, 1000, 151, 250, 2), (600, 1000, 300, 500, 2), (600, 1000, 301, 500, 1),
    (1, 1, 1, 1, 1), (8, 8, 1, 1, 8), (12, 8, 1, 1, 4), (6, 8, 3, 4, 2), (7, 9, 1, 2, 1),
])
def test_jpeg_scale(height, width, need_height, need_width, scale):
    assert codec.jpeg_scale(height, width, need_height, need_width) == scale


def test_decode_at_each_scale_gives_the_divided_size():
    data = generated_jpeg(1000, 600)
    for scale in (8, 4, 2, 1):
        need = (600 // scale, 1000 // scale)
        decoded = codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: need)  # noqa: B023 (run in this iteration)
        assert decoded.scale == scale and decoded.image.shape == need + (3,)
        assert decoded.full_shape == (600, 1000)
    odd = codec.decode(generated_jpeg(1001, 601), max_pixels=LIMIT, shrink_to=lambda h, w: (1, 1))
    assert odd.scale == 1 and odd.image.shape == (601, 1001, 3)


def test_gray_only_applies_when_the_decoder_shrinks():
    data = generated_jpeg()
    whole = codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: (h, w), gray=True)
    assert whole.scale == 1 and whole.image.shape == (1080, 1920, 3)
    assert np.array_equal(whole.image, codec.decode(data, max_pixels=LIMIT).image)


def test_decode_with_shrink_to_keeps_a_gray_jpeg_two_dimensional():
    data = read("pil_hopper_gray.jpg")                                        # 128×128, one channel
    for gray in (False, True):
        decoded = codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: (16, 16), gray=gray)
        assert decoded.scale == 8 and decoded.image.shape == (16, 16) and decoded.image.dtype == np.uint8
    full = codec.decode(data, max_pixels=LIMIT).image
    assert psnr(decoded.image, cv2.resize(full, (16, 16), interpolation=cv2.INTER_AREA)) > 40


def test_shrink_to_is_ignored_for_other_formats():
    for name in ("sk_chelsea.png", "pil_flower.webp", "pil_hopper.tif"):
        data = read(name)
        decoded = codec.decode(data, max_pixels=LIMIT, shrink_to=lambda h, w: (1, 1), gray=True)
        assert decoded.scale == 1
        assert np.array_equal(decoded.image, codec.decode(data, max_pixels=LIMIT).image)


# ---- damaged and oversized inputs are still refused

@pytest.mark.parametrize("cut", ["half", "half+eoi", "0.99"])
@pytest.mark.parametrize("name", ["sk_rocket.jpg", "generated"])
def test_a_truncated_jpeg_still_fails_under_shrink(name, cut):
    data = generated_jpeg() if name == "generated" else read(name)
    broken = {"half": data[: len(data) // 2], "half+eoi": data[: len(data) // 2] + b"\xff\xd9",
              "0.99": data[: int(len(data) * 0.99)]}[cut]
    for spec in (thumb(50, 50), thumb(50, 50, "grayscale"), thumb(300, 300)):
        with pytest.raises(CorruptImage, match="truncated"):
            process(broken, parse_pipeline(spec))
    with pytest.raises(CorruptImage):
        codec.decode(broken, max_pixels=LIMIT, shrink_to=lambda h, w: (h // 8, w // 8), gray=True)


def test_the_hostile_truncated_jpeg_fails_under_shrink():
    with pytest.raises(CorruptImage):
        process(read("truncated_jpeg.jpg", HOSTILE), parse_pipeline(thumb(16, 16, "grayscale")))


def test_the_pixel_limit_holds_under_shrink():
    with pytest.raises(ImageTooLarge, match="1920×1080"):
        process(generated_jpeg(), parse_pipeline(thumb(10, 10)), max_pixels=1_000_000)


# ---- found while writing these tests

def test_a_side_that_is_not_a_multiple_of_the_scale_is_not_stretched():
    """A 1001-pixel side would decode at 1/8 to 126 pixels, the last of them standing for one source pixel.

    Resizing all 126 to the thumbnail's width stretched the picture: an edge at 80 % of the width
    landed 0.56 px left of where thumbnail of the full decode puts it (79.36 vs 79.92 of 100), and a
    photo-like image fell to about 24 dB against the reference. Such a JPEG is now decoded whole."""
    image = np.full((601, 1001, 3), 255, np.uint8)
    image[:, :800] = 0
    edge_jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    spec = thumb(100, 100)
    assert scale_for(edge_jpeg, 100, 100) == 1

    def edge(picture: np.ndarray) -> float:                   # columns of black, averaged over the rows
        gray = picture if picture.ndim == 2 else cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
        return float((1 - gray.astype(np.float64) / 255).sum(axis=1).mean())

    fast, slow = edge(shortcut(edge_jpeg, spec)), edge(long_way(edge_jpeg, spec))
    assert abs(fast - slow) < 0.15, f"the edge is at {fast:.2f} px, the reference puts it at {slow:.2f} px"
    check_close(generated_jpeg(1001, 601), spec, PHOTO_DB)
