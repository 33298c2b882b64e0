"""The `pixmill` command: batch runs on both engines, failures, file naming, the catalogue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

DATA = Path(__file__).parents[1] / "data"
REAL = DATA / "real"
GOOD = ["pil_flower.jpg", "sk_coins.png", "pil_hopper.bmp", "pil_iss634.gif", "pil_flower.webp",
        "pil_tiff_16bit_RGB.tiff", "sk_logo.png", "pil_hopper_orientation_6.jpg"]


def pixmill(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pixmill ARGS` in its own process group, killed if it outlives timeout."""
    environ = {**os.environ, **(env or {})}
    # The engine must find the mpich wheel's mpiexec by itself, so take the venv off PATH.
    bindir = str(Path(sys.executable).parent)
    environ["PATH"] = os.pathsep.join(p for p in environ.get("PATH", "").split(os.pathsep) if p != bindir)
    proc = subprocess.Popen([sys.executable, "-m", "pixmill", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of a few real images of different formats."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in GOOD:
        (folder / name).write_bytes((REAL / name).read_bytes())
    return folder


def read_all(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.mpi
@pytest.mark.slow
def test_mpi_and_local_engines_give_identical_outputs(inputs: Path, tmp_path: Path) -> None:
    spec = "grayscale | blur(ksize=7) | threshold(value=100)"
    mpi = pixmill("run", str(inputs), "-p", spec, "-o", str(tmp_path / "mpi"), "--engine", "mpi", "-w", "2")
    local = pixmill("run", str(inputs), "-p", spec, "-o", str(tmp_path / "local"), "--engine", "local", "-w", "2")
    assert mpi.returncode == 0, mpi.stderr + mpi.stdout
    assert local.returncode == 0, local.stderr + local.stdout
    assert f"{len(GOOD)} of {len(GOOD)} images processed" in mpi.stdout
    mpi_files, local_files = read_all(tmp_path / "mpi"), read_all(tmp_path / "local")
    assert len(mpi_files) == len(GOOD)
    assert mpi_files == local_files


def test_outputs_are_named_after_input_and_pipeline_and_match_opencv(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = pixmill("run", str(inputs / "sk_coins.png"), str(inputs / "pil_flower.jpg"), "-p", "blur",
                   "-o", str(out), "--engine", "local", "-w", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["pil_flower.blur.jpg", "sk_coins.blur.png"]
    # PNG stays lossless, so the pixels equal the original application's OpenCV call exactly.
    expected = cv2.GaussianBlur(cv2.imread(str(REAL / "sk_coins.png"), cv2.IMREAD_UNCHANGED), (5, 5), 0)
    got = cv2.imread(str(out / "sk_coins.blur.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(got, expected)


def test_a_folder_of_phone_and_browser_formats_is_run(tmp_path: Path) -> None:
    import pillow_heif
    from PIL import Image

    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    flower = Image.open(REAL / "pil_flower.jpg")
    pillow_heif.from_pillow(flower).save(folder / "IMG_0001.HEIC", quality=90)
    flower.save(folder / "web.avif", quality=80)
    done = pixmill("run", str(folder), "-p", "resize(scale=0.5)", "-o", str(out), "--engine", "local", "-w", "1")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "2 of 2 images processed" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["IMG_0001.resize.jpg", "web.resize.avif"]
    assert Image.open(out / "IMG_0001.resize.jpg").size == (240, 180)


def test_a_failed_image_is_reported_and_the_others_still_finish(inputs: Path, tmp_path: Path) -> None:
    (inputs / "broken.jpg").write_bytes((REAL / "pil_flower.jpg").read_bytes()[:5000])
    (inputs / "notes.png").write_bytes(b"just text, named like an image\n" * 10)
    out = tmp_path / "out"
    done = pixmill("run", str(inputs), "-p", "color_inversion", "-o", str(out), "--engine", "local", "-w", "2")
    assert done.returncode == 1
    assert f"{len(GOOD)} of {len(GOOD) + 2} images processed" in done.stdout
    assert "2 failed:" in done.stdout
    assert "broken.jpg: the JPEG is truncated" in done.stdout
    assert "notes.png: not a supported image: it looks like text" in done.stdout
    assert len(list(out.iterdir())) == len(GOOD)


def test_same_stem_inputs_get_distinct_outputs_and_inputs_are_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((REAL / "pil_flower.jpg").read_bytes())
    (folder / "a.png").write_bytes((REAL / "sk_coins.png").read_bytes())
    # An input that already has the name the output would get.
    (folder / "a.blur.png").write_bytes((REAL / "pil_hopper.bmp").read_bytes())
    before = read_all(folder)
    done = pixmill("run", str(folder / "a.jpg"), str(folder / "a.png"), str(folder / "a.blur.png"), "-p", "blur",
                   "-f", "png", "-o", str(folder), "--engine", "local", "-w", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    after = read_all(folder)
    assert {k: after[k] for k in before} == before
    outputs = sorted(set(after) - set(before))
    assert len(outputs) == 3, outputs
    assert all(name.endswith(".png") and ".blur" in name for name in outputs)


def test_a_bad_pipeline_is_refused_before_any_work(inputs: Path, tmp_path: Path) -> None:
    done = pixmill("run", str(inputs), "-p", "grayscale | blur(ksize=8)", "-o", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "step 2 blur: ksize must be an odd integer in 1..99, got 8" in done.stderr
    assert not (tmp_path / "out").exists()


def test_ops_lists_the_catalogue_as_text_and_json() -> None:
    text = pixmill("ops")
    assert text.returncode == 0
    for name in ("edge_detection", "color_inversion", "grayscale", "blur", "threshold", "resize"):
        assert name in text.stdout
    ops = json.loads(pixmill("ops", "--json").stdout)
    assert len(ops) >= 24
    blur = next(op for op in ops if op["name"] == "blur")
    assert blur["params"][0] == {"name": "ksize", "type": "int", "default": 5, "description": "kernel size in pixels",
                                 "min": 1, "max": 99, "step": 2, "odd": True}


def test_status_json_prints_the_job_as_the_api_shows_it_without_links(client, store, settings) -> None:
    from click.testing import CliRunner

    from pixmill.cli.jobs import status
    from pixmill.imaging.pipeline import parse_pipeline
    from pixmill.imaging.process import Output
    from pixmill.store import NewTask

    blob = store.put_blob((REAL / "sk_coins.png").read_bytes())
    job = store.create_job([NewTask("coins.png", parse_pipeline("grayscale"), blob, "png")], Output())
    shown = CliRunner().invoke(status, [job.id, "--data-dir", str(settings.data_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    printed, api = json.loads(shown.output), client.get(f"/api/v1/jobs/{job.id}").get_json()
    links = {"status_url", "events_url", "archive_url", "result_url", "source_url"}
    assert {k: v for k, v in api.items() if k not in links | {"tasks"}} == \
        {k: v for k, v in printed.items() if k != "tasks"}
    task = printed["tasks"][0]
    assert {k: v for k, v in api["tasks"][0].items() if k not in links} == \
        {k: v for k, v in task.items() if k not in ("input_blob", "result_blob")}
    assert (task["state"], task["input_blob"], task["result_blob"]) == ("queued", blob, None)
