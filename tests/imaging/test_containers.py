"""The chunk readers: PNG headers and cleaning, WebP lossy or lossless, BMP RLE checks, on real and lying files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pixmill.imaging.containers import ChunkError, bmp_rle_problem, clean_png, read_png, webp_is_lossy
from support.hostile import chunk, png

DATA = Path(__file__).parents[1] / "data"
REAL, HOSTILE = DATA / "real", DATA / "hostile_real"
REAL_PNGS = sorted(p.name for p in REAL.glob("*.png"))


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def kinds(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order."""
    pos, found = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        found.append(kind)
        pos += 12 + length
    return found


SMALL = encode(Image.new("RGB", (3, 2), "red"), "PNG")


# ---- read_png

@pytest.mark.parametrize("name", REAL_PNGS)
def test_read_png_gives_the_header_of_each_real_png(name):
    header = read_png((REAL / name).read_bytes())
    with Image.open(REAL / name) as image:
        assert (header.width, header.height) == image.size
        assert header.animated == getattr(image, "is_animated", False)
    assert header.bit_depth in (1, 2, 4, 8, 16) and header.color_type in (0, 2, 3, 4, 6)
    assert header.exif is None


@pytest.mark.parametrize(("mode", "color_type", "depth"), [("L", 0, 8), ("RGB", 2, 8), ("LA", 4, 8),
                                                           ("RGBA", 6, 8), ("I;16", 0, 16), ("1", 0, 1)])
def test_read_png_gives_the_depth_and_colour_type_written(mode, color_type, depth):
    header = read_png(encode(Image.new(mode, (5, 7)), "PNG"))
    assert (header.width, header.height, header.bit_depth, header.color_type) == (5, 7, depth, color_type)
    assert not header.animated


def test_read_png_sees_an_animation_and_the_first_exif_chunk():
    frames = [Image.new("RGB", (4, 4), c) for c in ("red", "green", "blue")]
    assert read_png(encode(frames[0], "PNG", save_all=True, append_images=frames[1:])).animated
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (4, 4)), "PNG", exif=exif.tobytes())
    assert b"eXIf" in data
    header = read_png(data)
    reread = Image.Exif()
    reread.load(header.exif)
    assert reread[0x0112] == 6


def test_read_png_believes_the_header_without_decoding_anything():
    bomb = png(100_000, 100_000, 8, 0, zlib.compress(b"\0" * 100_001))
    header = read_png(bomb)
    assert (header.width, header.height, header.bit_depth, header.color_type) == (100_000, 100_000, 8, 0)


def test_every_truncation_of_a_png_is_a_chunk_error():
    for end in range(len(SMALL)):
        with pytest.raises(ChunkError):
            read_png(SMALL[:end])


@pytest.mark.parametrize("name", ["broken.png", "broken_data_stream.png", "truncated_end_chunk.png",
                                  "truncated_image.png"])
def test_read_png_refuses_the_damaged_pngs_of_the_corpus(name):
    with pytest.raises(ChunkError, match="truncated"):
        read_png((HOSTILE / name).read_bytes())


def ihdr(width: int = 1, height: int = 1) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT, IEND = chunk(b"IDAT", zlib.compress(b"\0\0")), chunk(b"IEND", b"")


@pytest.mark.parametrize(("data", "words"), [
    (b"GIF89a" + SMALL[6:], "not a PNG"),
    (b"", "not a PNG"),
    (SIGNATURE + IDAT + ihdr() + IEND, "not a valid IHDR"),                        # IHDR not first
    (SIGNATURE + chunk(b"IHDR", b"\0" * 12) + IDAT + IEND, "not a valid IHDR"),   # IHDR of the wrong length
    (SIGNATURE + ihdr()[:-1] + b"\0" + IDAT + IEND, "checksum"),                  # IHDR's CRC is wrong
    (SIGNATURE + ihdr() + struct.pack(">I4s", 0xFFFFFFF0, b"IDAT") + b"\0" * 16, "truncated"),   # a lying length
    (SIGNATURE + ihdr() + struct.pack(">I4s", 0x80000000, b"tEXt") + b"\0" * 16, "truncated"),
    (SIGNATURE + ihdr() + IDAT, "IEND"),                                            # no IEND
    (SIGNATURE + ihdr() + IDAT + IEND[:-2], "truncated"),
])
def test_read_png_refuses_lying_and_broken_chunk_structure(data, words):
    with pytest.raises(ChunkError, match=words):
        read_png(data)


def test_a_chunk_error_is_a_value_error():
    assert issubclass(ChunkError, ValueError)


def test_what_follows_iend_is_ignored():
    assert read_png(SMALL + b"trailing garbage" * 100) == read_png(SMALL)


# ---- clean_png

@pytest.mark.parametrize("name", [n for n in REAL_PNGS if not read_png((REAL / n).read_bytes()).animated])
def test_clean_png_keeps_the_still_image_of_each_real_png(name):
    data = (REAL / name).read_bytes()
    clean = clean_png(data)
    assert set(kinds(clean)) <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
    assert kinds(clean)[0] == b"IHDR" and kinds(clean)[-1] == b"IEND"
    assert np.array_equal(decoded(clean), decoded(data))


def test_clean_png_drops_text_metadata_and_animation_and_keeps_palette_and_transparency():
    head = SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 3, 0, 0, 0))
    palette, alpha = chunk(b"PLTE", b"\0\0\0\xff\0\0"), chunk(b"tRNS", b"\0")
    pixels = chunk(b"IDAT", zlib.compress(b"\0\0\1\0\1\0"))
    frame = struct.pack(">IIIIIHHBB", 0, 2, 2, 0, 0, 1, 10, 0, 0)
    data = (head + chunk(b"tEXt", b"Comment\0<script>alert(1)</script>") + palette + alpha
            + chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\0") + chunk(b"acTL", struct.pack(">II", 2, 0))
            + chunk(b"fcTL", frame) + pixels + chunk(b"fcTL", frame) + chunk(b"fdAT", b"\0\0\0\2" + pixels[8:-4])
            + chunk(b"zTXt", b"k\0\0" + zlib.compress(b"x" * 1000)) + chunk(b"eXIf", b"second")
            + chunk(b"prVt", b"private") + IEND)
    assert read_png(data).animated and read_png(data).exif == b"MM\0*\0\0\0\x08\0\0"
    plain = head + palette + alpha + pixels + IEND
    assert clean_png(data) == plain
    assert decoded(plain).shape == (2, 2, 4)


def test_clean_png_keeps_the_default_image_of_an_animated_png():
    # OpenCV's own APNG reading of this file gives black; the still image is the red first frame.
    clean = decoded(clean_png((REAL / "pil_mode_16bit.png").read_bytes()))
    with Image.open(REAL / "pil_mode_16bit.png") as image:
        first = np.asarray(image.convert("RGBA"))
    assert clean.dtype == np.uint16
    assert np.array_equal(cv2.cvtColor((clean >> 8).astype(np.uint8), cv2.COLOR_BGRA2RGBA), first)


def test_clean_png_of_a_truncated_png_is_a_chunk_error():
    with pytest.raises(ChunkError):
        clean_png(SMALL[:-5])


# ---- webp_is_lossy

@pytest.mark.parametrize(("name", "lossy"), [("pil_flower.webp", True), ("pil_hopper_orientation_6.webp", True),
                                             ("pil_iss634.webp", False)])
def test_webp_is_lossy_on_the_real_webps(name, lossy):
    assert webp_is_lossy((REAL / name).read_bytes()) is lossy


@pytest.mark.parametrize("lossless", [False, True])
@pytest.mark.parametrize("kind", ["plain", "alpha", "animated"])
def test_webp_is_lossy_as_written(kind, lossless):
    mode = "RGB" if kind == "plain" else "RGBA"
    frames = [Image.new(mode, (16, 16), (40 * i, 90, 10, 128)[:len(mode)]) for i in range(3)]
    params = {"save_all": True, "append_images": frames[1:]} if kind == "animated" else {}
    data = encode(frames[0], "WEBP", lossless=lossless, **params)
    assert webp_is_lossy(data) is (not lossless)


def test_webp_is_lossy_never_raises_on_truncated_or_lying_files():
    data = (REAL / "pil_iss634.webp").read_bytes()[:400]
    for end in range(len(data)):
        assert webp_is_lossy(data[:end]) in (True, False)
    lying = data[:12] + b"VP8X" + struct.pack("<I", 0xFFFFFFFF) + data[20:]
    assert webp_is_lossy(lying) in (True, False)


# ---- bmp_rle_problem

def rle8_bmp(width: int, height: int, pixels: bytes) -> bytes:
    """An 8-bit RLE BMP with a two-colour palette and the given RLE pixel data."""
    offset = 14 + 40 + 8
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 2, 0)
    palette = b"\0\0\0\0\xff\xff\xff\0"
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + palette + pixels


def test_a_sound_rle_bmp_has_no_problem_and_decodes():
    data = rle8_bmp(4, 2, b"\x04\x01\x00\x00" + b"\x00\x04\x00\x01\x01\x00\x00\x00" + b"\x00\x01")
    assert bmp_rle_problem(data) is None
    assert decoded(data).shape[:2] == (2, 4)


@pytest.mark.parametrize(("pixels", "words"), [
    (b"\x09\x01\x00\x00\x00\x01", "past the end of row 1"),              # a run longer than the row
    (b"\x00\x06\x01\x01\x01\x01\x01\x01\x00\x01", "past the end of row 1"),   # literal pixels past the row
    (b"\x00\x00" * 4 + b"\x00\x01", "past the last row"),
    (b"\x00\x02\x00\x09\x00\x01", "past the last row"),                  # a move below the image
    (b"\x04\x01\x00\x00", "truncated"),                                  # no end-of-bitmap code
    (b"", "truncated"),
])
def test_rle_data_that_overruns_the_image_or_ends_early_is_named(pixels, words):
    problem = bmp_rle_problem(rle8_bmp(4, 2, pixels))
    assert problem is not None and words in problem


@pytest.mark.parametrize("name", ["bmpsuite_bad_badrle.bmp", "hopper_rle8_row_overflow.bmp"])
def test_the_corpus_bad_rle_bmps_are_found(name):
    assert "RLE" in bmp_rle_problem((HOSTILE / name).read_bytes())


@pytest.mark.parametrize("name", ["pil_hopper.bmp", "pil_pal8.bmp", "pil_rgb24.bmp"])
def test_uncompressed_bmps_are_not_rle(name):
    assert bmp_rle_problem((REAL / name).read_bytes()) is None


@pytest.mark.parametrize("data", [SMALL, b"BM", b"", rle8_bmp(4, 2, b"\x00\x01")[:33]],
                         ids=["png", "BM", "empty", "short"])
def test_what_is_not_a_whole_bmp_header_is_no_rle_problem(data):
    assert bmp_rle_problem(data) is None
