"""POST /v1/generate on a real `toklip serve --generator` process (one per module): PNG and JSON answers checked
against the same generator run in-process, determinism by seed, every bad input a 4xx, metrics, /v1/info, the
page's generate panel, and how the server picks the generator's tokenizer."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import toklip
from tests.serve.test_page import browser  # noqa: F401 - the headless-browser fixture (skips without chromium)
from toklip.core.errors import ConfigError
from toklip.serve.generate import GenerateEngine, load_serving_generator, tile
from toklip.serve.process import ServerProcess
from toklip.serve.settings import ServeSettings

MAX_IMAGES = 8
GEN = "/v1/generate"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gen_folder(saved_model, tmp_path_factory):
    """A fused (concat) gpt-test generator on the served toklip-test, saved with save_generator. Its tokenizer is
    recorded by path, so the server's `auto` choice decodes with the served model."""
    folder, _ = saved_model
    torch.manual_seed(1)
    gen = toklip.build_generator("gpt-test", tokenizer=str(folder), fusion="concat", num_classes=10)
    with torch.no_grad():  # LlamaGen zero-inits the head (uniform codes, whatever the class): give it weights
        gen.output.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return toklip.gen.save_generator(gen, tmp_path_factory.mktemp("generator") / "gen")


@pytest.fixture(scope="module")
def reference_gen(gen_folder, reference):
    return toklip.load_generator(gen_folder, tokenizer=reference)


@pytest.fixture(scope="module")
def gen_server(saved_model, gen_folder) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--model", str(saved_model[0]), "--generator", str(gen_folder), "--max-generate-images",
                          str(MAX_IMAGES), "--max-wait-ms", "2", "--log-level", "warning", "--no-access-log"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gen_http(gen_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gen_server.url, timeout=60) as client:
        yield client


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _reference_pixels(gen, labels, **options) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64 tiny steps: on a busy 2-core machine, intra-op threads only fight the server
    try:
        images = gen.generate(labels=labels, **options)
    finally:
        torch.set_num_threads(threads)
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy().astype(int)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code, err
    return err["message"]


# ---------------------------------------------------------------------------------------------- answers
def test_info_describes_the_generator(gen_http):
    info = gen_http.get("/v1/info").json()
    gen = info["generator"]
    assert gen["name"] == "gpt-test" and gen["model_type"] == "c2i" and gen["num_classes"] == 10
    assert gen["num_tokens"] == 64 and gen["grid"] == [8, 8] and gen["vocab_size"] == info["vocab_size"]
    assert gen["fusion"] == "concat" and gen["tokenizer"] == "served" and gen["guidance"] is True
    assert gen["image_size"] == info["image_size"] == 64
    assert info["limits"]["max_generate_images"] == MAX_IMAGES


def test_png_grid_is_seeded_and_matches_the_library(gen_http, reference_gen):
    body = {"class": 3, "n": 4, "cfg": 2.5, "seed": 0}
    r = gen_http.post(GEN, json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert r.headers["x-toklip-seed"] == "0" and r.headers["x-toklip-classes"] == "3,3,3,3"
    grid = _pixels(r.content)
    assert grid.shape == (2 * 64 + 2, 2 * 64 + 2, 3)  # 2 x 2 images, 2 px apart
    ref = _reference_pixels(reference_gen, [3, 3, 3, 3], cfg=2.5, seed=0)
    for i in range(4):
        row, col = divmod(i, 2)
        cell = grid[row * 66:row * 66 + 64, col * 66:col * 66 + 64]
        assert np.abs(cell - ref[i]).max() <= 1, i
    assert gen_http.post(GEN, json=body).content == r.content  # same seed: the same bytes
    assert gen_http.post(GEN, json={**body, "seed": 1}).content != r.content
    assert gen_http.post(GEN, json={**body, "class": 4}).content != r.content  # the class reaches the model


def test_json_answer_single_png_and_server_chosen_seed(gen_http, reference_gen):
    r = gen_http.post(GEN, json={"classes": [1, 2], "seed": 5, "cfg": 1.0, "top_k": 100, "format": "json"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["seed"] == 5 and out["classes"] == [1, 2] and out["cfg"] == 1.0 and out["generator"] == "gpt-test"
    assert out["model"] == "toklip-test" and out["image_size"] == 64
    assert set(out["timing"]) == {"generate_s", "total_s"} and 0 < out["timing"]["generate_s"] <= out["timing"]["total_s"]
    pngs = [base64.b64decode(p) for p in out["images"]]
    ref = _reference_pixels(reference_gen, [1, 2], cfg=1.0, top_k=100, seed=5)
    assert len(pngs) == 2 and all(np.abs(_pixels(p) - ref[i]).max() <= 1 for i, p in enumerate(pngs))
    # format png: exactly one image, the image itself
    one = gen_http.post(GEN, json={"class": 7, "seed": 9, "format": "png"})
    assert one.status_code == 200 and _pixels(one.content).shape == (64, 64, 3)
    assert gen_http.post(GEN, json={"class": 7, "seed": 9}).content == one.content  # png_grid of one = the image
    # no seed: the server picks one, reports it, and it reproduces the images; Accept selects JSON
    first = gen_http.post(GEN, json={"class": 5, "n": 2}, headers={"Accept": "application/json"}).json()
    assert isinstance(first["seed"], int) and 0 <= first["seed"] < 2**53 and first["cfg"] == 4.0
    again = gen_http.post(GEN, json={"class": 5, "n": 2, "seed": first["seed"], "format": "json"}).json()
    assert again["images"] == first["images"]


def _raw(data: bytes, ctype: str = "application/json"):
    return {"content": data, "headers": {"Content-Type": ctype}}


BAD = [  # (id, request kwargs, status, code, a fragment of the message)
    ("n-too-large", {"json": {"class": 1, "n": MAX_IMAGES + 1}}, 413, "too_many_items", f"limit of {MAX_IMAGES}"),
    ("classes-too-many", {"json": {"classes": [0] * 5, "n": 2}}, 413, "too_many_items", "10 images"),
    ("n-zero", {"json": {"class": 1, "n": 0}}, 422, "invalid_field", "n:"),
    ("class-out-of-range", {"json": {"class": 10}}, 422, "invalid_class", "0 to 9"),
    ("class-negative", {"json": {"classes": [2, -1]}}, 422, "invalid_class", "class -1"),
    ("class-huge", {"json": {"class": 10**30}}, 422, "invalid_class", "out of range"),
    ("cfg-below-1", {"json": {"class": 1, "cfg": 0.5}}, 422, "invalid_field", "cfg"),
    ("cfg-above-20", {"json": {"class": 1, "cfg": 21}}, 422, "invalid_field", "cfg"),
    ("cfg-nan", _raw(b'{"class": 1, "cfg": NaN}'), 422, "invalid_field", "cfg"),
    ("class-string", {"json": {"class": "3"}}, 422, "invalid_field", "class"),
    ("class-float", {"json": {"class": 3.0}}, 422, "invalid_field", "class"),
    ("class-bool", {"json": {"class": True}}, 422, "invalid_field", "class"),
    ("n-float", {"json": {"class": 1, "n": 2.5}}, 422, "invalid_field", "n:"),
    ("classes-not-list", {"json": {"classes": 3}}, 422, "invalid_field", "classes"),
    ("classes-empty", {"json": {"classes": []}}, 422, "invalid_field", "classes"),
    ("seed-negative", {"json": {"class": 1, "seed": -1}}, 422, "invalid_field", "seed"),
    ("seed-too-large", {"json": {"class": 1, "seed": 2**63}}, 422, "invalid_field", "seed"),
    ("top-p-zero", {"json": {"class": 1, "top_p": 0}}, 422, "invalid_field", "top_p"),
    ("top-k-negative", {"json": {"class": 1, "top_k": -1}}, 422, "invalid_field", "top_k"),
    ("temperature-zero", {"json": {"class": 1, "temperature": 0}}, 422, "invalid_field", "temperature"),
    ("cfg-interval-string", {"json": {"class": 1, "cfg_interval": "all"}}, 422, "invalid_field", "cfg_interval"),
    ("unknown-format", {"json": {"class": 1, "format": "gif"}}, 422, "invalid_field", "png_grid"),
    ("png-of-several", {"json": {"class": 1, "n": 2, "format": "png"}}, 422, "invalid_field", "png_grid"),
    ("unknown-field", {"json": {"class": 1, "steps": 10}}, 422, "invalid_field", "unknown field 'steps'"),
    ("no-class", {"json": {"n": 2}}, 422, "missing_field", "class"),
    ("class-and-classes", {"json": {"class": 1, "classes": [2]}}, 422, "invalid_field", "not both"),
    ("prompt-on-c2i", {"json": {"prompt": "a photo of a cat"}}, 400, "no_caption_encoder", "class-conditional"),
    ("prompt-with-class", {"json": {"prompt": "a cat", "class": 1}}, 400, "no_caption_encoder", "prompt"),
    ("prompts-on-c2i", {"json": {"prompts": ["a cat"]}}, 400, "no_caption_encoder", "class-conditional"),
    ("json-array", {"json": [1, 2]}, 422, "invalid_field", "object"),
    ("invalid-json", _raw(b'{"class": '), 400, "invalid_json", "not valid JSON"),
    ("empty-body", _raw(b""), 400, "empty_body", "empty"),
    ("form-body", {"data": {"class": "1"}}, 415, "unsupported_media_type", "application/json"),
    ("no-content-type", {"content": b'{"class": 1}'}, 415, "unsupported_media_type", "application/json"),
]


@pytest.mark.parametrize("kwargs,status,code,fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_gets_a_clear_4xx(gen_http, kwargs, status, code, fragment):
    assert fragment in _error(gen_http.post(GEN, **kwargs), status, code)


def test_a_body_too_large_is_refused_unread_and_the_connection_closed(gen_http):
    big = b'{"classes": [' + b"1, " * 10_000 + b"1]}"
    for content in (big, iter([big[:8000], big[8000:]])):  # declared, and streamed without a Content-Length
        r = gen_http.post(GEN, content=content, headers={"Content-Type": "application/json"})
        assert "16,384" in _error(r, 413, "body_too_large")
        assert r.headers.get("connection") == "close"  # else its unread bytes would be read as the next request
        assert gen_http.get("/v1/info").status_code == 200


def test_get_is_not_allowed(gen_http):
    _error(gen_http.get(GEN), 405, "method_not_allowed")


def test_metrics_count_generations_and_no_5xx(gen_http):
    before = gen_http.get("/metrics").text
    assert gen_http.post(GEN, json={"classes": [1, 2, 3], "seed": 3}).status_code == 200
    after = gen_http.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("toklip_generated_images_total") == 3
    assert delta("toklip_generate_duration_seconds_count") == 1
    assert delta("toklip_requests_total", endpoint=GEN, status="200") == 1
    assert delta("toklip_request_duration_seconds_count", endpoint=GEN) == 1
    assert delta("toklip_items_total", op="generate") == 3 and delta("toklip_batch_size_count", op="generate") == 1
    fives = [line for line in after.splitlines() if line.startswith("toklip_requests_total") and 'status="5' in line]
    assert fives == []  # whatever ran before in this module (the bad inputs included) never got a 5xx


def test_openapi_documents_generate(gen_http):
    spec = gen_http.get("/openapi.json").json()
    body = spec["paths"][GEN]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"class", "classes", "n", "cfg", "seed", "format", "prompt", "prompts"} <= set(body["properties"])


def test_without_a_generator_the_endpoint_says_how_to_get_one(http):
    assert http.get("/v1/info").json()["generator"] is None
    message = _error(http.post(GEN, json={"class": 1}), 404, "no_generator")
    assert "--generator" in message


# ---------------------------------------------------------------------------------------------- the page
def test_page_generates_images(browser, gen_server):  # noqa: F811 - the imported fixture
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    try:
        page.goto(gen_server.url + "/")
        page.wait_for_function("() => document.getElementById('generate').dataset.available === 'true'",
                               timeout=30_000)
        assert "gpt-test" in page.inner_text("#gen-note")
        page.fill("#gen-class", "4")
        page.fill("#gen-n", "2")
        page.fill("#gen-cfg", "2")
        page.fill("#gen-seed", "11")
        page.click("#gen-run")
        page.wait_for_function("() => Array.from(document.querySelectorAll('#gen-images img'))"
                               ".filter((i) => i.complete && i.naturalWidth === 64).length === 2", timeout=60_000)
        assert page.get_attribute("#gen-info", "data-seed") == "11" and page.inner_text("#status") == "done"
        assert [page.locator("#gen-images img").nth(i).get_attribute("data-class") for i in range(2)] == ["4", "4"]
        page.fill("#gen-class", "99")  # out of range: the server's message is shown
        page.click("#gen-run")
        page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=30_000)
        assert "422" in page.inner_text("#status") and "0 to 9" in page.inner_text("#status")
    finally:
        page.close()
    assert [p for p in problems if not p.startswith("console: Failed to load resource")] == []


# ---------------------------------------------------------------------------------------------- in-process units
def test_the_tokenizer_is_the_served_model_only_when_it_fits(gen_folder, saved_model, reference):
    folder = str(saved_model[0])
    assert load_serving_generator(gen_folder, reference, served_source=folder).info.tokenizer == "served"
    # another --model source for a fused generator: its recorded TokLIP is loaded instead
    elsewhere = load_serving_generator(gen_folder, reference, served_source="elsewhere")
    assert elsewhere.info.tokenizer == "recorded" and elsewhere.tokenizer_source == folder
    assert load_serving_generator(gen_folder, reference, tokenizer="recorded").info.tokenizer == "recorded"
    torch.manual_seed(5)
    other = toklip.build("toklip-test").eval()  # same architecture, another VQ
    assert load_serving_generator(gen_folder, other, served_source=folder).info.tokenizer == "recorded"
    with pytest.raises(ConfigError, match="another VQ"):
        load_serving_generator(gen_folder, other, tokenizer="served")
    with pytest.raises(ConfigError, match="not a generator folder"):
        load_serving_generator(folder, reference)  # a TokLIP folder, not a generator


def test_text_conditional_generators_without_a_caption_encoder_are_refused(reference):
    t2i = toklip.build_generator("gpt-test-t2i", tokenizer=reference)  # served with prompts: test_generate_t2i.py
    with pytest.raises(ConfigError, match="no caption encoder"):
        GenerateEngine(t2i)


def test_settings_bound_the_images_per_request():
    assert ServeSettings().generate_limit == 16
    with pytest.raises(ConfigError, match="max_generate_images"):
        ServeSettings(max_generate_images=0)
    assert ServeSettings(max_generate_images=300, max_queue=256).generate_limit == 256  # never more than can queue


def test_tile_lays_images_out_in_order():
    pixels = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)])
    grid = tile(pixels, padding=1)
    assert grid.shape == (9, 9, 3)  # 2 x 2 cells, 1 px gaps
    assert grid[0, 0, 0] == 10 and grid[0, 5, 0] == 20 and grid[5, 0, 0] == 30 and grid[5, 5, 0] == 0
    assert grid[4, :, 0].max() == 0 and grid[:, 4, 0].max() == 0
    assert np.array_equal(tile(pixels[:1]), pixels[0])
