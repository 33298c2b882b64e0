"""Hostile inputs, after the corpus's make_hostile.py, and a checker that runs one file in a fresh process.

`generate(outdir)` writes the same 27 files (names and kinds of content) as
../shared/corpus/make_hostile.py, plus EXTRA_NAMES, so the suite runs on a clone without ../shared.  The slow ones
are built more cheaply but stay as hostile: the big deflate streams repeat one compressed block
(each ends with a full flush, so the next starts afresh), and the 5000-frame GIF repeats frames
Pillow encoded once.

`python hostile.py check FILE [--pipeline P] [--max-pixels N] [--format F]` runs pixmill's
`process()` on FILE under a 2 GiB address-space allowance and prints one line of JSON saying what
happened, how long it took and the peak memory used.  The tests run it as a subprocess, so a file
that crashes or hangs the interpreter fails only its own test.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["NAMES", "EXTRA_NAMES", "generate", "check", "png", "chunk"]

NAMES = (
    "truncated_half.jpg", "truncated_header.jpg", "zero_bytes.jpg", "zero_bytes.png", "text_named.jpg",
    "png_content_named.jpg", "trailing_garbage.jpg", "png_bad_crc.png",
    "png_bomb_header_only.png", "png_bomb_1bit_65535x65535.png", "jpeg_sof_65500x65500.jpg",
    "gif_screen_65535.gif", "svg_script_named.png", "svg_script.svg", "svg_xxe.svg", "html_script_named.png",
    "polyglot_gif_js.gif", "polyglot_jpeg_zip.jpg", "png_html_in_text.png", "gif_5000_frames.gif",
    "exif_64k.jpg", "exif_16mb.png", "ztxt_bomb.png",
    "solid_16384.png", "solid_16384.jpg", "aspect_1x65500.png", "noise_12mp.png",
)
# Beyond make_hostile.py: half a JPEG with an end-of-image marker put back (libjpeg fills the rest
# with grey and only warns), and APNGs whose default image is outside the animation and whose first
# fdAT chunk is damaged (OpenCV 5.0.0's imdecode dies with SIGSEGV on the bad type; found by fuzzing).
# And a 16-bit RGBA PNG of exactly 100 MP: legal at the default limit, 1 MB on disk, 800 MB decoded.
# And HEIC and AVIF files (support/heif.py): truncated, headers (ispe) that lie or claim 60000×60000,
# grids of 5000 tiles or with tiles that do not cover the image, and a legal 94.6 MP grid.
EXTRA_NAMES = ("truncated_half_eoi.jpg", "apng_bad_fdat_crc.png", "apng_bad_fdat_type.png", "rgba16_100mp.png",
               "heic_truncated_half.heic", "heic_truncated_meta.heic", "avif_truncated_half.avif",
               "heic_ispe_60000.heic", "avif_ispe_60000.avif", "heic_ispe_smaller.heic", "heic_ispe_larger.heic",
               "avif_ispe_smaller.avif", "heic_grid_5000_tiles.heic", "avif_grid_5000_tiles.avif",
               "heic_grid_uncovered.heic", "heic_grid_94mp.heic")
GIB = 1 << 30
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(document.domain)">'
       b'<script>alert(1)</script></svg>')


def generate(outdir: Path) -> list[Path]:
    """Write every hostile input into outdir and return their paths, in the order of NAMES + EXTRA_NAMES."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seed = _encode(Image.fromarray(rng.integers(0, 255, (480, 640, 3), np.uint8)), "JPEG", quality=90)
    small = _encode(Image.new("RGB", (64, 64), "red"), "PNG")
    files: dict[str, bytes] = {}
    # truncation, empty files, content that is not what the name says
    files["truncated_half.jpg"] = seed[: len(seed) // 2]
    files["truncated_header.jpg"] = seed[:200]
    files["truncated_half_eoi.jpg"] = seed[: len(seed) // 2] + b"\xff\xd9"
    files["zero_bytes.jpg"] = files["zero_bytes.png"] = b""
    files["text_named.jpg"] = b"This is plain text, not a JPEG.\n" * 20
    files["png_content_named.jpg"] = small                       # the extension lies, the content is valid
    files["trailing_garbage.jpg"] = seed + rng.bytes(1 << 20)
    bad = bytearray(small)
    bad[29] ^= 0xFF                                               # inside the IHDR CRC
    files["png_bad_crc.png"] = bytes(bad)
    # decompression bombs: huge dimensions in tiny files
    files["png_bomb_header_only.png"] = png(100_000, 100_000, 8, 0, zlib.compress(b"\0" * 100_001))
    files["png_bomb_1bit_65535x65535.png"] = png(65535, 65535, 1, 0, _zlib_repeat(b"\0" * (1 + 8192) * 257, 255))
    files["jpeg_sof_65500x65500.jpg"] = _jpeg_with_size(seed, 65500, 65500)
    files["gif_screen_65535.gif"] = (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x80\0\0\0\0\0\xff\xff\xff"
                                     + b",\0\0\0\0" + struct.pack("<HH", 65535, 65535) + b"\0\x02\x02\x44\x01\0;")
    # script and markup disguised as images
    files["svg_script_named.png"] = files["svg_script.svg"] = SVG
    files["svg_xxe.svg"] = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                            b'<svg xmlns="http://www.w3.org/2000/svg"><text y="20">&x;</text></svg>')
    files["html_script_named.png"] = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
    # polyglots: a valid 10799×1 GIF that is also JavaScript, a JPEG that is also a ZIP, HTML in a PNG text chunk
    gif1 = b"\x01\x00\x80\x00\x00" + b"\0\0\0\xff\xff\xff" + b",\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0;"
    files["polyglot_gif_js.gif"] = b"GIF89a/*" + gif1 + b"*/=alert(1);"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil.html", "<script>alert(1)</script>")
    files["polyglot_jpeg_zip.jpg"] = seed + archive.getvalue()
    files["png_html_in_text.png"] = png(1, 1, 8, 0, zlib.compress(b"\0\0"), chunk(
        b"tEXt", b"Comment\0<script>alert(1)</script><?php system($_GET['c']); ?>"))
    # 5000 frames of 400×400: about 3 GB if a decoder expands every frame to RGBA
    files["gif_5000_frames.gif"] = _gif_frames(5000, 400)
    # giant metadata
    exif = Image.Exif()
    exif[0x010E] = "A" * 65000                                    # ImageDescription
    files["exif_64k.jpg"] = _encode(Image.open(io.BytesIO(seed)), "JPEG", exif=exif.tobytes())
    exif = Image.Exif()
    exif[0x010E] = "B" * (16 << 20)
    exif[0x0112] = 6
    files["exif_16mb.png"] = _encode(Image.new("RGB", (32, 32)), "PNG", exif=exif.tobytes())
    files["ztxt_bomb.png"] = png(1, 1, 8, 0, zlib.compress(b"\0\0"),
                                  chunk(b"zTXt", b"k\0\0" + _zlib_repeat(b"x" * (1 << 20), 256)))
    # big but legal
    files["solid_16384.png"] = png(16384, 16384, 8, 2, _zlib_repeat((b"\0" + b"\x00\x80\xff" * 16384) * 256, 64))
    solid = Image.new("RGB", (16384, 16384), (0, 128, 255))
    files["solid_16384.jpg"] = _encode(solid, "JPEG", quality=75)
    del solid
    files["aspect_1x65500.png"] = _encode(Image.new("L", (1, 65500), 128), "PNG")
    noise = rng.integers(0, 255, (3000, 4000, 3), np.uint8)     # about 36 MB: incompressible
    rows = np.concatenate([np.zeros((3000, 1), np.uint8), noise.reshape(3000, -1)], axis=1)
    files["noise_12mp.png"] = png(4000, 3000, 8, 2, zlib.compress(rows.tobytes(), 1))
    apng = _apng_default_outside(8, 8)
    at = apng.find(b"fdAT")
    length = struct.unpack(">I", apng[at - 4:at])[0]
    files["apng_bad_fdat_crc.png"] = apng[:at + 4 + length] + b"\0\0\0\0" + apng[at + 8 + length:]
    files["apng_bad_fdat_type.png"] = apng[:at + 3] + b"\x81" + apng[at + 4:]
    row = b"\0" + b"\x12\x34\x56\x78\x9a\xbc\xff\xff" * 10_000
    files["rgba16_100mp.png"] = png(10_000, 10_000, 16, 6, _zlib_repeat(row * 50, 200))
    files.update(_heif_files(Image.fromarray(rng.integers(0, 255, (480, 640, 3), np.uint8))))
    paths = []
    for name in NAMES + EXTRA_NAMES:
        path = outdir / name
        path.write_bytes(files[name])
        paths.append(path)
    return paths


def _heif_files(photo: Image.Image) -> dict[str, bytes]:
    from . import heif  # imported here: the checker runs this file as a script, without the package

    heic, avif = heif.heic(photo), _encode(photo, "AVIF", quality=80)
    tile, avif_tile = heif.heic(Image.new("RGB", (64, 64), (200, 100, 50))), _encode(
        Image.new("RGB", (64, 64), (200, 100, 50)), "AVIF", quality=80)
    return {
        "heic_truncated_half.heic": heic[:len(heic) // 2],
        "heic_truncated_meta.heic": heic[:heic.find(b"iprp")],
        "avif_truncated_half.avif": avif[:len(avif) // 2],
        "heic_ispe_60000.heic": heif.patched_ispe(heic, 60000, 60000),
        "avif_ispe_60000.avif": heif.patched_ispe(avif, 60000, 60000),
        "heic_ispe_smaller.heic": heif.patched_ispe(heic, 320, 240),
        "heic_ispe_larger.heic": heif.patched_ispe(heic, 1280, 960),
        "avif_ispe_smaller.avif": heif.patched_ispe(avif, 320, 240),
        "heic_grid_5000_tiles.heic": heif.grid(tile, 100, 50),
        "avif_grid_5000_tiles.avif": heif.grid(avif_tile, 100, 50),
        "heic_grid_uncovered.heic": heif.grid(tile, 8, 8, 2000, 2000),
        "heic_grid_94mp.heic": heif.grid(heif.heic(Image.new("RGB", (512, 512), (200, 100, 50))), 19, 19),
    }


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, color: int, idat: bytes, extra: bytes = b"") -> bytes:
    """A PNG of one IDAT chunk with the given header, and extra chunks before the IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _apng_default_outside(width: int, height: int) -> bytes:
    """A gray APNG whose IDAT default image is not a frame, followed by two fcTL + fdAT frames."""
    pixels = zlib.compress(b"".join(b"\0" + bytes([row * 16 % 256]) * width for row in range(height)))
    control = [chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, width, height, 0, 0, 1, 10, 0, 0)) for seq in (0, 2)]
    frames = [chunk(b"fdAT", struct.pack(">I", seq) + pixels) for seq in (1, 3)]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"acTL", struct.pack(">II", 2, 0))
            + chunk(b"IDAT", pixels) + control[0] + frames[0] + control[1] + frames[1] + chunk(b"IEND", b""))


def _zlib_repeat(unit: bytes, count: int) -> bytes:
    """A zlib stream of unit * count, compressing unit only once."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = squeeze.compress(unit) + squeeze.flush(zlib.Z_FULL_FLUSH)
    again = squeeze.compress(unit) + squeeze.flush(zlib.Z_FULL_FLUSH)
    assert again == block, "a full flush should make every block compress alike"
    end = squeeze.flush(zlib.Z_FINISH)
    checksum = 1
    for _ in range(count):
        checksum = zlib.adler32(unit, checksum)
    return b"\x78\xda" + block * count + end + struct.pack(">I", checksum)


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the size in its start-of-frame header replaced."""
    data, pos = bytearray(jpeg), 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    data[pos + 5:pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_frames(count: int, side: int) -> bytes:
    """An animated GIF of count solid side×side frames, frame i of palette index i % 256."""
    palette = bytes(range(256)) * 3
    frames = []
    for level in range(min(count, 256)):
        frame = Image.new("P", (side, side), level)
        frame.putpalette(palette)
        frames.append(_gif_image_block(_encode(frame, "GIF", optimize=False)))
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    delay = b"\x21\xf9\x04\x00\x01\x00\x00\x00"                   # 10 ms per frame
    body = b"".join(delay + frames[i % len(frames)] for i in range(count))
    return b"GIF89a" + struct.pack("<HHBBB", side, side, 0xF7, 0, 0) + palette + loop + body + b";"


def _gif_image_block(gif: bytes) -> bytes:
    """The image descriptor and its LZW data from a one-frame GIF that has a 256-colour global palette."""
    pos = 13 + 768
    while gif[pos] == 0x21:                                      # skip extensions
        pos += 2
        while gif[pos]:
            pos += 1 + gif[pos]
        pos += 1
    assert gif[pos] == 0x2C and not gif[pos + 9] & 0x80, "expected an image without a local palette"
    start, pos = pos, pos + 11
    while gif[pos]:
        pos += 1 + gif[pos]
    return gif[start:pos + 1]


def check(path: str, pipeline: str = "blur", *, max_pixels: int = 100_000_000, fmt: str = "auto") -> dict:
    """Process one file under a 2 GiB memory allowance; say what happened, how long it took and the peak memory."""
    import resource
    import time

    import cv2

    from pixmill.errors import PixmillError
    from pixmill.imaging.pipeline import parse_pipeline
    from pixmill.imaging.process import Output, process

    data = Path(path).read_bytes()
    steps = parse_pipeline(pipeline)
    cv2.GaussianBlur(np.zeros((64, 64), np.uint8), (5, 5), 0)    # start OpenCV's threads before measuring
    baseline = _address_space()
    resource.setrlimit(resource.RLIMIT_AS, (baseline + 2 * GIB, resource.RLIM_INFINITY))
    report: dict = {"file": Path(path).name, "baseline_vsz": baseline}
    started = time.perf_counter()
    try:
        result = process(data, steps, Output(format=fmt), max_pixels=max_pixels)
    except PixmillError as exc:
        report.update(outcome="error", error=type(exc).__name__, code=exc.code, message=exc.message)
        result = None
    except BaseException as exc:  # anything else is a bug the test reports
        report.update(outcome="other", error=type(exc).__name__, message=str(exc))
        result = None
    report["seconds"] = time.perf_counter() - started
    report["peak_rss"] = _peak_rss()
    if result is not None:
        report.update(outcome="ok", format=result.format, width=result.width, height=result.height,
                      notes=list(result.notes), **_inspect(result.data))
    return report


def _inspect(data: bytes) -> dict:
    """What a result's bytes decode to, and whether anything of the input's payload survived in them."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    lowered = data.lower()
    return {
        "decoded_shape": None if image is None else list(image.shape),
        "decoded_dtype": None if image is None else str(image.dtype),
        "channel_means": None if image is None else [float(m) for m in image.reshape(-1, image.shape[2]
                                                      if image.ndim == 3 else 1).mean(axis=0)],
        "markup": any(token in lowered for token in (b"<script", b"alert(", b"<?php", b"<html")),
        "zip": b"PK\x03\x04" in data,
        "exif": b"Exif\0\0" in data or b"eXIf" in data,
        "text_chunk": any(kind in data for kind in (b"tEXt", b"zTXt", b"iTXt")),
    }


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _address_space() -> int:
    """This process's virtual memory size in bytes."""
    import resource

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Run pixmill's process() on one file and print a JSON report.")
    parser.add_argument("command", choices=["check", "generate"])
    parser.add_argument("path")
    parser.add_argument("--pipeline", default="blur")
    parser.add_argument("--max-pixels", type=int, default=100_000_000)
    parser.add_argument("--format", default="auto")
    args = parser.parse_args(argv)
    if args.command == "generate":
        for path in generate(Path(args.path)):
            print(f"{path.stat().st_size:>11} {path.name}")
        return 0
    report = check(args.path, args.pipeline, max_pixels=args.max_pixels, fmt=args.format)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
