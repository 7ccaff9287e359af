"""POST /v1/generate with a text-conditional generator: a real `toklip serve --generator` process serving a t2i
gpt-test with its recorded tiny T5 caption encoder. Answers checked against the same generator in-process,
determinism by seed, the prompt reaching the images, every bad input a 4xx, /v1/info, and the page's prompt field."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

import toklip
from tests.serve.test_generate import _error, _pixels, _reference_pixels
from tests.serve.test_page import browser  # noqa: F401 - the headless-browser fixture (skips without chromium)
from toklip.core.errors import ConfigError
from toklip.serve.generate import MAX_BODY_BYTES, MAX_PROMPT_CHARS, GenerateEngine, load_serving_generator
from toklip.serve.process import ServerProcess
from toklip.vlm.tiny import make_tiny_t5_encoder

MAX_IMAGES = 4
GEN = "/v1/generate"
WORDS = ["a red fox in the snow", "a blue car on the road", "a cat", "a photo"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_tiny_t5_encoder(tmp_path_factory.mktemp("t5") / "tiny-t5", WORDS)


@pytest.fixture(scope="module")
def t2i_folder(saved_model, t5_dir, tmp_path_factory):
    """A concat-fused gpt-test-t2i on the served toklip-test, its caption encoder recorded by path."""
    torch.manual_seed(1)
    gen = toklip.build_generator("gpt-test-t2i", tokenizer=str(saved_model[0]), fusion="concat",
                                 caption_encoder=str(t5_dir))
    with torch.no_grad():  # LlamaGen zero-inits the head (uniform codes, whatever the prompt): give it weights
        gen.output.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return toklip.gen.save_generator(gen, tmp_path_factory.mktemp("t2i") / "gen")


@pytest.fixture(scope="module")
def reference_t2i(t2i_folder, reference):
    return toklip.load_generator(t2i_folder, tokenizer=reference)


@pytest.fixture(scope="module")
def t2i_server(saved_model, t2i_folder) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--model", str(saved_model[0]), "--generator", str(t2i_folder), "--max-generate-images",
                          str(MAX_IMAGES), "--max-wait-ms", "2", "--log-level", "warning", "--no-access-log"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def t2i_http(t2i_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=t2i_server.url, timeout=60) as client:
        yield client


def test_info_says_text_conditional_and_the_prompt_limit(t2i_http):
    gen = t2i_http.get("/v1/info").json()["generator"]
    assert gen["model_type"] == "t2i" and gen["num_classes"] == 0 and gen["tokenizer"] == "served"
    assert gen["max_prompt_chars"] == MAX_PROMPT_CHARS and gen["prompt_tokens"] == 120
    assert gen["default_cfg"] == 7.5 and gen["guidance"] is True


def test_prompts_generate_seeded_images_that_match_the_library(t2i_http, reference_t2i):
    body = {"prompt": "a red fox", "n": 2, "cfg": 2.0, "seed": 0}
    r = t2i_http.post(GEN, json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert r.headers["x-toklip-seed"] == "0" and "x-toklip-classes" not in r.headers
    grid = _pixels(r.content)
    ref = _reference_pixels(reference_t2i, None, prompts=["a red fox"] * 2, cfg=2.0, seed=0)
    for i in range(2):
        assert np.abs(grid[:, i * 66:i * 66 + 64] - ref[i]).max() <= 1, i
    assert t2i_http.post(GEN, json=body).content == r.content
    assert t2i_http.post(GEN, json={**body, "prompt": "a blue car"}).content != r.content  # the prompt reaches it
    out = t2i_http.post(GEN, json={"prompts": ["a cat", "a red fox"], "seed": 5, "format": "json"}).json()
    assert out["prompts"] == ["a cat", "a red fox"] and "classes" not in out and out["cfg"] == 7.5
    ref = _reference_pixels(reference_t2i, None, prompts=["a cat", "a red fox"], cfg=7.5, seed=5)
    assert all(np.abs(_pixels(base64.b64decode(p)) - ref[i]).max() <= 1 for i, p in enumerate(out["images"]))


BAD = [  # (id, request kwargs, status, code, a fragment of the message)
    ("class-on-t2i", {"json": {"class": 1}}, 422, "invalid_field", "text-conditional"),
    ("no-prompt", {"json": {"n": 2}}, 422, "missing_field", "prompt"),
    ("prompt-and-prompts", {"json": {"prompt": "a cat", "prompts": ["a cat"]}}, 422, "invalid_field", "not both"),
    ("prompt-empty", {"json": {"prompt": "  "}}, 422, "invalid_prompt", "prompt 0 is empty"),
    ("prompt-too-long", {"json": {"prompts": ["a cat", "x" * (MAX_PROMPT_CHARS + 1)]}}, 422, "invalid_prompt",
     f"at most {MAX_PROMPT_CHARS}"),
    ("prompt-not-string", {"json": {"prompt": 3}}, 422, "invalid_field", "prompt"),
    ("prompts-empty", {"json": {"prompts": []}}, 422, "invalid_field", "prompts"),
    ("prompts-not-list", {"json": {"prompts": "a cat"}}, 422, "invalid_field", "prompts"),
    ("too-many-images", {"json": {"prompts": ["a cat"] * 3, "n": 2}}, 413, "too_many_items", "6 images"),
]


@pytest.mark.parametrize("kwargs,status,code,fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_prompt_requests_get_a_clear_4xx(t2i_http, kwargs, status, code, fragment):
    assert fragment in _error(t2i_http.post(GEN, **kwargs), status, code)


def test_the_body_limit_fits_the_longest_prompts_and_no_more(t2i_http):
    longest = {"prompts": ["\U0001F98A" * MAX_PROMPT_CHARS] * MAX_IMAGES, "seed": 0, "cfg": 1.0}  # 12 bytes each
    import json

    assert len(json.dumps(longest)) > MAX_BODY_BYTES
    assert t2i_http.post(GEN, json=longest).status_code == 200
    huge = b'{"prompt": "' + b"a" * (MAX_BODY_BYTES + MAX_IMAGES * MAX_PROMPT_CHARS * 12) + b'"}'
    r = t2i_http.post(GEN, content=huge, headers={"Content-Type": "application/json"})
    _error(r, 413, "body_too_large")
    assert r.headers.get("connection") == "close"


def test_page_generates_from_a_prompt(browser, t2i_server):  # noqa: F811 - the imported fixture
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    try:
        page.goto(t2i_server.url + "/")
        page.wait_for_function("() => document.getElementById('generate').dataset.available === 'true'",
                               timeout=30_000)
        assert "text-conditional" in page.inner_text("#gen-note")
        assert page.is_hidden("#gen-class") and page.is_visible("#gen-prompt")
        page.fill("#gen-prompt", "a red fox")
        page.fill("#gen-n", "2")
        page.fill("#gen-seed", "4")
        page.click("#gen-run")
        page.wait_for_function("() => Array.from(document.querySelectorAll('#gen-images img'))"
                               ".filter((i) => i.complete && i.naturalWidth === 64).length === 2", timeout=60_000)
        assert page.get_attribute("#gen-images img >> nth=0", "data-prompt") == "a red fox"
        page.fill("#gen-prompt", " ")  # the server's message is shown
        page.click("#gen-run")
        page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=30_000)
        assert "422" in page.inner_text("#status") and "empty" in page.inner_text("#status")
    finally:
        page.close()
    assert [p for p in problems if not p.startswith("console: Failed to load resource")] == []


def test_a_t2i_generator_needs_its_caption_encoder(t2i_folder, reference, t5_dir):
    bare = toklip.load_generator(t2i_folder, tokenizer=reference, caption_encoder=False)
    with pytest.raises(ConfigError, match="no caption encoder"):
        GenerateEngine(bare)
    engine = load_serving_generator(t2i_folder, reference, caption_encoder=str(t5_dir))
    assert engine.info.model_type == "t2i" and engine.body_limit(type("S", (), {"generate_limit": 2})()) == (
        MAX_BODY_BYTES + 2 * MAX_PROMPT_CHARS * 12)
