"""HEIC (libheif through pillow-heif) and AVIF (Pillow's libavif) in and out: detection by ftyp brands,
the pixel limit from the ispe boxes, orientation, metadata stripped, round trips through every output."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from pixmill.errors import CorruptImage, ImageTooLarge
from pixmill.imaging import codec, containers
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import OUTPUT_FORMATS, Output, process
from support import heif

REAL = Path(__file__).parents[1] / "data" / "real"
LIMIT = 100_000_000
IDENTITY = parse_pipeline("resize(scale=1.0)")


def photo() -> Image.Image:
    return Image.open(REAL / "pil_flower.jpg").convert("RGB")       # 480×360


def heic(image: Image.Image | None = None, **params) -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image or photo()).save(buffer, quality=92, **params)
    return buffer.getvalue()


def avif(image: Image.Image | None = None, **params) -> bytes:
    buffer = io.BytesIO()
    (image or photo()).save(buffer, "AVIF", quality=92, **params)
    return buffer.getvalue()


def rgb(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data)) if not data[4:8] == b"ftyp" or codec.sniff(data) == "avif" \
        else pillow_heif.open_heif(io.BytesIO(data)).to_pillow()
    return np.asarray(im.convert("RGB")).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a.astype(np.float64), b.astype(np.float64), 255.0))


MAKERS = {"heic": heic, "avif": avif}


@pytest.mark.parametrize("source", sorted(MAKERS))
def test_sniff_knows_the_format_by_its_brands(source):
    assert codec.sniff(MAKERS[source]()) == source


def test_sniff_reads_compatible_brands_after_a_generic_major_brand():
    box = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"mif1", 0, b"mif1", b"avif")
    assert codec.sniff(box + b"\0" * 16) == "avif"
    box = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"mif1", 0, b"mif1", b"heic")
    assert codec.sniff(box + b"\0" * 16) == "heic"


@pytest.mark.parametrize("source", sorted(MAKERS))
@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_a_round_trip_through_every_output_format(source, fmt):
    data = MAKERS[source]()
    result = process(data, IDENTITY, Output(fmt, quality=92))
    expected = {"auto": "jpeg" if source == "heic" else "avif"}.get(fmt, fmt)
    assert result.format == expected
    assert (result.width, result.height) == (480, 360)
    assert codec.sniff(result.data) == expected
    assert psnr(rgb(result.data), np.asarray(photo())) > 28


@pytest.mark.parametrize("source", sorted(MAKERS))
def test_orientation_is_applied_once(source):
    exif = Image.Exif()
    exif[0x0112] = 6                                   # rotate 90° clockwise to display
    data = MAKERS[source](exif=exif.tobytes())
    result = process(data, IDENTITY, Output("png"))
    assert (result.width, result.height) == (360, 480)
    upright = photo().transpose(Image.Transpose.ROTATE_270)
    assert psnr(rgb(result.data), np.asarray(upright)) > 28


@pytest.mark.parametrize("source", sorted(MAKERS))
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff", "avif"])
def test_metadata_and_gps_are_stripped_from_outputs(source, fmt):
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 24.0)      # GPSLatitude
    data = MAKERS[source](exif=exif.tobytes())
    result = process(data, IDENTITY, Output(fmt))
    out = Image.open(io.BytesIO(result.data))
    exif = out.getexif()                     # for a TIFF, its own tags: none of the source's may be there
    assert 0x010F not in exif and 0x8825 not in exif and not out.info.get("xmp")
    assert b"PhoneMaker" not in result.data


def test_a_16_bit_heic_keeps_its_depth_in_a_png():
    pixels = (np.asarray(photo()).astype(np.uint16) * 257)
    buffer = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(480, 360), data=pixels.tobytes()).save(buffer, quality=-1)
    result = process(buffer.getvalue(), IDENTITY, Output("png"))
    out = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16
    assert psnr(cv2.cvtColor(out, cv2.COLOR_BGR2RGB) / 257.0, np.asarray(photo())) > 35


def test_alpha_survives_from_avif_to_png():
    rgba = Image.open(REAL / "sk_horse.png").convert("RGBA")
    result = process(avif(rgba), IDENTITY, Output("png"))
    assert Image.open(io.BytesIO(result.data)).mode == "RGBA"


@pytest.mark.parametrize("source", sorted(MAKERS))
def test_a_dimension_bomb_in_the_ispe_box_is_refused_from_the_header(source):
    data = heif.patched_ispe(MAKERS[source](), 60000, 60000)
    with pytest.raises(ImageTooLarge, match="60000×60000 is 3600.0 MP, over the 100 MP limit"):
        codec.probe(data, max_pixels=LIMIT)


@pytest.mark.parametrize("source", sorted(MAKERS))
@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_a_truncated_file_is_a_clear_error(source, cut):
    data = MAKERS[source]()
    with pytest.raises(CorruptImage, match="truncated|damaged"):
        process(data[:int(len(data) * cut)], IDENTITY, Output("png"))


@pytest.mark.parametrize("source", sorted(MAKERS))
def test_a_lying_header_is_a_clear_error(source):
    data = heif.patched_ispe(MAKERS[source](), 240, 180)
    try:
        result = process(data, IDENTITY, Output("png"))
    except (CorruptImage, ImageTooLarge) as exc:
        assert source.upper() in exc.message or "limit" in exc.message
    else:   # libavif scales the coded picture to the ispe size: then it must be the whole picture, not a part
        assert (result.width, result.height) == (240, 180)
        assert psnr(rgb(result.data), np.asarray(photo().resize((240, 180)))) > 28


def tile(source: str, side: int = 64) -> bytes:
    return MAKERS[source](Image.new("RGB", (side, side), (200, 100, 50)))


@pytest.mark.parametrize("source", sorted(MAKERS))
def test_a_grid_image_is_decoded_whole(source):
    data = heif.grid(tile(source), 5, 3)                      # 320×192, as a phone writes a large photo
    assert containers.read_heif(data).derived_refs == 15
    result = process(data, IDENTITY, Output("png"))
    assert (result.width, result.height) == (320, 192) and result.notes == ()
    assert np.abs(rgb(result.data) - (200, 100, 50)).mean() <= 3


@pytest.mark.parametrize("source", sorted(MAKERS))
def test_a_grid_of_too_many_tiles_is_refused_before_decoding(source):
    data = heif.grid(tile(source), 100, 50)
    assert containers.read_heif(data).items == 5001
    with pytest.raises(ImageTooLarge, match=r"holds 5001 images \(6400×3200 is 20.5 MP, a grid of 5000 tiles\), "
                                            r"over the limit of 1000 images in a file"):
        codec.probe(data, max_pixels=LIMIT)


def test_grid_tiles_that_do_not_cover_the_image_are_a_clear_error():
    with pytest.raises(CorruptImage, match="HEIC data is damaged.*do not cover"):
        process(heif.grid(tile("heic"), 8, 8, 2000, 2000), IDENTITY, Output("png"))


def test_auto_turns_heic_into_jpeg_and_keeps_avif():
    assert codec.output_format("auto", "heic") == "jpeg"
    assert codec.output_format("auto", "avif") == "avif"
    assert codec.output_format("auto", "png", accept=("avif", "webp")) == "avif"
