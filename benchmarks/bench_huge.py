"""One huge image across MPI workers: a tiled RGB TIFF (1 GP by default) through `blur(ksize=9)` to a tiled TIFF.

Measured in one run, best of the rounds, each a whole command: `pixmill run` with 2 workers and with 1;
the machine's ceiling, two one-thread loops at once (each in its own process over its half of the rows,
read with the same halo by the same tifffile reader, blurred by OpenCV, written as raw rows); and libvips (pyvips
from the pyvips-binary wheel, `gaussblur` of the same sigma, VIPS_CONCURRENCY=2, a tiled BigTIFF out).
Targets: pixmill on 2 workers >= 0.9 of the ceiling, and >= 1.0x libvips. Peak RSS of every process.
Sizes of 10 MP and more are huge here (`--max-pixels 10000000`), so a small run takes the same path.
Usage: python benchmarks/bench_huge.py [--side-x 40000 --side-y 25000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from common import environment  # noqa: E402

KSIZE = 9
SIGMA = 0.3 * ((KSIZE - 1) * 0.5 - 1) + 0.8   # what OpenCV derives for ksize 9 and sigma 0

LOOP = r"""
import sys, cv2
from pixmill.imaging.bigtiff import read_rows, tiff_info
cv2.setNumThreads(1)
path, out, first, last, halo = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
height = tiff_info(path).height
with open(out, "wb") as sink:
    for start in range(first, last, 512):
        stop = min(last, start + 512)
        top, bottom = max(0, start - halo), min(height, stop + halo)
        rows = cv2.GaussianBlur(read_rows(path, top, bottom), (9, 9), 0)
        sink.write(rows[start - top:start - top + stop - start].tobytes())
"""

VIPS = r"""
import sys, pyvips
image = pyvips.Image.new_from_file(sys.argv[1], access="sequential")
image.gaussblur(float(sys.argv[3]), precision="integer").tiffsave(sys.argv[2], tile=True, tile_width=256,
                                                                 tile_height=256, bigtiff=True)
"""


def make_input(path: Path, height: int, width: int) -> None:
    """A photo-like tiled RGB TIFF written tile by tile (never whole in memory), uncompressed."""
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    noise = [cv2.add(base, rng.integers(0, 40, base.shape, dtype=np.uint8)) for _ in range(16)]
    count = -(-height // 256) * -(-width // 256)
    tifffile.imwrite(path, (noise[i % 16] for i in range(count)), shape=(height, width, 3), dtype=np.uint8,
                     tile=(256, 256), photometric="rgb", bigtiff=True)


def watched(commands: list[list[str]], env: dict[str, str]) -> tuple[float, dict[str, int]]:
    """Run the commands at once; wall seconds until all ended, and the peak RSS of each of their processes."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    peaks: dict[str, int] = {}
    deadline = time.monotonic() + 3600
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for p in procs:
            try:
                root = psutil.Process(p.pid)
                for q in [root, *root.children(recursive=True)]:
                    role = f"{q.pid}:" + ("worker" if "mpi4py" in " ".join(q.cmdline()) else q.name())
                    with open(f"/proc/{q.pid}/status") as status:
                        hwm = next(int(x.split()[1]) * 1024 for x in status if x.startswith("VmHWM"))
                    peaks[role] = max(peaks.get(role, 0), hwm)
            except (psutil.Error, OSError, StopIteration):
                pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    for p in procs:
        if p.poll() is None:
            p.kill()
        _, err = p.communicate(timeout=60)
        if p.returncode:
            raise RuntimeError(f"{p.args} exited with {p.returncode}: {err.decode()[-1500:]}")
    return seconds, {k: v for k, v in peaks.items() if v > 20 << 20}


def run(height: int, width: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("PIXMILL_BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "huge.tif"
        make_input(source, height, width)
        env = environment()
        variants = {
            "pixmill2": [[sys.executable, "-m", "pixmill", "run", str(source), "-p", f"blur(ksize={KSIZE})",
                          "-o", str(tmp / "p2"), "-w", "2", "--max-pixels", "10000000"]],
            "pixmill1": [[sys.executable, "-m", "pixmill", "run", str(source), "-p", f"blur(ksize={KSIZE})",
                          "-o", str(tmp / "p1"), "-w", "1", "--max-pixels", "10000000"]],
            "ceiling": [[sys.executable, "-c", LOOP, str(source), str(tmp / f"loop{i}.raw"), str(first), str(last),
                         str(KSIZE // 2)] for i, (first, last) in enumerate([(0, height // 2), (height // 2, height)])],
            "vips": [[sys.executable, "-c", VIPS, str(source), str(tmp / "vips.tif"), str(SIGMA)]],
        }
        best: dict[str, float] = {}
        peaks: dict[str, dict[str, int]] = {}
        for _ in range(rounds):
            for name, commands in variants.items():
                seconds, peak = watched(commands, {**env, "VIPS_CONCURRENCY": "2"})
                if seconds < best.get(name, float("inf")):
                    best[name], peaks[name] = seconds, peak
                for leftover in tmp.glob("p*/*.tif"):
                    leftover.unlink()
    decoded = height * width * 3
    return {"height": height, "width": width, "megapixels": height * width / 1e6, "decoded_mb": decoded / 2**20,
            "seconds": best, "vs_ceiling": best["ceiling"] / best["pixmill2"], "vs_one_worker": best["pixmill1"] /
            best["pixmill2"], "vs_vips": best["vips"] / best["pixmill2"],
            "peak_rss_mb": {k: {p: v / 2**20 for p, v in d.items()} for k, d in peaks.items()},
            "rss_bound_mb": (decoded / 4) / 2**20 + 150}


def report(r: dict) -> list[str]:
    s = r["seconds"]
    lines = [f"huge image {r['width']}x{r['height']} = {r['megapixels']:.0f} MP RGB ({r['decoded_mb']:.0f} MiB "
             f"decoded), blur(ksize={KSIZE}), tiled TIFF in and out: pixmill 2 workers {s['pixmill2']:.1f} s, 1 worker "
             f"{s['pixmill1']:.1f} s ({r['vs_one_worker']:.2f}x); two one-thread loops at once {s['ceiling']:.1f} s "
             f"(pixmill = {r['vs_ceiling']:.2f} of it, target 0.9); libvips 2 threads {s['vips']:.1f} s "
             f"(pixmill {r['vs_vips']:.2f}x, target 1.0)"]
    for name, peaks in r["peak_rss_mb"].items():
        lines.append(f"  peak RSS, {name}: " + ", ".join(f"{k.split(':')[1]} {v:.0f} MiB" for k, v in peaks.items())
                     + f" (bound for pixmill: {r['rss_bound_mb']:.0f} MiB)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side-x", type=int, default=40000)
    parser.add_argument("--side-y", type=int, default=25000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    print("\n".join(report(run(args.side_y, args.side_x, args.rounds))))
    print(f"benchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
