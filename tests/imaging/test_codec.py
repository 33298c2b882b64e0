"""The safe codec: format from the bytes, header checked before decoding, orientation, depth, alpha, outputs."""

from __future__ import annotations

import io
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from pixmill.errors import CorruptImage, ImageTooLarge, PixmillError, UnsupportedFormat
from pixmill.imaging import codec
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from support.hostile import png

REAL = Path(__file__).parents[1] / "data" / "real"
LIMIT = 100_000_000
MARKER = "pixmill-private-42"           # written into every metadata field; must not reach an output

SOURCE_FORMATS = {
    "pil_flower.jpg": "jpeg", "pil_hopper_gray.jpg": "jpeg", "pil_sugarshack.mpo": "jpeg", "sk_camera.png": "png",
    "sk_logo.png": "png", "pil_flower.webp": "webp", "pil_iss634.gif": "gif", "pil_pal8.bmp": "bmp",
    "pil_rgb24.bmp": "bmp", "pil_hopper.tif": "tiff", "pil_tiff_16bit_RGB.tiff": "tiff",
}


def read(name: str) -> bytes:
    """The bytes of tests/data/real/NAME."""
    return (REAL / name).read_bytes()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images of the same shape, in dB (99 if equal)."""
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def pillow_bgr(image: Image.Image) -> np.ndarray:
    """A Pillow image as an OpenCV BGR array."""
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def run(data: bytes, spec: str = "blur", fmt: str = "auto", **kwargs):
    """process() with a pipeline given as text."""
    return process(data, parse_pipeline(spec), Output(format=fmt, **kwargs))


def unchanged(data: bytes) -> np.ndarray:
    """Result bytes decoded by OpenCV with depth and channels as stored."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "the result does not decode"
    return image


# --- format from the bytes -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SOURCE_FORMATS))
def test_sniff_reads_the_format_from_the_bytes(name: str) -> None:
    assert codec.sniff(read(name)) == SOURCE_FORMATS[name]


def test_png_named_jpg_is_processed_as_png(tmp_path: Path) -> None:
    lying = tmp_path / "photo.jpg"
    lying.write_bytes(read("sk_chelsea.png"))
    result = run(lying.read_bytes())
    assert codec.sniff(lying.read_bytes()) == "png"
    assert (result.format, result.extension, result.media_type) == ("png", "png", "image/png")
    assert codec.sniff(result.data) == "png"


@pytest.mark.parametrize("data, words", [
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', ("SVG",)),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', ("SVG",)),
    (b"  <!DOCTYPE html><html><body><script>alert(1)</script></body></html>", ("HTML",)),
    (b"<html><body>hello</body></html>", ("HTML",)),
    (b"just some plain text\n" * 10, ("text",)),
    (b"", ("empty",)),
    (b"8BPS\x00\x01" + bytes(40), ("PSD", "Photoshop")),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(40), ("JPEG 2000",)),      # JP2 signature box
    (b"\xff\x4f\xff\x51\x00\x29" + bytes(40), ("JPEG 2000",)),             # JPEG 2000 codestream
    (b"%PDF-1.7\n" + bytes(40), ("PDF",)),
    (b"\x00\x00\x01\x00\x01\x00" + bytes(40), ("ICO",)),
    (bytes(range(256)), ("match no image format", "not a supported")),
], ids=["svg-xml", "svg", "html-doctype", "html", "text", "empty", "psd", "jp2", "j2k", "pdf", "ico", "binary"])
def test_sniff_refuses_what_is_not_an_accepted_image(data: bytes, words: tuple[str, ...]) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        codec.sniff(data)
    message = info.value.message
    assert any(w.lower() in message.lower() for w in words), f"{message!r} should mention {words}"
    assert "JPEG, PNG" in message, f"{message!r} should say what is accepted"
    with pytest.raises(UnsupportedFormat):
        run(data)


# --- the header before the pixels -----------------------------------------------------------------

@pytest.mark.parametrize("name, fmt, size, animated", [
    ("sk_chelsea.png", "png", (451, 300), False), ("pil_flower.jpg", "jpeg", (480, 360), False),
    ("pil_iss634.gif", "gif", (245, 245), True), ("pil_iss634.webp", "webp", (245, 245), True),
    ("pil_rgb24.bmp", "bmp", (127, 64), False), ("pil_tiff_16bit_RGB.tiff", "tiff", (100, 40), False),
])
def test_probe_reads_size_and_animation_from_the_header(name: str, fmt: str, size: tuple[int, int],
                                                        animated: bool) -> None:
    info = codec.probe(read(name), max_pixels=LIMIT)
    assert (info.format, info.width, info.height, info.animated) == (fmt, *size, animated)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (12_000, 12_000), (65_535, 1_700)])
def test_probe_refuses_an_oversized_header_without_allocating(width: int, height: int) -> None:
    """A tiny PNG claiming width×height pixels: refused at once, naming its size and the limit."""
    bomb = png(width, height, 8, 0, b"x\x9c\x03\x00\x00\x00\x00\x01")
    reset_peak_rss()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge) as info:
            codec.probe(bomb, max_pixels=LIMIT)
        elapsed = time.perf_counter() - started
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = peak_rss() - current_rss()
    message = info.value.message
    assert f"{width}×{height}" in message and "100 MP" in message, message
    assert elapsed < 1.0
    assert traced_peak < 1 << 20, f"probe allocated {traced_peak} bytes of Python memory"
    assert grown < 50 << 20, f"probe grew the resident memory by {grown >> 20} MiB"


def test_probe_and_decode_honour_a_configured_limit() -> None:
    data = read("sk_camera.png")                                       # 512×512
    with pytest.raises(ImageTooLarge, match="512×512"):
        codec.probe(data, max_pixels=200_000)
    with pytest.raises(ImageTooLarge, match="512×512"):
        process(data, parse_pipeline("blur"), max_pixels=200_000)
    assert codec.probe(data, max_pixels=512 * 512).pixels == 512 * 512


def test_a_big_legal_header_is_read_without_decoding() -> None:
    header_only = png(16_384, 16_384, 8, 2, b"x\x9c\x03\x00\x00\x00\x00\x01")
    reset_peak_rss()
    info = codec.probe(header_only, max_pixels=300_000_000)
    assert (info.width, info.height) == (16_384, 16_384)
    assert peak_rss() - current_rss() < 50 << 20


# --- corrupt data is never a success --------------------------------------------------------------

@pytest.mark.parametrize("name", ["pil_flower.jpg", "sk_rocket.jpg", "sk_chelsea.png", "pil_flower.webp",
                                  "pil_hopper.gif", "pil_rgb24.bmp", "pil_hopper.tif"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_file_is_an_error(name: str, fraction: float) -> None:
    data = read(name)
    with pytest.raises((CorruptImage, UnsupportedFormat)) as info:
        codec.decode(data[: int(len(data) * fraction)], max_pixels=LIMIT)
    assert info.value.message


def test_half_a_jpeg_with_its_end_marker_put_back_is_an_error() -> None:
    """libjpeg only warns and fills the missing half with grey: that must not pass as a result."""
    data = read("sk_rocket.jpg")
    with pytest.raises(CorruptImage):
        codec.decode(data[: len(data) // 2] + b"\xff\xd9", max_pixels=LIMIT)


def test_trailing_bytes_after_a_jpeg_are_ignored() -> None:
    data = read("pil_flower.jpg")
    clean = codec.decode(data, max_pixels=LIMIT).image
    assert np.array_equal(codec.decode(data + bytes(range(256)) * 100, max_pixels=LIMIT).image, clean)


# --- EXIF orientation ----------------------------------------------------------------------------

DIHEDRAL = {
    "identity": lambda a: a, "flip_h": lambda a: a[:, ::-1], "rot180": lambda a: a[::-1, ::-1],
    "flip_v": lambda a: a[::-1], "transpose": lambda a: a.transpose(1, 0, 2), "rot90": lambda a: np.rot90(a, 1),
    "transverse": lambda a: a[::-1, ::-1].transpose(1, 0, 2), "rot270": lambda a: np.rot90(a, 3),
}


@pytest.mark.parametrize("name", [f"pil_hopper_orientation_{n}.jpg" for n in range(2, 9)]
                         + ["pil_hopper_orientation_6.webp"])
def test_exif_orientation_is_applied(name: str) -> None:
    decoded = codec.decode(read(name), max_pixels=LIMIT)
    reference = pillow_bgr(ImageOps.exif_transpose(Image.open(REAL / name)))
    assert psnr(decoded.image, reference) > 40
    upright = cv2.imread(str(REAL / "pil_hopper.bmp"), cv2.IMREAD_COLOR)
    scores = {k: psnr(np.ascontiguousarray(t(decoded.image)), upright) for k, t in DIHEDRAL.items()}
    assert max(scores, key=scores.get) == "identity" and scores["identity"] > 28, scores
    assert any("orientation" in note for note in decoded.notes)


def test_orientation_swaps_width_and_height() -> None:
    image = Image.fromarray(np.tile(np.arange(60, dtype=np.uint8), (20, 1)))   # 60 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6                                                            # rotate 90° clockwise to view
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    result = run(buffer.getvalue(), "color_inversion", "png")
    assert (result.width, result.height) == (20, 60)
    out = unchanged(result.data)
    assert out.shape[:2] == (60, 20)
    column = 255 - out[:, 10, 0].astype(int)                                    # left→right became top→bottom
    assert column[0] < 5 and column[-1] > 50


# --- metadata stripped ---------------------------------------------------------------------------

def gps_jpeg() -> bytes:
    """A JPEG carrying GPS coordinates, a description, an artist, a comment and XMP, all saying MARKER."""
    exif = Image.Exif()
    exif[0x010E] = MARKER                                                       # ImageDescription
    exif[0x013B] = MARKER                                                       # Artist
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0), 27: MARKER.encode()})
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>{MARKER}</rdf:Description></x:xmpmeta>'
    buffer = io.BytesIO()
    Image.open(REAL / "pil_flower.jpg").save(buffer, "JPEG", exif=exif, comment=MARKER, xmp=xmp.encode())
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825), "the fixture should carry GPS"
    return data


@pytest.mark.parametrize("fmt", ["auto", "jpeg", "png", "webp", "tiff"])
def test_metadata_and_gps_are_stripped_from_outputs(fmt: str) -> None:
    result = run(gps_jpeg(), "blur", fmt)
    assert MARKER.encode() not in result.data
    out = Image.open(io.BytesIO(result.data))
    exif = out.getexif()
    assert not exif.get_ifd(0x8825) and 0x8825 not in exif, "GPS survived"
    assert 0x010E not in exif and 0x013B not in exif
    assert b"Exif\0\0" not in result.data and b"http://ns.adobe.com/xap" not in result.data


def test_png_text_chunks_are_stripped() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", MARKER)
    text.add_text("Author", MARKER, zip=True)
    buffer = io.BytesIO()
    Image.open(REAL / "sk_chelsea.png").save(buffer, "PNG", pnginfo=text)
    result = run(buffer.getvalue(), "blur", "png")
    assert MARKER.encode() not in result.data
    assert not any(kind in result.data for kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"))


# --- depth and alpha -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, channels", [("pil_mode_16bit.png", 4), ("pil_tiff_16bit_RGB.tiff", 3),
                                            ("pil_i_trns.png", 1)])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_is_kept_through_a_16_bit_operation(name: str, channels: int, fmt: str) -> None:
    result = run(read(name), "blur", fmt)
    out = unchanged(result.data)
    assert out.dtype == np.uint16
    assert (out.shape[2] if out.ndim == 3 else 1) == channels
    source = codec.decode(read(name), max_pixels=LIMIT).image
    assert source.dtype == np.uint16
    assert np.array_equal(out, cv2.GaussianBlur(source, (5, 5), 0))         # lossless: exact
    assert not any("8-bit" in note for note in result.notes)


def test_16_bit_is_converted_deliberately_where_an_operation_needs_8() -> None:
    result = run(read("pil_tiff_16bit_RGB.tiff"), "edge_detection", "png")
    assert unchanged(result.data).dtype == np.uint8
    assert any("16-bit" in note and "8-bit" in note for note in result.notes), result.notes


def test_16_bit_to_jpeg_says_so() -> None:
    result = run(read("pil_tiff_16bit_RGB.tiff"), "blur", "jpeg")
    assert unchanged(result.data).dtype == np.uint8
    assert any("16-bit" in note for note in result.notes), result.notes


@pytest.mark.parametrize("name", ["sk_logo.png", "sk_horse.png", "pil_iss634.webp"])
@pytest.mark.parametrize("spec", ["blur", "color_inversion", "grayscale | resize(width=100)"])
def test_alpha_is_kept(name: str, spec: str) -> None:
    source = codec.decode(read(name), max_pixels=LIMIT).image
    assert source.shape[2] == 4
    result = run(read(name), spec, "png")
    out = unchanged(result.data)
    assert out.ndim == 3 and out.shape[2] == 4, f"{spec} on {name}: shape {out.shape}"
    if spec == "color_inversion":                                      # the alpha channel is left alone
        assert np.array_equal(out[..., 3], source[..., 3])
        assert np.array_equal(out[..., :3], 255 - source[..., :3])


def horse_as(layout: str) -> bytes:
    """sk_horse.png (real transparency) re-saved by Pillow in another layout that carries alpha."""
    rgba = Image.open(REAL / "sk_horse.png").convert("RGBA")
    buffer = io.BytesIO()
    if layout == "gif":
        paletted = rgba.quantize(255)
        paletted.paste(255, mask=rgba.getchannel("A").point(lambda a: 255 if a < 128 else 0))
        paletted.save(buffer, "GIF", transparency=255)
    elif layout == "png-palette":
        rgba.quantize(64).save(buffer, "PNG")
    elif layout == "png-gray-alpha":
        rgba.convert("LA").save(buffer, "PNG")
    elif layout == "tiff":
        rgba.save(buffer, "TIFF")
    else:
        rgba.save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


@pytest.mark.parametrize("layout", ["gif", "png-palette", "png-gray-alpha", "tiff", "webp"])
def test_alpha_from_every_layout_is_kept(layout: str) -> None:
    data = horse_as(layout)
    source = codec.decode(data, max_pixels=LIMIT).image
    assert source.ndim == 3 and source.shape[2] == 4 and source[..., 3].min() < 255
    out = unchanged(run(data, "blur", "png").data)
    assert np.array_equal(out, cv2.GaussianBlur(source, (5, 5), 0))


def test_alpha_in_webp_output() -> None:
    source = codec.decode(read("sk_horse.png"), max_pixels=LIMIT).image          # alpha 110..255
    out = unchanged(run(read("sk_horse.png"), "blur", "webp").data)
    assert out.shape[2] == 4
    assert psnr(out[..., 3], cv2.GaussianBlur(source, (5, 5), 0)[..., 3]) > 35


def test_alpha_to_jpeg_is_composited_and_said() -> None:
    result = run(read("sk_logo.png"), "blur", "jpeg")
    assert unchanged(result.data).shape[2] == 3
    assert any("transparen" in note or "alpha" in note for note in result.notes), result.notes


# --- animation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pil_iss634.gif", "pil_iss634.webp", "sk_no_time_for_that_tiny.gif",
                                  "pil_mode_16bit.png"])
def test_animated_images_give_their_first_frame_and_say_so(name: str) -> None:
    result = run(read(name), "color_inversion", "png")
    assert any("first" in note for note in result.notes), result.notes
    decoded = codec.decode(read(name), max_pixels=LIMIT).image
    with Image.open(REAL / name) as im:
        assert im.n_frames > 1
        if decoded.dtype == np.uint8:                                   # frame 0 as Pillow reads it
            mode, code = ("RGBA", cv2.COLOR_RGBA2BGRA) if decoded.shape[2] == 4 else ("RGB", cv2.COLOR_RGB2BGR)
            assert psnr(decoded, cv2.cvtColor(np.asarray(im.convert(mode)), code)) > 40


@pytest.mark.parametrize("name", ["pil_hopper.gif", "sk_chelsea.png", "pil_flower.webp", "pil_flower.jpg"])
def test_still_images_have_no_frame_note(name: str) -> None:
    assert not any("first" in note for note in run(read(name)).notes)


# --- output formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("pil_flower.jpg", "jpeg"), ("sk_chelsea.png", "png"), ("pil_hopper.gif", "png"), ("pil_rgb24.bmp", "png"),
    ("pil_hopper.tif", "png"), ("pil_sugarshack.mpo", "jpeg"), ("pil_hopper_gray.jpg", "jpeg"),
])
def test_auto_keeps_jpeg_as_jpeg_and_lossless_as_png(name: str, expected: str) -> None:
    result = run(read(name), "blur", "auto")
    assert result.format == expected and codec.sniff(result.data) == expected


def test_auto_keeps_a_lossless_webp_lossless() -> None:
    """'lossless stays PNG': a lossless WebP must not come back lossy."""
    buffer = io.BytesIO()
    Image.open(REAL / "sk_chelsea.png").save(buffer, "WEBP", lossless=True)
    source = codec.decode(buffer.getvalue(), max_pixels=LIMIT).image
    result = run(buffer.getvalue(), "color_inversion", "auto")
    out = unchanged(result.data)[..., :3]
    assert np.array_equal(out, 255 - source[..., :3]), \
        f"auto wrote a lossy {result.format}: PSNR {psnr(out, 255 - source[..., :3]):.1f} dB"


@pytest.mark.parametrize("fmt, pillow_name", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP"), ("tiff", "TIFF")])
@pytest.mark.parametrize("name", ["pil_flower.jpg", "sk_chelsea.png", "pil_hopper_gray.jpg", "sk_horse.png"])
def test_every_output_format(name: str, fmt: str, pillow_name: str) -> None:
    result = run(read(name), "blur", fmt)
    assert result.format == fmt and codec.sniff(result.data) == fmt
    assert result.media_type == codec.MEDIA_TYPES[fmt] and result.extension == codec.EXTENSIONS[fmt]
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.format == pillow_name and out.size == (result.width, result.height)
    source = codec.decode(read(name), max_pixels=LIMIT).image
    expected = cv2.GaussianBlur(source, (5, 5), 0)
    out = unchanged(result.data)
    if fmt in ("png", "tiff"):
        assert np.array_equal(out, expected)
    elif fmt == "jpeg" and expected.ndim == 3 and expected.shape[2] == 4:  # composited on white
        assert out.shape == expected.shape[:2] + (3,)
    elif fmt == "webp" and expected.ndim == 2:                              # WebP has no gray layout
        assert psnr(out, cv2.cvtColor(expected, cv2.COLOR_GRAY2BGR)) > 30
    else:
        assert psnr(out, expected) > 30


def test_a_result_too_tall_for_webp_says_so() -> None:
    """WebP holds at most 16383 pixels a side: the input is not corrupt, and the message says what to do."""
    buffer = io.BytesIO()
    Image.new("L", (1, 20_000), 128).save(buffer, "PNG")
    with pytest.raises(PixmillError) as info:
        run(buffer.getvalue(), "blur", "webp")
    assert not isinstance(info.value, CorruptImage), info.value.message
    assert "16383" in info.value.message, info.value.message
    assert run(buffer.getvalue(), "blur", "png").height == 20_000


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_sets_the_size_of_lossy_outputs(fmt: str) -> None:
    data = read("sk_rocket.jpg")
    low, high = (run(data, "blur", fmt, quality=q) for q in (20, 95))
    assert len(low.data) < 0.6 * len(high.data)
    source = codec.decode(data, max_pixels=LIMIT).image
    expected = cv2.GaussianBlur(source, (5, 5), 0)
    assert psnr(unchanged(high.data), expected) > psnr(unchanged(low.data), expected)


def test_quality_does_not_change_lossless_outputs() -> None:
    data = read("sk_chelsea.png")
    assert np.array_equal(unchanged(run(data, "blur", "png", quality=10).data),
                          unchanged(run(data, "blur", "png", quality=100).data))


# --- unusual layouts decode sensibly -------------------------------------------------------------

def test_cmyk_jpeg_becomes_bgr() -> None:
    decoded = codec.decode(read("pil_pil_sample_cmyk.jpg"), max_pixels=LIMIT).image
    assert decoded.shape == (100, 100, 3) and decoded.dtype == np.uint8
    assert psnr(decoded, pillow_bgr(Image.open(REAL / "pil_pil_sample_cmyk.jpg"))) > 35


def test_palette_bmp_is_expanded_exactly() -> None:
    decoded = codec.decode(read("pil_pal8.bmp"), max_pixels=LIMIT).image
    assert np.array_equal(decoded, pillow_bgr(Image.open(REAL / "pil_pal8.bmp")))


def test_mpo_gives_its_first_image() -> None:
    decoded = codec.decode(read("pil_sugarshack.mpo"), max_pixels=LIMIT)
    assert decoded.format == "jpeg" and decoded.image.shape == (480, 640, 3)
    with Image.open(REAL / "pil_sugarshack.mpo") as im:
        assert psnr(decoded.image, pillow_bgr(im)) > 40
    assert any("first" in note for note in decoded.notes)


def test_gray_jpeg_stays_one_channel() -> None:
    decoded = codec.decode(read("pil_hopper_gray.jpg"), max_pixels=LIMIT).image
    assert decoded.shape == (128, 128) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, cv2.imread(str(REAL / "pil_hopper_gray.jpg"), cv2.IMREAD_GRAYSCALE))


def test_rgb_bmp_matches_opencv() -> None:
    decoded = codec.decode(read("pil_rgb24.bmp"), max_pixels=LIMIT).image
    assert np.array_equal(decoded, cv2.imread(str(REAL / "pil_rgb24.bmp"), cv2.IMREAD_COLOR))


def test_multipage_planar_tiff_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedFormat) as info:
        codec.decode(read("sk_multipage_rgb.tif"), max_pixels=LIMIT)
    assert "TIFF" in info.value.message


# --- memory measurement helpers ------------------------------------------------------------------

def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1]) * 1024


def current_rss() -> int:
    """This process's resident memory now, in bytes."""
    return _status("VmRSS")


def peak_rss() -> int:
    """This process's peak resident memory since the last reset_peak_rss(), in bytes."""
    return _status("VmHWM")


def reset_peak_rss() -> None:
    """Start measuring the peak resident memory afresh (Linux: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
