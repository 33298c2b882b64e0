"""pixmill.client and the remote CLI (`pixmill submit/status --server`) against a real `pixmill serve`
on 127.0.0.1, with and without tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixmill.cli.main import main as cli
from pixmill.client import BadRequest, Client, NotFound, Timeout, Unauthorized, UnsupportedFormat
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from support.servers import REAL, Server, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PIPELINE = "grayscale | blur(ksize=5)"
MAX_PIXELS = 2_000_000      # so that resize(scale=8) of a 512×512 image fails its task, with a reason


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("open"), engine="local", workers=2,
                        env={"PIXMILL_MAX_PIXELS": str(MAX_PIXELS)}) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("tokens"), engine="local", workers=1,
                        env={"PIXMILL_API_TOKENS": "alpha-token,beta-token"}) as server:
        yield server


def expected(name: str, pipeline: str, fmt: str = "auto") -> bytes:
    return process((REAL / name).read_bytes(), parse_pipeline(pipeline), Output(fmt)).data


def test_submit_paths_and_bytes_wait_and_download_each_result_under_its_name(server: Server, tmp_path: Path):
    with Client(server.url) as client:
        job = client.submit([REAL / "sk_camera.png", ("coins.png", (REAL / "sk_coins.png").read_bytes()),
                             REAL / "pil_flower.jpg"], pipeline=PIPELINE, format="png")
        assert job.state in ("queued", "running") and len(job.tasks) == 3 and job.id
        assert job.wait(timeout=120) is job and job.state == "done" and job.counts["done"] == 3
        paths = job.download(tmp_path / "out")
        again = job.download(tmp_path / "out")                     # never over a file already there
    assert [p.name for p in paths] == ["sk_camera-grayscale+blur.png", "coins-grayscale+blur.png",
                                       "pil_flower-grayscale+blur.png"]
    assert [p.name for p in again] == ["sk_camera-grayscale+blur-2.png", "coins-grayscale+blur-2.png",
                                       "pil_flower-grayscale+blur-2.png"]
    for path, name in zip(paths, ["sk_camera.png", "sk_coins.png", "pil_flower.jpg"]):
        assert path.read_bytes() == expected(name, PIPELINE, "png")


def test_operations_one_per_file_a_failed_task_and_refresh(server: Server, tmp_path: Path):
    with Client(server.url) as client:
        job = client.submit([REAL / "sk_camera.png", REAL / "sk_coins.png"], operations=["sepia", "resize(scale=8)"])
        seen = [j.counts["queued"] + j.counts["running"] for j in job.progress(timeout=120)]
        assert seen[-1] == 0 and job.state == "done"
        assert [t["state"] for t in job.tasks] == ["done", "failed"]
        assert "resize" in job.failed[0]["error"] and "MP" in job.failed[0]["error"]
        assert job.refresh().counts == {"queued": 0, "running": 0, "done": 1, "failed": 1, "cancelled": 0}
        assert [p.name for p in job.download(tmp_path)] == ["sk_camera-sepia.png"]


def test_errors_are_typed_with_the_api_code_and_message(server: Server):
    with Client(server.url) as client:
        with pytest.raises(NotFound, match="PIXMILL_LIST_JOBS"):
            list(client.jobs())                                   # no tokens: listing is off
        with pytest.raises(NotFound) as missing:
            client.job("no-such-job")
        assert (missing.value.status, missing.value.code) == (404, "not_found") and "no-such-job" in str(missing.value)
        with pytest.raises(BadRequest) as bad:
            client.submit([REAL / "sk_camera.png"], pipeline="blur(ksize=8)")
        assert bad.value.code == "invalid_pipeline" and "ksize" in bad.value.message
        with pytest.raises(UnsupportedFormat, match="notes.png"):
            client.submit([("notes.png", b"plain text, not an image")], pipeline="grayscale")


def test_a_wait_that_runs_out_raises_timeout_and_cancel_deletes_the_job(server: Server):
    with Client(server.url) as client:
        job = client.submit([REAL / "sk_camera.png"] * 3, pipeline="median(ksize=9) | bilateral")
        with pytest.raises(Timeout, match=job.id):
            job.wait(timeout=0)
        job.cancel()
        assert job.state == "cancelled"
        with pytest.raises(NotFound):
            client.job(job.id)


def test_tokens_are_sent_and_jobs_stay_private_to_theirs(guarded: Server):
    with Client(guarded.url) as anonymous, pytest.raises(Unauthorized) as refused:
        anonymous.submit([REAL / "sk_coins.png"], pipeline="grayscale")
    assert refused.value.status == 401
    with Client(guarded.url, token="alpha-token") as alpha, Client(guarded.url, token="beta-token") as beta:
        job = alpha.submit([REAL / "sk_coins.png"], pipeline="grayscale").wait(timeout=120)
        assert job.state == "done"
        with pytest.raises(NotFound):
            beta.job(job.id)
        assert job.id in [j.id for j in alpha.jobs(page=1)] and job.id not in [j.id for j in beta.jobs()]


def test_remote_submit_waits_with_progress_writes_results_and_names_the_failures(server: Server, tmp_path: Path):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("sk_camera.png", "sk_coins.png"):
        (images / name).write_bytes((REAL / name).read_bytes())
    runner = CliRunner()
    ok = runner.invoke(cli, ["submit", str(images), "--server", server.url, "-p", PIPELINE, "-f", "png",
                             "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    job_id = ok.stdout.splitlines()[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sk_camera-grayscale+blur.png",
                                                                     "sk_coins-grayscale+blur.png"]
    assert (tmp_path / "out" / "sk_coins-grayscale+blur.png").read_bytes() == expected("sk_coins.png", PIPELINE, "png")
    shown = runner.invoke(cli, ["status", job_id, "--server", server.url])
    assert shown.exit_code == 0 and f"job {job_id}: done (2 done)" in shown.output
    failing = runner.invoke(cli, ["submit", str(images / "sk_camera.png"), "--server", server.url,
                                  "-p", "resize(scale=8)", "--out", str(tmp_path / "none")])
    assert failing.exit_code == 1
    assert "1 of 1 images failed" in failing.output and "sk_camera.png: " in failing.output
    missing = runner.invoke(cli, ["status", "nope", "--server", server.url])
    assert missing.exit_code == 1 and "no such job" in missing.output


def test_the_remote_cli_takes_its_token_from_pixmill_token(guarded: Server, tmp_path: Path):
    runner = CliRunner()
    refused = runner.invoke(cli, ["submit", str(REAL / "sk_coins.png"), "--server", guarded.url, "-p", "grayscale"])
    assert refused.exit_code == 1 and "401" in refused.output
    queued = runner.invoke(cli, ["submit", str(REAL / "sk_coins.png"), "--server", guarded.url, "-p", "grayscale",
                                 "--wait"], env={"PIXMILL_TOKEN": "beta-token"})
    assert queued.exit_code == 0, queued.output
    job_id = queued.stdout.splitlines()[0]
    shown = runner.invoke(cli, ["status", job_id, "--server", guarded.url, "--json", "--token", "beta-token"])
    assert shown.exit_code == 0 and '"state": "done"' in shown.output
    other = runner.invoke(cli, ["status", job_id, "--server", guarded.url, "--token", "alpha-token"])
    assert other.exit_code == 1 and "no such job" in other.output


def test_the_client_honours_retry_after_of_a_full_queue_and_gets_in_once_there_is_room(tmp_path, monkeypatch):
    from pixmill import client as client_module

    # A web replica without a dispatcher, so that what is queued stays queued.
    with running_server(tmp_path, engine="local", workers=1, args=("--no-dispatcher",), healthy=False,
                        env={"PIXMILL_MAX_QUEUED_TASKS": "1"}) as server, Client(server.url) as client:
        first = client.submit([REAL / "sk_coins.png"] * 2, pipeline="grayscale")
        slept: list[float] = []

        def sleep(seconds: float) -> None:      # while the second waits, the first makes room
            slept.append(seconds)
            if len(slept) == 2:
                first.cancel()
        monkeypatch.setattr(client_module.time, "sleep", sleep)
        second = client.submit([REAL / "sk_coins.png"], pipeline="grayscale")
        assert second.id != first.id and slept == [2.0, 2.0]
        runner = CliRunner()                    # 1 task queued is not over the limit of 1; 2 are
        command = ["submit", str(REAL / "sk_coins.png"), "--server", server.url, "-p", "blur"]
        assert runner.invoke(cli, command).exit_code == 0
        refused = runner.invoke(cli, command)     # retried after each Retry-After, then given up
        assert refused.exit_code == 1 and "429 too_many_jobs" in refused.output and "limit of 1" in refused.output
        assert len(slept) == 2 + 5
