"""The web API through Flask's test client: every endpoint and every error, with the real dispatcher."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import replace

import cv2
import numpy as np
import pytest

from pixmill.errors import ImageTooLarge
from pixmill.imaging import codec
from pixmill.imaging.ops import operations
from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.store import NewTask, Store
from pixmill.web import create_app
from pixmill.web.events import job_events
from support.web import (
    EMPTY_FILE,
    HOSTILE,
    REAL,
    assert_error,
    dispatcher,
    files,
    make_client,
    path_of,
    post_job,
    stored_blobs,
    wait_job,
)

pytestmark = pytest.mark.both_backends   # each test on SQLite and on PostgreSQL + S3

# ---- the catalogue, the documents, the page


def test_operations_lists_the_registry_with_ranges(client):
    response = client.get("/api/v1/operations")
    assert response.status_code == 200
    body = response.get_json()
    assert [op["name"] for op in body] == [op.name for op in operations()]
    blur = next(op for op in body if op["name"] == "blur")
    ksize = next(p for p in blur["params"] if p["name"] == "ksize")
    assert ksize["type"] == "int" and ksize["default"] == 5 and ksize["min"] >= 1 and ksize["odd"]


def test_openapi_document_describes_every_endpoint(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ("/api/v1/operations", "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events",
                 "/api/v1/jobs/{job_id}/tasks/{n}/result", "/api/v1/jobs/{job_id}/tasks/{n}/source",
                 "/api/v1/jobs/{job_id}/archive", "/upload", "/healthz", "/metrics"):
        assert path in paths, path
    form = paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"files", "operations", "pipeline", "format", "quality", "color", "negotiate",
                                      "webhook_url"}
    assert "delete" in paths["/api/v1/jobs/{job_id}"]


def local_assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/", "/api/v1/docs"])
def test_pages_load_only_their_own_assets_and_no_inline_script(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert not re.search(r"<[^>]+\son[a-z]+=", html), "inline event handler"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp
    for url in local_assets(html):
        if url.startswith("#"):
            continue
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200, url


def test_security_headers_on_every_kind_of_response(client):
    for url in ("/", "/api/v1/operations", "/api/v1/jobs/nope", "/healthz", "/static/app.js"):
        headers = client.get(url).headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"


# ---- a job from upload to archive, processed by the real dispatcher

def test_job_lifecycle_results_equal_process(client, store, settings):
    names = ["sk_camera.png", "sk_rocket.jpg", "pil_hopper.bmp"]
    specs = ["grayscale", "blur(ksize=7) | edge_detection", "resize(scale=0.5)"]
    response = post_job(client, {"files": files(*names), "operations": specs})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert len(job["id"]) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", job["id"])   # >= 128 random bits
    assert response.headers["Location"] == job["status_url"]
    assert [t["name"] for t in job["tasks"]] == names and [t["state"] for t in job["tasks"]] == ["queued"] * 3
    waiting = client.get(path_of(job["tasks"][0]["result_url"]))
    assert waiting.status_code == 202 and waiting.headers["Retry-After"]
    assert_error(client.get(f"/api/v1/jobs/{job['id']}/archive"), 409, "job_not_finished", "still")

    with dispatcher(store, settings):
        done = wait_job(client, job["id"])
    assert done["counts"]["done"] == 3 and done["ended"] == 3
    for name, spec, task in zip(names, specs, done["tasks"]):
        expected = process((REAL / name).read_bytes(), parse_pipeline(spec), Output())
        result = client.get(path_of(task["result_url"]))
        assert result.status_code == 200 and result.mimetype == expected.media_type
        assert result.data == expected.data
        assert (task["width"], task["height"]) == (expected.width, expected.height)
        assert task["seconds"] is not None and task["finished_at"] >= task["started_at"]
        etag = result.headers["ETag"]
        assert client.get(path_of(task["result_url"]), headers={"If-None-Match": etag}).status_code == 304
        attachment = client.get(path_of(task["result_url"]) + "?download=true")
        assert attachment.headers["Content-Disposition"].startswith("attachment;")
        source = client.get(path_of(task["source_url"]))
        assert source.status_code == 200 and source.data == (REAL / name).read_bytes()
        assert source.mimetype == codec.MEDIA_TYPES[codec.sniff(source.data)]

    archive = client.get(f"/api/v1/jobs/{job['id']}/archive")
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.data)) as zf:
        members = zf.namelist()
        assert members == ["001-sk_camera-grayscale.png", "002-sk_rocket-blur+edge_detection.jpg",
                           "003-pil_hopper-resize.png"]
        assert zf.read(members[0]) == client.get(path_of(done["tasks"][0]["result_url"])).data

    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert_error(client.get(f"/api/v1/jobs/{job['id']}"), 404, "not_found")
    assert_error(client.get(path_of(done["tasks"][0]["result_url"])), 404, "not_found")
    assert stored_blobs(settings) == []


def test_one_pipeline_for_all_files_with_format_and_quality(client, store, settings):
    response = post_job(client, {"files": files("sk_camera.png", "sk_rocket.jpg"),
                                 "pipeline": '[{"op": "blur", "params": {"ksize": 3}}]',
                                 "format": "webp", "quality": "70"})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["output"] == {"format": "webp", "quality": 70, "color": "srgb", "accept": []}
    assert {t["pipeline"] for t in job["tasks"]} == {"blur(ksize=3)"}
    with dispatcher(store, settings):
        done = wait_job(client, job["id"])
    for task in done["tasks"]:
        result = client.get(path_of(task["result_url"]))
        assert result.mimetype == "image/webp" and codec.sniff(result.data) == "webp"


def test_a_heic_upload_and_color_keep(client, store, settings):
    import pillow_heif
    from PIL import Image

    buffer = io.BytesIO()
    rocket = Image.open(REAL / "sk_rocket.jpg")
    pillow_heif.from_pillow(rocket).save(buffer, quality=90, icc_profile=rocket.info["icc_profile"])
    heic = buffer.getvalue()
    response = post_job(client, {"files": [(io.BytesIO(heic), "phone.heic"), *files("sk_rocket.jpg")],
                                 "pipeline": "resize(scale=0.5)", "color": "keep"})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["output"]["color"] == "keep"
    assert [t["source_format"] for t in job["tasks"]] == ["heic", "jpeg"]
    with dispatcher(store, settings):
        done = wait_job(client, job["id"])
    assert done["counts"]["done"] == 2, done
    for task in done["tasks"]:
        result = client.get(path_of(task["result_url"]))
        assert result.mimetype == "image/jpeg" and task["result_format"] == "jpeg"
        assert Image.open(io.BytesIO(result.data)).info["icc_profile"] == rocket.info["icc_profile"]
        assert any("kept in Adobe RGB" in note for note in task["notes"])
    source = client.get(path_of(done["tasks"][0]["source_url"]))
    assert source.mimetype == "image/heic" and source.data == heic


NEGOTIATIONS = {
    # Accept header, negotiate field -> the formats auto chooses from, best first
    "avif first": ("image/avif,image/webp,*/*;q=0.8", "true", ["avif", "webp"]),
    "q decides": ("image/avif;q=0.5, image/webp", "true", ["webp", "avif"]),
    "webp only": ("image/webp", "1", ["webp"]),
    "refused by q=0": ("image/avif;q=0, image/webp;q=0", "true", []),
    "wildcards name none": ("*/*, image/*", "true", []),
    "not asked": ("image/avif,image/webp", None, []),
    "asked not to": ("image/avif", "false", []),
}


@pytest.mark.parametrize("case", list(NEGOTIATIONS), ids=list(NEGOTIATIONS))
def test_format_auto_negotiates_from_the_accept_header_when_asked(client, store, settings, case):
    accept, negotiate, formats = NEGOTIATIONS[case]
    form = {"files": files("sk_camera.png", "sk_rocket.jpg"), "pipeline": "resize(scale=0.25)"}
    if negotiate is not None:
        form["negotiate"] = negotiate
    response = post_job(client, form, headers={"Accept": accept})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["output"]["accept"] == formats
    with dispatcher(store, settings):
        done = wait_job(client, job["id"])
    assert done["counts"]["done"] == 2, done
    for task, auto in zip(done["tasks"], ("png", "jpeg")):
        result = client.get(path_of(task["result_url"]))
        expected = formats[0] if formats else auto
        assert task["result_format"] == expected and codec.sniff(result.data) == expected
        assert result.mimetype == codec.MEDIA_TYPES[expected]


def test_negotiation_leaves_an_explicit_format_alone(client, store, settings):
    response = post_job(client, {"files": files("sk_camera.png"), "pipeline": "blur", "format": "png",
                                 "negotiate": "true"}, headers={"Accept": "image/avif"})
    assert response.status_code == 202
    assert response.get_json()["output"] == {"format": "png", "quality": 90, "color": "srgb", "accept": []}


def test_original_upload_form_and_its_urls(client, store, settings):
    upload = files("sk_coins.png") + files("truncated_jpeg.jpg", folder=HOSTILE)
    response = post_job(client, {"files": upload, "operations": ["threshold", "color_inversion"]}, path="/upload")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) >= {"message", "processed_files"} and len(body["processed_files"]) == 2
    first, second = (path_of(u) for u in body["processed_files"])
    assert client.get(first).status_code == 202
    with dispatcher(store, settings):
        wait_job(client, body["job_id"])
    ok = client.get(first)
    assert ok.status_code == 200 and ok.mimetype == "image/png"
    failed = client.get(second)
    assert_error(failed, 422, "task_failed", "truncated_jpeg.jpg", "truncated")
    with zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/jobs/{body['job_id']}/archive").data)) as zf:
        assert zf.namelist() == ["001-sk_coins-threshold.png", "FAILED.txt"]
        assert "truncated_jpeg.jpg" in zf.read("FAILED.txt").decode()


def test_events_stream_progress_until_the_job_ends(app, client, store, settings):
    job = post_job(client, {"files": files("sk_camera.png", "pil_hopper.bmp"), "pipeline": "grayscale"}).get_json()
    with dispatcher(store, settings):
        response = client.get(f"/api/v1/jobs/{job['id']}/events")
        assert response.mimetype == "text/event-stream"
        text = response.get_data(as_text=True)          # the stream ends when the job ends
    events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "end" and "gone" not in kinds
    last = json.loads([data for kind, data in events if kind == "progress"][-1])
    assert last["counts"]["done"] == 2 and last["state"] == "done"
    assert_error(client.get("/api/v1/jobs/nope/events"), 404, "not_found")


def test_events_say_gone_when_the_job_is_deleted(app, client, store):
    job = post_job(client, {"files": files("sk_camera.png"), "pipeline": "grayscale"}).get_json()
    with app.test_request_context():
        from pixmill.web.present import job_json
        stream = job_events(store, job["id"], None, job_json, poll=0.01, max_seconds=5)
        assert next(stream).startswith("retry:")
        assert next(stream).startswith("event: progress")
        store.delete_job(job["id"])
        assert next(stream).startswith("event: gone")
        assert next(stream, None) is None


def test_event_streams_are_limited_to_half_the_threads(store):
    settings = replace(store.settings, threads=2)                      # one stream at a time
    client = make_client(create_app(settings, store, sse_poll=0.01, sse_max_seconds=20))
    job = post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}).get_json()
    url = f"/api/v1/jobs/{job['id']}/events"
    first = client.get(url, buffered=False)
    assert next(first.response).startswith(b"retry:")
    busy = client.get(url)
    assert_error(busy, 503, "busy", "poll GET /api/v1/jobs/")
    assert busy.headers["Retry-After"]
    first.close()                                                      # the slot comes back
    unstarted = client.get(url, buffered=False)
    unstarted.close()                                                  # closed before its first byte
    again = client.get(url, buffered=False)
    assert again.status_code == 200
    again.close()


def test_cancelled_job_results_are_gone(client, store):
    job = post_job(client, {"files": files("sk_camera.png"), "pipeline": "grayscale"}).get_json()
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert_error(client.get(path_of(job["tasks"][0]["result_url"])), 404, "not_found")
    assert_error(client.delete(f"/api/v1/jobs/{job['id']}"), 404, "not_found")


# ---- refusals: the status, a message naming the file and the limit, and nothing stored

def big_png(pixels_side: int) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (pixels_side, pixels_side, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def refusals() -> dict:
    """Each refusal's form, status, code and words; built anew for each test, as its files are read once."""
    return {
        "unsupported": ({"files": [(io.BytesIO(b"hello, this is text"), "notes.png")], "operations": "grayscale"},
                        415, "unsupported_format", ["notes.png"]),
        "empty": (EMPTY_FILE, 400, "invalid_request", ["empty.png", "empty"]),
        "too many files": ({"files": files(*["pil_hopper.bmp"] * 5), "pipeline": "grayscale"},
                           413, "too_large", ["limit is 4"]),
        "file too big": ({"files": [(io.BytesIO(big_png(700)), "big.png")], "operations": "grayscale"},
                         413, "too_large", ["big.png", "1 MiB per-file limit"]),
        "request too big": ({"files": [(io.BytesIO(big_png(570)), f"p{i}.png") for i in range(4)],
                             "pipeline": "grayscale"}, 413, "too_large", ["3 MiB per-request limit"]),
        "corrupt header": ({"files": files("broken.png", folder=HOSTILE), "operations": "grayscale"},
                           422, "corrupt_image", ["broken.png"]),
        "bad parameter": ({"files": files("sk_camera.png"), "operations": "grayscale | blur(ksize=4)"},
                          400, "invalid_pipeline", ["sk_camera.png", "step 2 blur", "ksize", "odd"]),
        "unknown operation": ({"files": files("sk_camera.png"), "operations": "greyscale"},
                              400, "invalid_pipeline", ["sk_camera.png", "step 1", "did you mean grayscale"]),
        "count mismatch": ({"files": files("sk_camera.png", "pil_hopper.bmp"), "operations": "grayscale"},
                           400, "invalid_request", ["2 files but 1 operation"]),
        "no files": ({"operations": "grayscale"}, 400, "invalid_request", ["no images"]),
        "no operation": ({"files": files("sk_camera.png")}, 400, "invalid_request", ["no operation"]),
        "both": ({"files": files("sk_camera.png"), "operations": "grayscale", "pipeline": "blur"},
                 400, "invalid_request", ["not both"]),
        "bad format": ({"files": files("sk_camera.png"), "pipeline": "blur", "format": "gif"},
                       400, "invalid_request", ["format must be one of"]),
        "bad quality": ({"files": files("sk_camera.png"), "pipeline": "blur", "quality": "101"},
                        400, "invalid_request", ["quality", "1..100"]),
        "bad color": ({"files": files("sk_camera.png"), "pipeline": "blur", "color": "cmyk"},
                      400, "invalid_request", ["color must be one of srgb, keep"]),
        "bad negotiate": ({"files": files("sk_camera.png"), "pipeline": "blur", "negotiate": "please"},
                          400, "invalid_request", ["negotiate must be true or false"]),
        "unknown field": ({"files": files("sk_camera.png"), "pipeline": "blur", "colour": "red"},
                          400, "invalid_request", ["'colour'"]),
    }


REFUSALS = list(refusals())


@pytest.mark.parametrize("case", REFUSALS, ids=REFUSALS)
def test_refused_uploads_store_nothing(client, store, settings, case):
    data, status, code, words = refusals()[case]
    assert_error(post_job(client, data), status, code, *words)
    assert stored_blobs(settings) == [] and store.list_jobs() == []


def test_request_limit_is_counted_while_streaming(settings, store):
    from pixmill.web.uploads import read_upload
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n").encode()
    body = part + big_png(570) + f"\r\n--{boundary}--\r\n".encode()
    small = replace(settings, max_request_bytes=256 * 1024)
    with pytest.raises(ImageTooLarge, match="256 KiB per-request limit"):
        read_upload(io.BytesIO(body), f"multipart/form-data; boundary={boundary}", small, store)
    assert stored_blobs(settings) == []


def test_a_header_past_the_head_is_read_from_the_stored_file(client, store, settings):
    jpeg = (REAL / "sk_rocket.jpg").read_bytes()
    padding = (b"\xff\xef" + (65535).to_bytes(2, "big") + bytes(65533)) * 5   # 320 KB of APP15 before SOF
    padded = jpeg[:2] + padding + jpeg[2:]
    response = post_job(client, {"files": [(io.BytesIO(padded), "padded.jpg")], "operations": "grayscale"})
    assert response.status_code == 202, response.get_json()
    with dispatcher(store, settings):
        done = wait_job(client, response.get_json()["id"])
    assert (done["tasks"][0]["state"], done["tasks"][0]["width"]) == ("done", 640)


def test_every_hostile_file_gets_a_4xx_or_a_failed_task_never_a_5xx(client, store, settings):
    accepted = []
    for path in sorted(HOSTILE.iterdir()):
        response = post_job(client, {"files": [(io.BytesIO(path.read_bytes()), path.name)], "pipeline": "grayscale"})
        assert response.status_code in (202, 400, 413, 415, 422), (path.name, response.get_json())
        if response.status_code == 202:
            accepted.append(response.get_json()["id"])
        else:
            assert path.name in response.get_json()["message"]
    with dispatcher(store, settings):
        for job_id in accepted:
            job = wait_job(client, job_id)
            task = job["tasks"][0]
            result = client.get(path_of(task["result_url"]))
            assert (task["state"], result.status_code) in (("done", 200), ("failed", 422)), task


def test_too_many_pixels_is_refused_from_the_header(tmp_path, store):
    settings = store.settings.with_overrides(max_pixels=100_000)
    client = make_client(create_app(settings, store))
    response = post_job(client, {"files": files("sk_camera.png"), "operations": "grayscale"})
    assert_error(response, 413, "too_large", "sk_camera.png", "512×512", "MP")
    assert stored_blobs(settings) == []


def test_full_quota_is_507_and_stores_nothing(store):
    settings = replace(store.settings, quota_bytes=50_000)
    with Store.open(settings) as quota_store:
        client = make_client(create_app(settings, quota_store))
        response = post_job(client, {"files": files("sk_camera.png"), "operations": "grayscale"})
    assert_error(response, 507, "storage_full")
    assert stored_blobs(settings) == []


@pytest.mark.parametrize("body, content_type", [
    (json.dumps({"files": []}), "application/json"),
    (b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n\x89PNG",
     "multipart/form-data; boundary=xyz"),
])
def test_malformed_bodies_are_400(client, settings, body, content_type):
    response = client.post("/api/v1/jobs", data=body, content_type=content_type)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    assert stored_blobs(settings) == []


def test_http_errors_are_json(client):
    assert_error(client.get("/no/such/page"), 404, "not_found")
    assert_error(client.put("/api/v1/jobs"), 405, "method_not_allowed", "allowed")
    job = post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}).get_json()
    assert_error(client.get(f"/api/v1/jobs/{job['id']}/tasks/5/result"), 404, "not_found", "no image number 5")
    assert_error(client.get(f"/api/v1/jobs/{job['id']}/tasks/0/result?download=maybe"), 400,
                 "invalid_request", "download")


# ---- names, tokens, health and metrics

HOSTILE_NAMES = ["../../evil.png", "/etc/passwd.png", "C:/Windows/win.png", "<img src=x onerror=alert(1)>.png"]


def test_client_names_never_reach_paths_and_downloads_are_safe(client, store, settings, tmp_path):
    data = {"files": [(io.BytesIO((REAL / "pil_hopper.bmp").read_bytes()), n) for n in HOSTILE_NAMES],
            "pipeline": "grayscale"}
    job = post_job(client, data).get_json()
    assert [t["name"] for t in job["tasks"]] == HOSTILE_NAMES          # display text, kept as given
    with dispatcher(store, settings):
        wait_job(client, job["id"])
    everything = [p.name for p in tmp_path.rglob("*")]
    assert not any(n in everything for n in ("evil.png", "passwd.png", "win.png"))
    assert not (tmp_path.parent / "evil.png").exists()
    for task in job["tasks"]:
        disposition = client.get(path_of(task["result_url"]) + "?download=1").headers["Content-Disposition"]
        filename = re.search(r'filename="?([^";]+)', disposition).group(1)
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", filename), disposition
    assert "evil" not in client.get("/").get_data(as_text=True)


def test_tokens_guard_every_api_call_and_jobs_are_private(settings):
    settings = settings.with_overrides(api_tokens=("alpha-token", "beta-token"))
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        alpha = {"Authorization": "Bearer alpha-token"}
        beta = {"Authorization": "Bearer beta-token"}
        missing = client.get("/api/v1/operations")
        assert_error(missing, 401, "unauthorized", "Bearer")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(client.get("/api/v1/operations", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        assert_error(post_job(client, {"files": files("pil_hopper.bmp"), "operations": "grayscale"}, path="/upload"),
                     401, "unauthorized")
        assert stored_blobs(settings) == []
        job = post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}, headers=alpha).get_json()
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=alpha).status_code == 200
        for url in (f"/api/v1/jobs/{job['id']}", path_of(job["tasks"][0]["source_url"]),
                    f"/api/v1/jobs/{job['id']}/events"):
            assert_error(client.get(url, headers=beta), 404, "not_found")
        assert_error(client.delete(f"/api/v1/jobs/{job['id']}", headers=beta), 404, "not_found")
        assert client.get("/healthz").status_code in (200, 503) and client.get("/").status_code == 200
        spec = client.get("/api/v1/openapi.json").get_json()
        assert spec["paths"]["/api/v1/jobs"]["post"]["security"] == [{"bearer": []}]


def test_a_full_queue_refuses_new_uploads_with_429_and_stores_nothing(settings):
    settings = settings.with_overrides(max_queued_tasks=3)
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        first = post_job(client, {"files": files(*["pil_hopper.bmp"] * 4), "pipeline": "grayscale"})
        assert first.status_code == 202                               # 0 queued before it: accepted
        before = stored_blobs(settings)
        for path in ("/api/v1/jobs", "/upload"):
            data = {"files": files("pil_hopper.bmp"), "operations": "grayscale"}
            refused = post_job(client, data, path=path)
            assert_error(refused, 429, "too_many_jobs", "4 tasks", "limit of 3")
            assert int(refused.headers["Retry-After"]) > 0
        assert stored_blobs(settings) == before and len(store.list_jobs()) == 1
        client.delete(f"/api/v1/jobs/{first.get_json()['id']}")
        assert post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}).status_code == 202


def test_a_token_with_too_many_unfinished_jobs_gets_429_and_the_others_do_not(settings):
    settings = settings.with_overrides(api_tokens=("alpha-token", "beta-token"), max_jobs_per_token=2)
    alpha = {"Authorization": "Bearer alpha-token"}
    beta = {"Authorization": "Bearer beta-token"}
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        jobs = [post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}, headers=alpha)
                for _ in range(2)]
        assert [j.status_code for j in jobs] == [202, 202]
        before = stored_blobs(settings)
        refused = post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}, headers=alpha)
        assert_error(refused, 429, "too_many_jobs", "2 unfinished jobs")
        assert stored_blobs(settings) == before
        other = post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}, headers=beta)
        assert other.status_code == 202
        client.delete(f"/api/v1/jobs/{jobs[0].get_json()['id']}", headers=alpha)   # one ended: room again
        assert post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"},
                        headers=alpha).status_code == 202
        spec = client.get("/api/v1/openapi.json", headers=alpha).get_json()
        assert "429" in spec["paths"]["/api/v1/jobs"]["post"]["responses"]


def test_listing_is_off_without_tokens_unless_asked_for(settings):
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        job = post_job(client, {"files": files("pil_hopper.bmp"), "pipeline": "grayscale"}).get_json()
        assert_error(client.get("/api/v1/jobs"), 404, "not_found", "PIXMILL_LIST_JOBS=1")
        listed = make_client(create_app(settings.with_overrides(list_jobs=1), store)).get("/api/v1/jobs").get_json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["next"] is None


def test_listing_pages_through_250_jobs_of_a_token_newest_first_and_never_shows_another_s(settings):
    from pixmill.web.security import owner_key

    settings = settings.with_overrides(api_tokens=("alpha-token", "beta-token"))
    with Store.open(settings) as store:
        client = make_client(create_app(settings, store))
        mine = [store.create_job([NewTask(f"{i}.png", parse_pipeline("grayscale"), store.put_blob(b"x"), "png")],
                                 Output(), owner=owner_key("alpha-token")).id for i in range(250)]
        theirs = store.create_job([NewTask("b.png", parse_pipeline("grayscale"), store.put_blob(b"y"), "png")],
                                  Output(), owner=owner_key("beta-token")).id
        alpha = {"Authorization": "Bearer alpha-token"}
        seen, cursor, pages = [], None, 0
        while True:
            query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(f"/api/v1/jobs{query}", headers=alpha).get_json()
            seen += [j["id"] for j in page["jobs"]]
            pages += 1
            cursor = page["next"]
            if cursor is None:
                break
            assert pages < 10
        assert pages == 3 and seen == list(reversed(mine))              # newest first, each once
        assert [j["id"] for j in client.get("/api/v1/jobs", headers={"Authorization": "Bearer beta-token"})
                .get_json()["jobs"]] == [theirs]
        assert len(client.get("/api/v1/jobs", headers=alpha).get_json()["jobs"]) == 20     # the default page
        assert_error(client.get("/api/v1/jobs?cursor=bm90LWEtY3Vyc29y", headers=alpha), 400, "invalid_request",
                     "cursor")
        assert client.get("/api/v1/jobs?limit=101", headers=alpha).status_code == 400
        assert_error(client.get("/api/v1/jobs"), 401, "unauthorized")


def test_healthz_reports_store_and_workers(client, store):
    body = client.get("/healthz")
    assert body.status_code == 503
    assert body.get_json() == {"status": "degraded", "store": "ok", "workers": 0, "nodes": []}
    store.register_dispatcher("test-dispatcher", host="here", pid=1, pid_started=None, engine="local", workers=3)
    body = client.get("/healthz").get_json()
    assert (body["status"], body["workers"], [n["id"] for n in body["nodes"]]) == ("ok", 3, ["test-dispatcher"])


def test_metrics_count_tasks_queue_workers_and_times(client, store, settings):
    job = post_job(client, {"files": files("pil_hopper.bmp", "sk_camera.png"), "pipeline": "grayscale"}).get_json()
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pixmill_tasks{state="queued"} 2.0' in text and "pixmill_queue_depth 2.0" in text
    with dispatcher(store, settings):
        wait_job(client, job["id"])
        text = client.get("/metrics").get_data(as_text=True)
        assert "pixmill_workers 1.0" in text
    assert 'pixmill_tasks{state="done"} 2.0' in text
    assert 'pixmill_task_seconds_bucket{le="+Inf"} 2.0' in text
    # The histogram is cumulative: later scrapes count each task once, and never less.
    for _ in range(2):
        text = client.get("/metrics").get_data(as_text=True)
        assert "pixmill_task_seconds_count 2.0" in text
