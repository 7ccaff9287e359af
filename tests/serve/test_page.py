"""The page at / in a real headless browser: upload a PNG, wait for the zero-shot scores, check the
reconstruction loaded. Uses Debian's chromium through Playwright's Python package (never `playwright
install`); skips with the reason when either is missing."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.serve import media

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("TOKLIP_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the page test needs Playwright's Python package: pip install playwright")
    exe = _chromium()
    if exe is None:
        pytest.skip("the page test needs a chromium binary (Debian: apt-get install chromium; or set TOKLIP_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)

    def outside(request) -> None:  # the page must load nothing from anywhere but the server
        if not request.url.startswith((server.url, "blob:", "data:")):
            problems.append(f"request outside the server: {request.url}")

    page.on("request", outside)
    page.goto(server.url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent.includes('toklip-test')", timeout=30_000)
    yield page, problems
    page.close()


def test_upload_shows_reconstruction_grid_and_scores(page, tmp_path):
    page, problems = page
    upload = tmp_path / "upload.png"
    media.noise(120, 90, seed=7).save(upload)
    labels = ["a red square", "random noise", "a cat <script>alert(1)</script>"]
    page.fill("#labels", "\n".join(labels))
    page.set_input_files("#file", str(upload))

    page.wait_for_function("() => document.querySelectorAll('#scores li').length === 3", timeout=60_000)
    items = page.locator("#scores li")
    shown = sorted(items.nth(i).get_attribute("data-label") for i in range(3))
    assert shown == sorted(labels)
    probs = [float(items.nth(i).get_attribute("data-prob")) for i in range(3)]
    assert abs(sum(probs) - 1) < 1e-4 and probs == sorted(probs, reverse=True)
    assert "<script>" in items.locator("text=a cat").inner_text()  # shown as text, not markup

    page.wait_for_function("() => { const r = document.getElementById('recon');"
                           " return r.complete && r.naturalWidth > 0; }", timeout=30_000)
    assert page.eval_on_selector("#recon", "r => [r.naturalWidth, r.naturalHeight]") == [64, 64]
    assert page.eval_on_selector("#original", "o => o.naturalWidth") == 120
    assert page.eval_on_selector("#grid", "c => [c.width, c.height]") == [8, 8]
    painted = page.eval_on_selector(
        "#grid", "c => Array.from(c.getContext('2d').getImageData(0, 0, 8, 8).data).filter((v, i) => i % 4 == 3)")
    assert set(painted) == {255}  # every token cell coloured
    assert page.inner_text("#status") == "done"
    assert problems == []


def test_non_image_upload_shows_the_server_error(page, tmp_path):
    page, problems = page
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"these are notes, not pixels")
    page.set_input_files("#file", str(bogus))
    page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=30_000)
    assert "400" in page.inner_text("#status") and "not an image" in page.inner_text("#status")
    assert [p for p in problems if not p.startswith("console: Failed to load resource")] == []


def test_generate_panel_is_disabled_with_a_note_without_a_generator(page):
    page, problems = page
    page.wait_for_function("() => document.getElementById('generate').dataset.available === 'false'", timeout=30_000)
    assert page.is_disabled("#gen-run") and page.is_disabled("#gen-class")
    assert "--generator" in page.inner_text("#gen-note")
    assert problems == []
