"""Colour management: a result looks as its source does in a colour-managed viewer (profile to sRGB).

The viewer is Pillow's ImageCms (LittleCMS through another binding than pixmill's), and the inputs
are built here from photos in tests/data with profiles taken from them (Adobe RGB from sk_rocket.jpg)
or made by LittleCMS from their primaries (Display P3, linear Rec.2020).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageCms

from pixmill.imaging import codec, color
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process

REAL = Path(__file__).parents[1] / "data" / "real"
D65 = [0.3127, 0.3290]
P3 = imagecodecs.cms_profile("rgb", whitepoint=D65, primaries=[0.680, 0.320, 0.265, 0.690, 0.150, 0.060],
                             gamma=2.2)
REC2020_LINEAR = imagecodecs.cms_profile("rgb", whitepoint=D65,
                                         primaries=[0.708, 0.292, 0.170, 0.797, 0.131, 0.046], gamma=1.0)
CMYK_ICC = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")
ADOBE = Image.open(REAL / "sk_rocket.jpg").info["icc_profile"]
SRGB = ImageCms.createProfile("sRGB")
IDENTITY = parse_pipeline("resize(scale=1.0)")


def viewer(data: bytes) -> np.ndarray:
    """What a colour-managed viewer shows of an encoded image: its pixels through its profile to sRGB, as RGB."""
    im = Image.open(io.BytesIO(data))
    im.load()
    icc = im.info.get("icc_profile")
    if im.mode == "CMYK" and not icc:
        return np.asarray(im.convert("RGB"))
    if icc:
        im = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), SRGB,
                                       outputMode="RGB")
    return np.asarray(im.convert("RGB"))


def in_profile(icc: bytes, fmt: str, **params) -> bytes:
    """sk_chelsea's sRGB pixels converted into the profile's space and saved with it embedded."""
    source = Image.open(REAL / "sk_chelsea.png").convert("RGB")
    converted = ImageCms.profileToProfile(source, SRGB, ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    buffer = io.BytesIO()
    converted.save(buffer, fmt, icc_profile=icc, **params)
    return buffer.getvalue()


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


CASES = {
    "adobe-rgb-jpeg": lambda: (REAL / "sk_rocket.jpg").read_bytes(),
    "display-p3-jpeg": lambda: in_profile(P3, "JPEG", quality=95),
    "display-p3-png": lambda: in_profile(P3, "PNG"),
    "linear-rec2020-png": lambda: in_profile(REC2020_LINEAR, "PNG"),
    "adobe-rgb-webp": lambda: in_profile(ADOBE, "WEBP", lossless=True),
    "adobe-rgb-tiff": lambda: in_profile(ADOBE, "TIFF"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg", "webp", "avif"])
def test_a_profiled_input_comes_out_as_a_colour_managed_viewer_shows_it(case, fmt):
    data = CASES[case]()
    result = process(data, IDENTITY, Output(fmt, quality=95))
    lossy = fmt in ("jpeg", "webp", "avif")
    assert mean_difference(viewer(result.data), viewer(data)) <= (3.0 if lossy else 2.0)
    assert any("converted from" in note and "to sRGB" in note for note in result.notes), result.notes
    assert not Image.open(io.BytesIO(result.data)).info.get("icc_profile")


def test_without_conversion_the_linear_png_would_be_far_off():
    # the measurement: a linear Rec.2020 PNG taken as sRGB is off by tens of levels
    data = CASES["linear-rec2020-png"]()
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert mean_difference(raw, viewer(data)) > 20


def test_keep_processes_in_the_source_space_and_embeds_its_profile():
    data = CASES["display-p3-png"]()
    result = process(data, IDENTITY, Output("png", color="keep"))
    out = Image.open(io.BytesIO(result.data))
    assert out.info["icc_profile"] == P3
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert mean_difference(viewer(result.data), viewer(data)) <= 0.01
    assert any("kept in" in note for note in result.notes)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "tiff", "avif"])
def test_keep_embeds_the_profile_in_every_output_format(fmt):
    result = process((REAL / "sk_rocket.jpg").read_bytes(), IDENTITY, Output(fmt, quality=95, color="keep"))
    assert Image.open(io.BytesIO(result.data)).info["icc_profile"] == ADOBE
    assert mean_difference(viewer(result.data), viewer((REAL / "sk_rocket.jpg").read_bytes())) <= 3.0


def test_a_16_bit_input_keeps_16_bits_through_the_conversion():
    source = cv2.imread(str(REAL / "pil_tiff_16bit_RGB.tiff"), cv2.IMREAD_UNCHANGED)
    ok, png = cv2.imencode(".png", source)
    data = codec.encode(source, "png", profile=color.read_profile(P3))[0]
    assert ok and Image.open(io.BytesIO(data)).info["icc_profile"] == P3
    result = process(data, IDENTITY, Output("png"))
    out = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and len(np.unique(out)) > 256
    # the 8-bit view of the 16-bit result matches the viewer's 8-bit conversion of the source's top bytes
    top = Image.fromarray(cv2.cvtColor((source >> 8).astype(np.uint8), cv2.COLOR_BGR2RGB))
    expected = np.asarray(ImageCms.profileToProfile(top, ImageCms.ImageCmsProfile(io.BytesIO(P3)), SRGB))
    assert mean_difference(cv2.cvtColor(out, cv2.COLOR_BGR2RGB) / 257.0, expected) <= 2.0


def test_alpha_passes_through_the_conversion_unchanged():
    rgba = Image.open(REAL / "sk_horse.png").convert("RGBA")
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG", icc_profile=P3)
    result = process(buffer.getvalue(), IDENTITY, Output("png"))
    out = Image.open(io.BytesIO(result.data))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(rgba)[..., 3])


def cmyk_jpeg(**params) -> bytes:
    buffer = io.BytesIO()
    Image.open(REAL / "sk_rocket.jpg").convert("CMYK").save(buffer, "JPEG", quality=95, **params)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["pil_pil_sample_cmyk.jpg", "made"])
def test_a_cmyk_jpeg_without_a_profile_comes_out_as_browsers_show_it(name):
    data = (REAL / name).read_bytes() if name != "made" else cmyk_jpeg()
    assert b"Adobe" in data[:512]                 # Adobe's APP14 marker: the inks are stored inverted
    result = process(data, IDENTITY, Output("png"))
    assert mean_difference(viewer(result.data), viewer(data)) <= 2.0
    assert any("CMYK converted to sRGB" in note for note in result.notes)


def without_app14(jpeg: bytes) -> bytes:
    """The JPEG with Adobe's APP14 marker cut out: inverted inks that no marker announces."""
    at = 2
    while jpeg[at + 1] != 0xEE:
        at += 2 + struct.unpack(">H", jpeg[at + 2:at + 4])[0]
    return jpeg[:at] + jpeg[at + 2 + struct.unpack(">H", jpeg[at + 2:at + 4])[0]:]


def test_a_cmyk_jpeg_without_app14_is_read_as_browsers_read_it():
    data = without_app14(cmyk_jpeg())
    result = process(data, IDENTITY, Output("png"))
    assert mean_difference(viewer(data), viewer(cmyk_jpeg())) <= 1.0
    assert mean_difference(viewer(result.data), viewer(data)) <= 2.0


def cmyk_profile() -> bytes:
    """Ghostscript's SWOP profile, from Debian's libgs-common (make test installs it)."""
    assert CMYK_ICC.exists(), f"{CMYK_ICC} is missing: `make color-deps` installs Debian's libgs-common"
    return CMYK_ICC.read_bytes()


@pytest.mark.parametrize("app14", [True, False], ids=["adobe", "no-app14"])
def test_a_cmyk_jpeg_with_a_profile_is_converted_through_it(app14):
    icc = cmyk_profile()
    source = Image.open(REAL / "sk_chelsea.png").convert("RGB")
    ink = ImageCms.profileToProfile(source, SRGB, ImageCms.ImageCmsProfile(io.BytesIO(icc)), outputMode="CMYK")
    buffer = io.BytesIO()
    ink.save(buffer, "JPEG", quality=95, icc_profile=icc)
    data = buffer.getvalue() if app14 else without_app14(buffer.getvalue())
    result = process(data, IDENTITY, Output("png"))
    shown = viewer(data)
    assert mean_difference(viewer(result.data), shown) <= 2.0
    assert mean_difference(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), shown) > 8   # naive is wrong
    assert any("CMYK converted to sRGB through its profile (Artifex CMYK SWOP Profile)" in note
               for note in result.notes), result.notes


def test_a_damaged_profile_is_noted_and_the_image_still_processed():
    image = Image.open(REAL / "sk_chelsea.png").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", icc_profile=b"acsp" * 40)
    result = process(buffer.getvalue(), IDENTITY, Output("png"))
    assert any("cannot be read" in note for note in result.notes)


def test_an_srgb_profile_is_not_converted():
    result = process((REAL / "sk_chelsea.png").read_bytes(), IDENTITY, Output("png"))
    assert not any("converted" in note for note in result.notes)
    source = np.asarray(Image.open(REAL / "sk_chelsea.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.data)).convert("RGB")), source)
