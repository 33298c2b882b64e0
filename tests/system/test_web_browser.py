"""The page at / driven in real headless Chromium (Debian's), against a real `pixmill serve`."""

from __future__ import annotations

import base64
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from support.servers import HOSTILE_DIR, REAL, Server, running_server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("browser"), engine="local", workers=2) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # Listening from the start turns on Chromium's file-chooser interception before the first
    # chooser opens; enabled only by expect_file_chooser(), the first chooser is sometimes missed.
    page.on("filechooser", lambda chooser: None)
    page.problems = []                                     # console errors, page errors, foreign requests
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: r.url.startswith((server.url, "blob:", "data:"))
            or page.problems.append(f"request to another origin: {r.url}"))
    try:
        yield page
    finally:
        context.close()


def save_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """Save a full-page screenshot under tmp_path/artifacts, and under $PIXMILL_ARTIFACTS if set."""
    folders = [tmp_path / "artifacts"] + ([Path(os.environ["PIXMILL_ARTIFACTS"])]
                                          if os.environ.get("PIXMILL_ARTIFACTS") else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)
        assert (folder / name).stat().st_size > 10_000


def drop_file(page: Page, path: Path, mime: str) -> None:
    """Drop a file on the drop zone as a drag from the desktop would."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name, mime]) => {
             const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
             const transfer = new DataTransfer();
             transfer.items.add(new File([bytes], name, { type: mime }));
             return transfer;
           }""", [data, path.name, mime])
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


@pytest.mark.browser
@pytest.mark.slow
def test_three_images_with_different_operations_to_a_zip(page: Page, server: Server, tmp_path: Path):
    page.goto(server.url)
    expect(page.locator("body.ready")).to_have_count(1)

    # two picked with the keyboard-operable chooser, one dropped
    page.focus("#pick")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files([str(REAL / "sk_camera.png"), str(REAL / "sk_rocket.jpg")])
    drop_file(page, REAL / "pil_hopper.bmp", "image/bmp")
    expect(page.locator(".item")).to_have_count(3)
    page.wait_for_function("() => [...document.querySelectorAll('.item img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")

    # "apply to all", then a different operation for each image, with generated controls
    page.select_option("#all-s0-op", "color_inversion")
    page.click("#apply-all")
    for key in (1, 2, 3):
        expect(page.locator(f"#item{key}-text")).to_have_value("color_inversion")
    page.select_option("#item1-s0-op", "grayscale")
    page.select_option("#item2-s0-op", "blur")
    ksize = page.locator("#item2-s0-ksize + .exact")
    ksize.fill("9")
    ksize.press("Tab")                                      # the value is taken on change, like a person
    page.select_option("#item3-s0-op", "resize")
    scale = page.locator("#item3-s0-scale + .exact")
    scale.fill("0.25")
    scale.press("Tab")
    expect(page.locator("#item1-text")).to_have_value("grayscale")
    expect(page.locator("#item2-text")).to_have_value("blur(ksize=9)")
    expect(page.locator("#item3-text")).to_have_value("resize(scale=0.25)")
    assert page.locator("#item2-s0-ksize").get_attribute("min") == "1"
    page.select_option("#format", "png")

    page.click("#submit")
    expect(page.locator("#progress-box")).to_be_visible()
    expect(page.locator("#progress-list progress")).to_have_count(3)
    expect(page.locator("#overall-label")).to_have_text("3 of 3 images finished")
    expect(page.locator("#gallery .result.done")).to_have_count(3)
    after = page.locator("#gallery .result img").nth(1)
    expect(after).to_have_attribute("alt", "Result of grayscale on sk_camera.png")
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    sizes = page.eval_on_selector_all("#gallery .result",
                                      "rs => rs.map(r => r.querySelectorAll('figcaption')[1].textContent)")
    assert sizes == ["After (512×512, PNG)", "After (640×427, PNG)", "After (32×32, PNG)"]

    with page.expect_download() as download:
        page.click("#zip")
    path = download.value.path()
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["001-sk_camera-grayscale.png", "002-sk_rocket-blur.png",
                                         "003-pil_hopper-resize.png"]
    save_screenshot(page, tmp_path, "pixmill-results.png")

    page.set_viewport_size({"width": 375, "height": 800})        # a phone: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    save_screenshot(page, tmp_path, "pixmill-results-phone.png")
    assert page.problems == []


@pytest.mark.browser
@pytest.mark.slow
def test_heic_and_avif_uploads_preview_or_say_why_and_their_results_show(page: Page, server: Server,
                                                                         tmp_path: Path):
    import pillow_heif
    from PIL import Image

    rocket = Image.open(REAL / "sk_rocket.jpg")                         # 640×427
    pillow_heif.from_pillow(rocket).save(tmp_path / "phone.heic", quality=90)
    rocket.save(tmp_path / "web.avif", quality=80)
    page.goto(server.url)
    expect(page.locator("body.ready")).to_have_count(1)
    page.set_input_files("#file-input", [str(tmp_path / "phone.heic"), str(tmp_path / "web.avif")])
    expect(page.locator(".item")).to_have_count(2)
    # Chromium cannot draw HEIC: the page says so; it draws AVIF
    expect(page.locator(".item").nth(0).locator(".thumb.none")).to_have_text("HEIC: no preview in this browser")
    page.wait_for_function("() => { const i = document.querySelectorAll('.item')[1].querySelector('img.thumb');"
                           " return i && i.complete && i.naturalWidth > 0; }")

    page.select_option("#all-s0-op", "grayscale")
    page.click("#apply-all")
    page.click("#submit")                                               # format: same as input (auto)
    expect(page.locator("#gallery .result.done")).to_have_count(2)
    heic, avif = page.locator("#gallery .result").nth(0), page.locator("#gallery .result").nth(1)
    expect(heic.locator(".pair .hint")).to_have_text(
        "No preview: this browser cannot show HEIC; use the download link.")
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert heic.locator("img").count() == 1 and avif.locator("img").count() == 2       # after; before and after
    sizes = page.eval_on_selector_all("#gallery .result",
                                      "rs => rs.map(r => [...r.querySelectorAll('figcaption')].pop().textContent)")
    assert sizes == ["After (640×427, JPEG)", "After (640×427, AVIF)"]
    save_screenshot(page, tmp_path, "pixmill-heic-avif.png")
    assert page.problems == []


@pytest.mark.browser
def test_api_docs_render_offline(page: Page, server: Server):
    page.goto(server.url + "api/v1/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock").count() >= 11
    expect(page.locator(".opblock-summary-path").filter(has_text="/api/v1/jobs/{job_id}/events")).to_have_count(1)
    assert page.problems == []


@pytest.mark.browser
@pytest.mark.slow
def test_errors_are_shown_in_words(page: Page, server: Server, tmp_path: Path):
    page.goto(server.url)
    expect(page.locator("body.ready")).to_have_count(1)
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image")
    page.set_input_files("#file-input", [str(notes)])
    page.click("#submit")
    expect(page.locator("#alert")).to_contain_text("notes.png: not a supported image")
    page.click(".item .remove")
    expect(page.locator(".item")).to_have_count(0)

    page.set_input_files("#file-input", [str(HOSTILE_DIR / "truncated_jpeg.jpg"), str(REAL / "sk_coins.png")])
    page.click("#submit")
    expect(page.locator("#gallery .result")).to_have_count(2)
    expect(page.locator("#gallery .result.failed .error")).to_contain_text("This image failed:")
    expect(page.locator("#gallery .result.failed .error")).to_contain_text("truncated")
    expect(page.locator("#progress-list .task.failed .state")).to_contain_text("failed")
    save_screenshot(page, tmp_path, "pixmill-errors.png")
    assert [p for p in page.problems if "the server responded with a status of 415" not in p] == []


@pytest.mark.browser
def test_recent_jobs_are_the_ones_this_browser_made_and_reopen_their_results(page: Page, browser: Browser,
                                                                              server: Server):
    page.goto(server.url)
    expect(page.locator("body.ready")).to_have_count(1)
    expect(page.locator("#recent")).to_be_hidden()
    page.set_input_files("#file-input", [str(REAL / "sk_coins.png")])
    page.select_option("#item1-s0-op", "sepia")
    page.click("#submit")
    expect(page.locator("#gallery .result.done")).to_have_count(1)
    page.goto(server.url)                                  # a new visit, without the job in the address
    expect(page.locator("#recent-list li")).to_have_count(1)
    expect(page.locator("#recent-list li")).to_contain_text("sk_coins.png")
    expect(page.locator("#recent-list li")).to_contain_text("done · 1 images")
    page.click("#recent-list a")
    expect(page.locator("#gallery .result.done")).to_have_count(1)
    assert "#job=" in page.url
    stranger = browser.new_context()                       # another browser knows none of them
    try:
        other = stranger.new_page()
        other.goto(server.url)
        expect(other.locator("body.ready")).to_have_count(1)
        other.wait_for_timeout(500)
        expect(other.locator("#recent")).to_be_hidden()
    finally:
        stranger.close()
    assert page.problems == []


@pytest.mark.browser
@pytest.mark.slow
def test_with_api_tokens_the_page_asks_for_one_and_works(browser: Browser, tmp_path: Path):
    with running_server(tmp_path / "tokens", engine="local", workers=1,
                        env={"PIXMILL_API_TOKENS": "page-token"}) as server:
        context = browser.new_context(accept_downloads=True)
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server.url)
            expect(page.locator("#token-box")).to_be_visible()
            page.fill("#token", "page-token")
            page.keyboard.press("Enter")
            expect(page.locator("body.ready")).to_have_count(1)
            page.set_input_files("#file-input", [str(REAL / "sk_camera.png")])
            page.select_option("#item1-s0-op", "edge_detection")
            page.click("#submit")
            # EventSource cannot send a token: progress comes over fetch, images as blobs
            expect(page.locator("#gallery .result.done")).to_have_count(1)
            page.wait_for_function("() => [...document.querySelectorAll('#gallery img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator("#gallery .result img").nth(1).get_attribute("src").startswith("blob:")
            with page.expect_download() as download:
                page.click("#zip")
            assert re.fullmatch(r"pixmill-[A-Za-z0-9_-]{12}\.zip", download.value.suggested_filename)
            with zipfile.ZipFile(download.value.path()) as zf:
                assert zf.namelist() == ["001-sk_camera-edge_detection.png"]
            # Recent jobs come from the token's listing: a job made elsewhere with the token shows too.
            other = requests.post(server.url + "api/v1/jobs", headers={"Authorization": "Bearer page-token"},
                                  files=[("files", ("from-a-script.png", (REAL / "sk_coins.png").read_bytes()))],
                                  data={"pipeline": "grayscale"}, timeout=30)
            assert other.status_code == 202
            page.goto(server.url)
            expect(page.locator("#recent-list li")).to_have_count(2)
            expect(page.locator("#recent-list li").first).to_contain_text("from-a-script.png")
            expect(page.locator("#recent-list li").nth(1)).to_contain_text("sk_camera.png")
        finally:
            context.close()


@pytest.mark.browser
@pytest.mark.slow
def test_without_a_free_event_stream_the_page_polls(browser: Browser, tmp_path: Path):
    # one server thread: no thread may be held by an event stream, so /events answers 503
    with running_server(tmp_path / "busy", engine="local", workers=1, env={"PIXMILL_THREADS": "1"}) as server:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            statuses = []
            page.on("response", lambda r: "/events" in r.url and statuses.append(r.status))
            page.goto(server.url)
            expect(page.locator("body.ready")).to_have_count(1)
            page.set_input_files("#file-input", [str(REAL / "sk_chelsea.png"), str(REAL / "pil_hopper.bmp")])
            page.click("#submit")
            expect(page.locator("#overall-label")).to_have_text("2 of 2 images finished")
            expect(page.locator("#gallery .result.done")).to_have_count(2)
            assert statuses and set(statuses) == {503}
        finally:
            context.close()
