"""Batch runs: which files are taken, where results go, and what a run on a pool of processes or threads gives."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from pixmill.errors import PixmillError
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.limits import format_bytes
from pixmill.worker.batch import collect_inputs, plan_targets, run_batch
from support.jobs_tasks import CRASH, make_png, misbehaving_process

REAL = Path(__file__).parents[1] / "data" / "real"
PIPELINE = parse_pipeline("grayscale | blur(ksize=5)")
IMAGES = ["sk_coins.png", "pil_hopper.bmp", "pil_flower.jpg", "pil_flower.webp", "sk_logo.png"]
LIMITS = {"max_pixels": 100_000_000, "max_file_bytes": 50 * 1024 * 1024}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of a few real images."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(REAL / name, folder / name)
    return folder


@pytest.fixture(params=["processes", "threads"])
def executor(request) -> Iterator[Executor]:
    pool = ProcessPoolExecutor(2) if request.param == "processes" else ThreadPoolExecutor(2)
    with pool:
        yield pool


def pixels(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def expected_error(path: Path, max_pixels: int = LIMITS["max_pixels"]) -> str:
    """The message process() gives for this file in this process."""
    with pytest.raises(PixmillError) as caught:
        process(path.read_bytes(), PIPELINE, Output(), max_pixels=max_pixels)
    return caught.value.message


# ---- collect_inputs

def test_collect_takes_named_files_and_the_images_directly_inside_named_folders(tmp_path: Path, inputs: Path):
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "UPPER.JPG").write_bytes((REAL / "pil_flower.jpg").read_bytes())
    (inputs / "sub").mkdir()
    (inputs / "sub" / "deep.png").write_bytes((REAL / "sk_coins.png").read_bytes())
    named = tmp_path / "named.data"            # a file named outright is taken whatever its suffix
    named.write_bytes(b"x")
    found = collect_inputs([named, inputs])
    assert found[0] == named.resolve()
    assert [p.name for p in found[1:]] == sorted(IMAGES + ["UPPER.JPG"])
    assert all(p.is_absolute() for p in found)


def test_collect_never_repeats_a_file(inputs: Path, monkeypatch):
    monkeypatch.chdir(inputs.parent)
    coins = inputs / "sk_coins.png"
    found = collect_inputs([coins, Path("in/sk_coins.png"), inputs, inputs, Path("in/../in/sk_logo.png")])
    assert len(found) == len(set(found)) == len(IMAGES)
    assert found[0] == coins.resolve()


def test_collect_of_an_empty_folder_is_empty(tmp_path: Path):
    assert collect_inputs([tmp_path]) == [] and collect_inputs([]) == []


# ---- plan_targets

def test_targets_are_named_after_the_source_and_the_pipeline(inputs: Path, tmp_path: Path):
    sources = collect_inputs([inputs])
    targets = plan_targets(sources, tmp_path / "out", PIPELINE, Output())
    names = {s.name: t.name for s, t in zip(sources, targets)}
    assert names == {"sk_coins.png": "sk_coins.grayscale+blur.png", "pil_hopper.bmp": "pil_hopper.grayscale+blur.png",
                     "pil_flower.jpg": "pil_flower.grayscale+blur.jpg",
                     "pil_flower.webp": "pil_flower.grayscale+blur.webp", "sk_logo.png": "sk_logo.grayscale+blur.png"}
    assert all(t.parent == tmp_path / "out" for t in targets)
    assert {t.suffix for t in plan_targets(sources, tmp_path, PIPELINE, Output("jpeg"))} == {".jpg"}


def test_a_target_never_overwrites_an_input_nor_repeats_a_name(tmp_path: Path):
    folders = [tmp_path / "a", tmp_path / "b", tmp_path / "out"]
    for folder in folders:
        folder.mkdir()
    sources = [folders[0] / "x.png", folders[1] / "x.png", folders[2] / "x.grayscale+blur.png",
               folders[2] / "x.grayscale+blur-2.png", folders[2] / "y.png"]
    for source in sources:
        source.write_bytes(make_png(0, size=(8, 8)))
    sources = collect_inputs(sources)
    targets = plan_targets(sources, folders[2], PIPELINE, Output())
    assert len(set(targets)) == len(targets)
    assert not {t.resolve() for t in targets} & {s.resolve() for s in sources}
    assert [t.name for t in targets[:2]] == ["x.grayscale+blur-3.png", "x.grayscale+blur-4.png"]


# ---- run_batch

def test_results_equal_process_in_this_process(inputs: Path, tmp_path: Path, executor: Executor):
    sources = collect_inputs([inputs])
    done = []
    report = run_batch(sources, PIPELINE, Output(), tmp_path / "out", executor, workers=2, on_done=done.append,
                       **LIMITS)
    assert report.failed == [] and len(report.succeeded) == len(sources) and len(done) == len(sources)
    assert [o.source for o in report.outcomes] == sources            # in the order given, whatever finished first
    for outcome in report.outcomes:
        expected = process(outcome.source.read_bytes(), PIPELINE, Output(), max_pixels=LIMITS["max_pixels"])
        assert outcome.target.suffix == "." + expected.extension
        assert np.array_equal(pixels(outcome.target.read_bytes()), pixels(expected.data)), outcome.source.name
        assert outcome.notes == expected.notes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(o.target.name for o in report.outcomes)
    assert report.seconds > 0


def test_a_failing_file_is_reported_with_its_message_and_the_others_succeed(inputs: Path, tmp_path: Path,
                                                                           executor: Executor):
    bad = {"truncated.png": (REAL / "sk_coins.png").read_bytes()[:2000], "text.jpg": b"just some text\n" * 10}
    for name, data in bad.items():
        (inputs / name).write_bytes(data)
    missing = inputs / "gone.png"
    sources = collect_inputs([inputs]) + [missing]
    report = run_batch(sources, PIPELINE, Output(), tmp_path / "out", executor, workers=2, **LIMITS)
    failed = {o.source.name: o.error for o in report.failed}
    assert failed.keys() == set(bad) | {"gone.png"}
    for name in bad:
        assert failed[name] == expected_error(inputs / name)
    assert "No such file" in failed["gone.png"]
    assert sorted(o.source.name for o in report.succeeded) == sorted(IMAGES)
    assert all(o.target is None for o in report.failed)
    assert len(list((tmp_path / "out").iterdir())) == len(IMAGES)       # nothing half-written for the failures


def test_a_result_that_cannot_be_written_fails_its_file_alone(inputs: Path, tmp_path: Path, executor: Executor):
    sources = collect_inputs([inputs])
    out = tmp_path / "out"
    blocked = plan_targets(sources, out, PIPELINE, Output())[0]
    (out / (blocked.name + ".part")).mkdir(parents=True)   # the worker's partial file cannot be created
    report = run_batch(sources, PIPELINE, Output(), out, executor, workers=2, **LIMITS)
    [failed] = report.failed
    assert failed.source == sources[0] and "directory" in failed.error, failed.error
    assert len(report.succeeded) == len(sources) - 1 and not blocked.exists()


def test_an_over_limit_file_is_refused_naming_the_limit(inputs: Path, tmp_path: Path):
    sources = collect_inputs([inputs])
    limit = 100 * 1024
    [big] = [p.name for p in sources if p.stat().st_size > limit]
    with ThreadPoolExecutor(2) as executor:
        report = run_batch(sources, PIPELINE, Output(), tmp_path / "out", executor, workers=2,
                           max_pixels=LIMITS["max_pixels"], max_file_bytes=limit)
    [refused] = report.failed
    assert refused.source.name == big and refused.target is None
    assert format_bytes(limit) in refused.error, refused.error
    assert len(report.succeeded) == len(sources) - 1


def test_a_pixel_limit_is_passed_to_every_worker(inputs: Path, tmp_path: Path, executor: Executor):
    sources = collect_inputs([inputs])
    report = run_batch(sources, PIPELINE, Output(), tmp_path / "out", executor, workers=2, max_pixels=1000,
                       max_file_bytes=LIMITS["max_file_bytes"])
    assert report.succeeded == [] and len(report.failed) == len(sources)
    for outcome in report.failed:
        assert outcome.error == expected_error(outcome.source, max_pixels=1000)


class CrashingPool(Executor):
    """Runs misbehaving_process in place of process(): an image marked CRASH kills its worker process."""

    def __init__(self, pool: ProcessPoolExecutor):
        self.pool = pool

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self.pool.submit(fn, *args, **kwargs, task=misbehaving_process)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait, cancel_futures=cancel_futures)


def test_a_file_that_kills_its_worker_is_reported_and_the_batch_still_reports_every_file(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):
        (folder / f"img{i}.png").write_bytes(make_png(i, marker=CRASH if i == 0 else None))
    sources = collect_inputs([folder])
    # One worker, the crash first: the pool is known to be broken before anything after it is submitted.
    with ProcessPoolExecutor(1) as pool:
        report = run_batch(sources, PIPELINE, Output(), tmp_path / "out", CrashingPool(pool), workers=1, **LIMITS)
    assert [o.source for o in report.outcomes] == sources
    crashed = report.outcomes[0]
    assert crashed.error and "died" in crashed.error
    for outcome in report.outcomes[1:]:   # in flight with it, or left when the pool broke: each says why
        assert outcome.target is None and "died" in outcome.error
    assert any("not processed" in o.error for o in report.outcomes[1:])
