"""Fuzzing: process() on random small images, and schemathesis on the API around a real, finished job.

tests/web/test_web_schema.py fuzzes every operation with random ids (so the job endpoints mostly
answer 404) and tests/imaging/test_pipeline.py fuzzes pipeline parsing. Here:

- hypothesis draws small arrays (gray, BGR, BGRA; 8 or 16 bits), encodes them as PNG or JPEG, and
  runs process() with a random pipeline and output format: it must give a PixmillError or a result
  whose bytes decode to the size it reports, and the same bytes every time;
- schemathesis fuzzes the job endpoints with the id of a real finished job (and of a failed
  task), so their 200, 202 and 422 answers are checked against the response schemas too;
- schemathesis also goes over real HTTP to `pixmill serve`, with its default checks (no 5xx,
  status codes, content types and bodies as documented).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pixmill.config import Settings
from pixmill.errors import PixmillError
from pixmill.imaging import codec
from pixmill.imaging.ops import operations
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import OUTPUT_FORMATS, Output, process
from pixmill.store import Store
from pixmill.web import create_app
from support.servers import running_server
from support.strategies import params_strategy
from support.web import dispatcher, make_client, wait_job

REAL = Path(__file__).parents[1] / "data" / "real"
HOSTILE = Path(__file__).parents[1] / "data" / "hostile_real"
# Operations whose cost grows with a parameter far beyond a small image's worth are kept small.
OPS = [op for op in operations()]


@st.composite
def images(draw) -> tuple[bytes, str]:
    """(encoded bytes, 'png' or 'jpeg') of a random small array."""
    fmt = draw(st.sampled_from(["png", "jpeg"]))
    channels = draw(st.sampled_from([1, 3, 4] if fmt == "png" else [1, 3]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16])) if fmt == "png" else np.uint8
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = draw(arrays(dtype, shape, elements=st.integers(0, np.iinfo(dtype).max)))
    ok, encoded = cv2.imencode(f".{fmt}", pixels)
    assert ok
    return encoded.tobytes(), fmt


@st.composite
def pipelines(draw) -> list[dict]:
    """One to three steps of random operations with random parameters in their declared ranges."""
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(OPS))
        steps.append({"op": op.name, "params": draw(params_strategy(op, cap=40))})
    return steps


@given(image=images(), steps=pipelines(), fmt=st.sampled_from(OUTPUT_FORMATS), quality=st.integers(1, 100))
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_process_on_random_small_images(image, steps, fmt, quality):
    data, source = image
    output = Output(format=fmt, quality=quality)
    try:
        pipeline = parse_pipeline(steps)
    except PixmillError:
        return                       # values within ranges can still clash (crop outside, ...): said so
    try:
        result = process(data, pipeline, output, max_pixels=4_000_000)
    except PixmillError as exc:
        assert exc.message and exc.status < 500, exc
        return
    assert result.data and codec.sniff(result.data) == result.format
    expected = {"auto": {"jpeg": "jpeg"}.get(source, "png")}.get(fmt, fmt)
    assert result.format == expected, (fmt, source, result.format)
    decoded = codec.decode(result.data, max_pixels=4_000_000).image
    assert decoded.shape[:2] == (result.height, result.width)
    assert process(data, pipeline, output, max_pixels=4_000_000).data == result.data, "not deterministic"


@given(data=st.binary(max_size=512), steps=pipelines())
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_process_on_random_bytes_is_an_error_never_a_crash(data, steps):
    try:
        pipeline = parse_pipeline(steps)
    except PixmillError:
        return
    try:
        process(data, pipeline, max_pixels=4_000_000)
    except PixmillError as exc:
        assert exc.message and 400 <= exc.status < 500


@given(image=images(), cut=st.integers(1, 400), flip=st.integers(0, 2 ** 16 - 1))
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_process_on_damaged_small_images_is_an_error_or_a_correct_size(image, cut, flip):
    data, _ = image
    damaged = bytearray(data[: max(1, len(data) - cut)])
    damaged[flip % len(damaged)] ^= 0xA5
    try:
        result = process(bytes(damaged), parse_pipeline("grayscale"), max_pixels=4_000_000)
    except PixmillError as exc:
        assert exc.message and 400 <= exc.status < 500
        return
    assert codec.decode(result.data, max_pixels=4_000_000).image.shape[:2] == (result.height, result.width)


# ---- schemathesis with a real job

JOB_OPERATIONS = [("GET", "/api/v1/jobs/{job_id}"), ("GET", "/api/v1/jobs/{job_id}/events"),
                  ("GET", "/api/v1/jobs/{job_id}/tasks/{n}/result"), ("GET", "/api/v1/jobs/{job_id}/tasks/{n}/source"),
                  ("GET", "/api/v1/jobs/{job_id}/archive"), ("DELETE", "/api/v1/jobs/{job_id}")]


@pytest.fixture(scope="module")
def live(tmp_path_factory, schemathesis_config):
    """An app with one finished job (a done task and a failed one) and one still queued."""
    config = Settings(data_dir=tmp_path_factory.mktemp("fuzz") / "data", engine="local", workers=1,
                      max_files=3, max_file_bytes=1 << 20, max_request_bytes=4 << 20)
    with Store.open(config) as store:
        app = create_app(config, store, sse_poll=0.01, sse_max_seconds=0.2)
        client = make_client(app)
        upload = {"files": [(io.BytesIO((REAL / "pil_hopper.bmp").read_bytes()), "hopper.bmp"),
                            (io.BytesIO((HOSTILE / "truncated_jpeg.jpg").read_bytes()), "truncated.jpg")],
                  "pipeline": "grayscale"}
        done = client.post("/api/v1/jobs", data=upload, content_type="multipart/form-data").get_json()["id"]
        with dispatcher(store, config):
            wait_job(client, done)
        upload["files"] = [(io.BytesIO((REAL / "pil_hopper.bmp").read_bytes()), "queued.bmp")]
        queued = client.post("/api/v1/jobs", data=upload, content_type="multipart/form-data").get_json()["id"]
        store.register_dispatcher("fuzz", host="test", pid=1, pid_started=None, engine="local", workers=1)
        yield (schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=schemathesis_config),
               {"done": done, "queued": queued})


@pytest.mark.parametrize("method, path", JOB_OPERATIONS, ids=[f"{m} {p}" for m, p in JOB_OPERATIONS])
def test_job_endpoints_with_real_ids_match_their_schemas(live, method, path):
    schema, jobs = live
    operation = schema[path][method]
    # positive cases only: a real id put into a negative case could make it valid (negative cases, with
    # random ids, are in test_web_schema.py)
    cases = operation.as_strategy(GenerationMode.POSITIVE)
    seen: set[int] = set()
    # a failed task's result is a documented 422 for a schema-valid request
    excluded = [positive_data_acceptance] if path.endswith("/result") else []

    @given(case=cases, which=st.sampled_from(["done", "queued", None]), n=st.sampled_from([0, 1, 2, None]))
    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case, which, n):
        if method == "DELETE" and which == "done":
            which = "queued"          # keep the finished job for the other endpoints
        if case.path_parameters is not None:
            if which and "job_id" in case.path_parameters:
                case.path_parameters["job_id"] = jobs[which]
            if n is not None and "n" in case.path_parameters:
                case.path_parameters["n"] = n
        response = case.call_and_validate(excluded_checks=excluded)
        seen.add(response.status_code)

    check()
    assert seen - {404}, f"only 404s: the real ids never reached {method} {path}"


# ---- schemathesis over real HTTP, against `pixmill serve`

SERVED = ["GET /api/v1/operations", "POST /api/v1/jobs", "GET /api/v1/jobs/{job_id}", "DELETE /api/v1/jobs/{job_id}",
          "GET /api/v1/jobs/{job_id}/tasks/{n}/result", "GET /api/v1/jobs/{job_id}/archive", "POST /upload",
          "GET /healthz", "GET /metrics"]


@pytest.mark.slow
def test_a_real_server_answers_every_generated_request_within_its_schema(tmp_path, schemathesis_config):
    env = {"PIXMILL_MAX_FILES": "3", "PIXMILL_MAX_FILE_BYTES": str(1 << 20), "PIXMILL_MAX_REQUEST_BYTES": str(4 << 20)}
    with running_server(tmp_path / "serve", engine="local", workers=1, env=env) as server:
        schema = schemathesis.openapi.from_url(server.url + "api/v1/openapi.json", config=schemathesis_config)
        for name in SERVED:
            method, path = name.split(" ")
            operation = schema[path][method]
            cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                              operation.as_strategy(GenerationMode.NEGATIVE))
            excluded = [positive_data_acceptance] if method == "POST" else []

            @given(case=cases)
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                case.call_and_validate(base_url=server.url.rstrip("/"), excluded_checks=excluded, timeout=30)  # noqa: B023 (run in this iteration)

            check()
        assert "Traceback" not in server.log.read_text()
