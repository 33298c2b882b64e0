"""The zip of a job's results: safe, unique names, the results' exact bytes, a note of the failures, streamed."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import pytest

from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, Result, process
from pixmill.store import JobView, NewTask, Store, TaskState
from pixmill.web.archive import CHUNK, archive_names, pipeline_slug, stream_archive

REAL = Path(__file__).parents[1] / "data" / "real"
PIPELINE = parse_pipeline("grayscale | blur(ksize=5)")
IMAGE = (REAL / "pil_hopper.bmp").read_bytes()
SAFE = re.compile(r"\d{3}-[A-Za-z0-9._+-]+")


def make_job(store: Store, names: list[str], pipeline=PIPELINE) -> JobView:
    tasks = [NewTask(name, pipeline, store.put_blob(IMAGE), "bmp") for name in names]
    return store.create_job(tasks, Output())


def finish(store: Store, job: JobView, outcomes: dict[int, Result | str]) -> JobView:
    """Run the job's tasks as a dispatcher would: each task n gets its Result, or fails with its message."""
    store.register_dispatcher("archive-test", host="here", pid=1, pid_started=None, engine="local", workers=1)
    claims = store.claim("archive-test", len(job.tasks), busy=False)
    for claim in claims:
        if claim.job_id != job.id or claim.n not in outcomes:
            continue
        outcome = outcomes[claim.n]
        if isinstance(outcome, str):
            assert store.fail("archive-test", claim.id, outcome)
        else:
            assert store.complete("archive-test", claim.id, outcome)
    store.release("archive-test", [c.id for c in claims if c.job_id != job.id or c.n not in outcomes])
    return store.get_job(job.id)


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {info.filename: zf.read(info) for info in zf.infolist()}


def test_every_result_is_in_the_zip_with_its_exact_bytes(store: Store):
    job = make_job(store, ["hopper.bmp", "second.bmp"])
    results = {0: process(IMAGE, PIPELINE, Output("png")), 1: process(IMAGE, PIPELINE, Output("jpeg", 80))}
    job = finish(store, job, results)
    members = unzip(b"".join(stream_archive(store, job)))
    assert members == {"001-hopper-grayscale+blur.png": results[0].data,
                       "002-second-grayscale+blur.jpg": results[1].data}


def test_names_are_safe_and_unique_whatever_the_client_called_the_files(store: Store):
    names = ["same.png", "same.png", "../../evil.png", "/etc/passwd", "C:\\Windows\\x.png", "<script>.png",
             "", "..", "名前.png", "a\x00b.png", "x" * 500 + ".png"]
    job = make_job(store, names)
    result = process(IMAGE, PIPELINE, Output("png"))
    job = finish(store, job, dict.fromkeys(range(len(names)), result))
    entries = [name for name, _ in archive_names(job)]
    assert len(entries) == len(set(entries)) == len(names)
    for n, entry in enumerate(entries):
        assert SAFE.fullmatch(entry) and ".." not in entry and len(entry) < 200, entry
        assert entry.startswith(f"{n + 1:03d}-")
    assert list(unzip(b"".join(stream_archive(store, job)))) == entries


def test_failed_tasks_are_left_out_and_noted_with_their_message(store: Store):
    job = make_job(store, ["good.bmp", "bad one.bmp", "good2.bmp"])
    result = process(IMAGE, PIPELINE, Output("png"))
    job = finish(store, job, {0: result, 1: "bad one.bmp: the image is truncated", 2: result})
    assert [t.state for t in job.tasks] == [TaskState.DONE, TaskState.FAILED, TaskState.DONE]
    members = unzip(b"".join(stream_archive(store, job)))
    assert sorted(members) == ["001-good-grayscale+blur.png", "003-good2-grayscale+blur.png", "FAILED.txt"]
    heading, *lines = members["FAILED.txt"].decode().splitlines()
    assert "no result" in heading
    assert lines == ["002 'bad one.bmp': bad one.bmp: the image is truncated"]


def test_tasks_of_a_cancelled_job_are_noted_by_their_state(store: Store):
    job = make_job(store, ["done.bmp", "never.bmp"])
    job = finish(store, job, {0: process(IMAGE, PIPELINE, Output("png"))})
    job = store.cancel_job(job.id)
    assert job.tasks[1].state == TaskState.CANCELLED and job.tasks[1].error is None
    members = unzip(b"".join(stream_archive(store, job)))
    assert list(members) == ["001-done-grayscale+blur.png", "FAILED.txt"]
    assert "002 'never.bmp': cancelled" in members["FAILED.txt"].decode()


def test_a_job_without_failures_has_no_note_and_one_without_results_only_the_note(store: Store):
    ok = finish(store, make_job(store, ["a.bmp"]), {0: process(IMAGE, PIPELINE, Output("png"))})
    assert "FAILED.txt" not in unzip(b"".join(stream_archive(store, ok)))
    failed = finish(store, make_job(store, ["a.bmp", "b.bmp"]), {0: "no", 1: "no"})
    assert archive_names(failed) == []
    assert list(unzip(b"".join(stream_archive(store, failed)))) == ["FAILED.txt"]


def test_the_archive_streams_in_pieces_reading_one_result_at_a_time(store: Store, monkeypatch):
    size = 3 * CHUNK + 1000
    results = {n: Result(os.urandom(size), "png", 1, 1) for n in range(3)}   # incompressible
    job = finish(store, make_job(store, ["a.bmp", "b.bmp", "c.bmp"]), results)
    opened: list[str] = []
    blob_source = store.blob_source
    monkeypatch.setattr(store, "blob_source", lambda key: opened.append(key) or blob_source(key))
    stream = stream_archive(store, job)
    first = next(stream)
    assert opened == [job.tasks[0].result_blob]          # nothing of the later results was read yet
    pieces = [first, *stream]
    assert len(pieces) >= 6 and max(map(len, pieces)) <= 4 * CHUNK
    members = unzip(b"".join(pieces))
    assert [members[name] for name, _ in archive_names(job)] == [results[n].data for n in range(3)]


@pytest.mark.parametrize(("text", "slug"), [
    ("grayscale | blur(ksize=5)", "grayscale+blur"),
    ("resize(width=10)", "resize"),
    ("not an operation", "result"),
    ("", "result"),
])
def test_pipeline_slug_names_the_operations_or_falls_back(text, slug):
    assert pipeline_slug(text) == slug


def test_pipeline_slug_is_at_most_sixty_characters():
    slug = pipeline_slug(" | ".join(["grayscale"] * 20))
    assert len(slug) == 60 and slug.startswith("grayscale+grayscale")


def test_the_archive_endpoint_streams_the_zip_of_an_ended_job(client, store: Store):
    job = make_job(store, ["photo.bmp", "broken.bmp"])
    result = process(IMAGE, PIPELINE, Output("png"))
    job = finish(store, job, {0: result, 1: "broken"})
    response = client.get(f"/api/v1/jobs/{job.id}/archive", buffered=False)
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert response.is_streamed
    assert re.fullmatch(r'attachment; filename="pixmill-[A-Za-z0-9_-]+\.zip"', response.headers["Content-Disposition"])
    members = unzip(b"".join(response.response))
    response.close()
    assert members["001-photo-grayscale+blur.png"] == result.data and "FAILED.txt" in members
