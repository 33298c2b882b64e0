"""Colour management: bring an image with an embedded ICC profile into sRGB, or keep its profile.

An operation and an encoder know nothing of colour spaces, so by default every image is converted
to sRGB when it is decoded: the result then looks the same in any viewer, colour-managed or not.
With `keep`, pixels stay in the source's space and its profile goes into the output.  CMYK is
always converted, through its profile if it has one, else the way browsers show a CMYK JPEG
without one (each ink taken away from white).

The transforms run in LittleCMS through imagecodecs, which works on NumPy arrays of 8 or 16 bits
as they come from the decoder (Pillow's ImageCms holds 8-bit images only); Pillow's ImageCms
reads the profile's description.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import ImageCms

__all__ = ["COLOR_MODES", "Profile", "read_profile", "to_srgb", "cmyk_to_srgb"]

COLOR_MODES = ("srgb", "keep")
_SRGB_NAME = re.compile(r"\bsRGB\b", re.IGNORECASE)
_SPACES = {"RGB ": "rgb", "GRAY": "gray", "CMYK": "cmyk"}


@dataclass(frozen=True)
class Profile:
    """An embedded ICC profile: its bytes, its colour space (rgb, gray, cmyk or other) and its name."""

    data: bytes
    space: str
    name: str

    @property
    def is_srgb(self) -> bool:
        """Whether the profile calls itself sRGB: converting would change nothing but rounding."""
        return self.space == "rgb" and bool(_SRGB_NAME.search(self.name))


def read_profile(data: bytes | None) -> Profile | None:
    """The profile in data, or None if there is none or LittleCMS cannot read it."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = ImageCms.ImageCmsProfile(io.BytesIO(data))
            name = (ImageCms.getProfileDescription(parsed) or "").strip() or "unnamed profile"
            space = _SPACES.get(parsed.profile.xcolor_space, "other")
    except Exception:
        return None
    return Profile(data, space, name[:80])


def to_srgb(image: np.ndarray, profile: Profile) -> tuple[np.ndarray, str | None]:
    """The image (OpenCV layout: gray, BGR or BGRA; 8 or 16 bits) converted from profile to sRGB, and a
    note; an image whose channels do not fit the profile's space is returned as it is, with a note."""
    gray = image.ndim == 2
    if profile.is_srgb:
        return image, None
    if profile.space != ("gray" if gray else "rgb"):
        kind = "gray" if gray else "colour"
        return image, (f"the embedded ICC profile ({profile.name}) is for {profile.space} "
                       f"and the image is {kind}: ignored")
    colour, alpha = (image, None) if gray or image.shape[2] == 3 else (image[..., :3], image[..., 3])
    converted = imagecodecs.cms_transform(np.ascontiguousarray(colour), profile.data, _srgb(),
                                          colorspace="gray" if gray else "bgr", outcolorspace="bgr",
                                          outdtype=image.dtype)
    if gray:
        converted = converted[..., 1]            # a gray profile's neutral axis maps to R = G = B
    elif alpha is not None:
        converted = np.dstack([converted, alpha])
    return converted, f"colours converted from {profile.name} to sRGB"


def cmyk_to_srgb(ink: np.ndarray, profile: Profile | None) -> tuple[np.ndarray, str]:
    """A CMYK image (ink amounts, 0 = none) as BGR in sRGB: through its profile, or naively without one."""
    if profile is not None and profile.space == "cmyk":
        bgr = imagecodecs.cms_transform(np.ascontiguousarray(ink), profile.data, _srgb(),
                                        colorspace="cmyk", outcolorspace="bgr", outdtype=np.uint8)
        return bgr, f"CMYK converted to sRGB through its profile ({profile.name})"
    white = 255.0 - ink[..., 3:4].astype(np.float32)
    rgb = (255.0 - ink[..., :3].astype(np.float32)) * white / 255.0
    bgr = np.ascontiguousarray(np.rint(rgb[..., ::-1]).astype(np.uint8))
    return bgr, "CMYK converted to sRGB without a profile (each ink taken from white, as browsers do)"


@functools.cache
def _srgb() -> bytes:
    return imagecodecs.cms_profile("srgb")
