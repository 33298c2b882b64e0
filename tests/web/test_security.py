"""Security through Flask's test client: client file names, job-id guessing, tokens, headers and zip names.

tests/web/test_web_api.py covers the basics (four hostile names, a missing token, another token's job);
this covers the rest: NUL bytes, over-long, absolute and Windows names, HTML in names and in error
messages, ids that look like paths or SQL, every endpoint behind a token, every HTML page's
headers, and the names inside the zip archive.
"""

from __future__ import annotations

import io
import re
import secrets
import zipfile
from pathlib import Path

import pytest

from pixmill.config import Settings
from pixmill.store import Store
from pixmill.web import create_app
from pixmill.web.security import download_name, safe_stem
from support.web import dispatcher, make_client, path_of, wait_job

pytestmark = pytest.mark.both_backends   # each test on SQLite and on PostgreSQL

REAL = Path(__file__).parents[1] / "data" / "real"
STATIC = Path(__file__).parents[2] / "src" / "pixmill" / "web" / "static"
IMAGE = (REAL / "pil_hopper.bmp").read_bytes()
SAFE = re.compile(r"[A-Za-z0-9._+-]+")
BOUNDARY = "pixmill-security-boundary"

NAMES = [
    "../../evil.png", "..\\..\\evil.png", "/etc/passwd", "/tmp/x/../../root/.ssh/id_rsa.png",
    "C:\\Windows\\System32\\cmd.png", "\\\\server\\share\\x.png", "....//....//x.png",
    "<script>alert(1)</script>.png", "\"><img src=x onerror=alert(document.cookie)>.png",
    "javascript:alert(1).png", "a\x00b.png", "evil.png\x00.exe", "x" * 5000 + ".png",
    "\u202egnp.exe", "名前.png", "COM1", ".htaccess", "", " ", ".", "..", "%2e%2e%2fetc%2fpasswd",
]


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A raw multipart/form-data body, so names reach the server exactly as written (NULs included)."""
    out = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass")
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post_raw(client, parts, path: str = "/api/v1/jobs", headers=None):
    return client.post(path, data=multipart(parts), headers=headers,
                       content_type=f"multipart/form-data; boundary={BOUNDARY}")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url,
                    engine="local", workers=1, max_files=len(NAMES) + 2)


@pytest.fixture
def client(settings: Settings, store: Store):
    return make_client(create_app(settings, store, sse_poll=0.05, sse_max_seconds=0.5))


def disposition_name(response) -> str:
    return re.search(r'filename="?([^";]+)', response.headers["Content-Disposition"]).group(1)


# ---- client file names

def test_hostile_names_are_display_text_only_never_paths(client, store, settings, tmp_path):
    names = [n.replace('"', "'") for n in NAMES]      # a quote would end the header's quoted string
    parts = [("files", name, IMAGE) for name in names] + [("pipeline", None, b"grayscale")]
    response = post_raw(client, parts)
    assert response.status_code == 202, response.get_json()
    assert response.mimetype == "application/json" and response.headers["X-Content-Type-Options"] == "nosniff"
    job = response.get_json()
    shown = [t["name"] for t in job["tasks"]]
    assert len(shown) == len(names)
    for given, kept in zip(names, shown):
        assert kept and len(kept) <= 255                      # over-long names are cut, empty ones named
        if given.strip() and len(given) <= 255 and "\\" not in given:   # the header unquotes backslashes
            assert kept == given.replace("\0", "\ufffd")       # HTML kept as text, in JSON; a NUL marked
    with dispatcher(store, settings):
        done = wait_job(client, job["id"])
    assert done["counts"]["done"] == len(names)
    # Nothing outside the blob folder was written, and inside it only server-made keys.
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and settings.blob_dir not in p.parents]
    assert all(p.parent == settings.data_dir and p.name.startswith("pixmill.db") for p in outside), outside
    for blob in settings.blob_dir.rglob("*"):
        if blob.is_file():
            assert re.fullmatch(r"[0-9a-f]{32}", blob.name), blob
    for task in done["tasks"]:
        for url in (task["result_url"], task["source_url"]):
            for query in ("", "?download=true"):
                answer = client.get(path_of(url) + query)
                assert answer.status_code == 200
                name = disposition_name(answer)
                assert SAFE.fullmatch(name) and not name.startswith(".") and len(name) <= 160, name
                assert "\x00" not in answer.headers["Content-Disposition"]


@pytest.mark.parametrize("name", ["../../a.png", "/abs/b.png", "<b>c</b>.png", "d\x00e.png", "f" * 300])
def test_a_refused_file_is_named_in_json_never_html(client, settings, name):
    response = post_raw(client, [("files", name, b"plain text, not an image"), ("pipeline", None, b"grayscale")])
    assert response.status_code == 415 and response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    message = response.get_json()["message"]
    assert name.replace("\0", "\ufffd")[:255] in message   # as JSON text, served as JSON with nosniff: never rendered
    assert not any(p.is_file() for p in settings.blob_dir.rglob("*"))


@pytest.mark.parametrize("name", NAMES)
def test_download_names_are_safe_ascii(name):
    for suffix in ("", "grayscale+blur", "../../x", "<script>"):
        result = download_name(name, "png", suffix)
        assert SAFE.fullmatch(result) and not result.startswith(".") and ".." not in result, (name, result)
        assert len(result) <= 80 + 1 + 60 + 5
    assert "/" not in safe_stem(name) and "\\" not in safe_stem(name)


def test_the_page_writes_names_as_text_never_as_html():
    for script in STATIC.glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in code, f"{script.name} uses {sink}"


# ---- job ids: guessing, shapes, no enumeration

GUESSES = ["a", "0" * 24, "A" * 24, "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%00", "' OR '1'='1",
           "1; DROP TABLE jobs", "*", "%", "_", "null", "undefined", "-1", "x" * 3000]


def test_guessed_job_ids_get_404_on_every_endpoint(client):
    real = post_raw(client, [("files", "a.bmp", IMAGE), ("pipeline", None, b"grayscale")]).get_json()["id"]
    # 200 random ids of the real length, and a real id changed in one character
    guesses = GUESSES + [secrets.token_urlsafe(18) for _ in range(200)]
    guesses += [real[:-1] + ("A" if real[-1] != "A" else "B"), real.upper() if real.upper() != real else real.lower()]
    for guess in guesses:
        for suffix in ("", "/tasks/0/result", "/tasks/0/source", "/archive", "/events"):
            response = client.get(f"/api/v1/jobs/{guess}{suffix}")
            assert response.status_code == 404, (guess, suffix, response.status_code)
            assert response.mimetype == "application/json"
        assert client.delete(f"/api/v1/jobs/{guess}").status_code in (404, 405)
    assert client.get(f"/api/v1/jobs/{real}").status_code == 200      # still there, untouched


def test_without_tokens_there_is_no_way_to_list_jobs(client):
    # Job ids are the only secret without tokens, so the listing (GET /api/v1/jobs) is off: 404.
    job = post_raw(client, [("files", "a.bmp", IMAGE), ("pipeline", None, b"grayscale")]).get_json()
    for path in ("/api/v1/jobs", "/api/v1/jobs/", "/api/v1/jobs?all=1", "/api/v1", "/api/v1/", "/jobs",
                 "/api/v1/tasks", "/blobs", "/data", "/pixmill.db", "/static/../pixmill.db", "/metrics"):
        response = client.get(path)
        assert job["id"] not in response.get_data(as_text=True), path
        if path != "/metrics":
            assert response.status_code in (404, 405), (path, response.status_code)
    assert "PIXMILL_LIST_JOBS" in client.get("/api/v1/jobs").get_json()["message"]
    spec = client.get("/api/v1/openapi.json").get_json()
    assert all("{job_id}" in p or "jobs" not in p or p == "/api/v1/jobs" for p in spec["paths"])


def test_static_files_cannot_reach_outside_their_folder(client):
    for path in ("/static/../__init__.py", "/static/..%2f__init__.py", "/static/%2e%2e/__init__.py",
                 "/api/v1/docs/assets/..%2f..%2fetc%2fpasswd", "/api/v1/docs/assets/index.html"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code)


# ---- tokens

TOKENS = ("alpha-" + "a" * 20, "beta-" + "b" * 20)


@pytest.fixture
def token_client(tmp_path: Path):
    config = Settings(data_dir=tmp_path / "tokens", engine="local", workers=1, api_tokens=TOKENS)
    with Store.open(config) as store:
        yield make_client(create_app(config, store)), store, config


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_every_api_endpoint_needs_a_valid_token(token_client):
    client, store, config = token_client
    job = post_raw(client, [("files", "a.bmp", IMAGE), ("pipeline", None, b"grayscale")],
                   headers=bearer(TOKENS[0])).get_json()
    base = f"/api/v1/jobs/{job['id']}"
    calls = [("GET", "/api/v1/operations"), ("POST", "/api/v1/jobs"), ("GET", base), ("GET", base + "/events"),
             ("GET", base + "/tasks/0/result"), ("GET", base + "/tasks/0/source"), ("GET", base + "/archive"),
             ("DELETE", base), ("POST", "/upload"), ("GET", "/api/v1/jobs/" + "x" * 24)]
    wrong = [None, {"Authorization": "Bearer"}, {"Authorization": "Bearer "}, bearer("nope"),
             bearer(TOKENS[0][:-1]), bearer(TOKENS[0] + "x"), bearer(TOKENS[0].upper()),
             {"Authorization": f"Basic {TOKENS[0]}"}, {"Authorization": TOKENS[0]},
             {"X-Api-Token": TOKENS[0]}, bearer(",".join(TOKENS)), bearer(TOKENS[0] + "\x00")]
    for method, path in calls:
        for headers in wrong:
            response = client.open(path, method=method, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.get_json()["error"] == "unauthorized"
            assert TOKENS[0] not in response.get_data(as_text=True)
        assert client.open(f"{path}?token={TOKENS[0]}", method=method).status_code == 401   # never in the URL
    assert store.get_job(job["id"]).state == "queued"            # no refused DELETE went through
    assert len(store.list_jobs()) == 1                            # no refused POST stored anything


def test_another_tokens_jobs_are_404_everywhere_and_owners_are_not_tokens(token_client):
    client, store, config = token_client
    mine = post_raw(client, [("files", "a.bmp", IMAGE), ("pipeline", None, b"grayscale")],
                    headers=bearer(TOKENS[0])).get_json()
    legacy = post_raw(client, [("files", "b.bmp", IMAGE), ("operations", None, b"blur")], path="/upload",
                      headers=bearer(TOKENS[0])).get_json()
    with dispatcher(store, config):
        wait_job(client, mine["id"], headers=bearer(TOKENS[0]))
        wait_job(client, legacy["job_id"], headers=bearer(TOKENS[0]))
    for job_id in (mine["id"], legacy["job_id"]):
        base = f"/api/v1/jobs/{job_id}"
        for suffix in ("", "/events", "/tasks/0/result", "/tasks/0/source", "/archive", "/tasks/0/result?download=1"):
            assert client.get(base + suffix, headers=bearer(TOKENS[0])).status_code == 200, suffix
            other = client.get(base + suffix, headers=bearer(TOKENS[1]))
            assert other.status_code == 404 and other.get_json()["error"] == "not_found", suffix
        assert client.delete(base, headers=bearer(TOKENS[1])).status_code == 404
        assert client.get(base, headers=bearer(TOKENS[0])).status_code == 200
    for url in legacy["processed_files"]:
        assert client.get(path_of(url), headers=bearer(TOKENS[1])).status_code == 404
    owners = {row[0] for row in store.database.connection().execute("SELECT owner FROM jobs")}
    assert len(owners) == 1 and not any(t in str(owners) for t in TOKENS)
    db_bytes = config.db_path.read_bytes() + b"".join(p.read_bytes() for p in config.data_dir.glob("pixmill.db-*"))
    assert not any(t.encode() in db_bytes for t in TOKENS), "a token was stored"


# ---- headers on every HTML response

def test_every_html_response_has_csp_and_nosniff(client, settings, store):
    job = post_raw(client, [("files", "a.bmp", IMAGE), ("pipeline", None, b"grayscale")]).get_json()
    app = client.application
    paths = set()
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods:
            path = str(rule)
            path = path.replace("<job_id>", job["id"]).replace("<int:n>", "0").replace("<n>", "0")
            path = re.sub(r"<(?:path:)?filename>", "app.js", path)
            path = re.sub(r"<name>", "swagger-ui.css", path)
            paths.add(path)
    paths |= {"/", "/?x=<script>", "/api/v1/docs", "/nope", "/api/v1/nope", "/static/nope.html"}
    html = 0
    for path in sorted(paths):
        response = client.get(path, headers={"Accept": "text/html"})
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        csp = response.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, path
        script = csp.split("script-src")[1].split(";")[0]
        assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script and "*" not in script, path
        if response.mimetype == "text/html":
            html += 1
            assert "<script>" not in response.get_data(as_text=True), path
    assert html >= 2                       # the page and the docs at least


# ---- the zip archive

def test_zip_entry_names_are_safe_and_unique(client, store, settings):
    names = [n.replace('"', "'") for n in NAMES] + ["same.png", "same.png"]
    parts = [("files", name, IMAGE) for name in names] + [("pipeline", None, b"grayscale | blur")]
    job = post_raw(client, parts).get_json()
    with dispatcher(store, settings):
        wait_job(client, job["id"])
    archive = client.get(f"/api/v1/jobs/{job['id']}/archive")
    assert archive.status_code == 200
    assert SAFE.fullmatch(disposition_name(archive))
    with zipfile.ZipFile(io.BytesIO(archive.data)) as zf:
        members = zf.infolist()
        entries = [m.filename for m in members]
        assert len(entries) == len(names) == len(set(entries))
        for entry in entries:
            assert SAFE.fullmatch(entry) and not entry.startswith(".") and ".." not in entry, entry
            assert re.match(r"\d{3}-", entry)
        for info in members:
            assert not info.is_dir() and (info.external_attr >> 16) & 0o170000 in (0, 0o100000)   # no symlinks
        extract = settings.data_dir.parent / "extract"
        zf.extractall(extract)
        assert sorted(p.name for p in extract.iterdir()) == sorted(entries)
