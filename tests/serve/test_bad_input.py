"""Bad input gets a 4xx with a clear JSON error, never a 5xx or a crash; odd-but-valid images just work.

Every case runs against the real server process; the last test checks the server is still healthy and
that the whole run produced no 5xx.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageOps
from safetensors.numpy import save as save_safetensors

from tests.serve import media

GRID_N = 64  # toklip-test: 8 x 8 tokens, 1024 codes


def _file(data: bytes, name: str = "x.png", field: str = "image", ctype: str = "application/octet-stream"):
    return {"files": [(field, (name, data, ctype))]}


def _raw(data: bytes, ctype: str = "image/png"):
    return {"content": data, "headers": {"Content-Type": ctype}}


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _grid(value: int = 0, n: int = GRID_N):
    return [[value] * n]


def _deep_json(depth: int) -> bytes:
    return b'{"images": ' + b"[" * depth + b"]" * depth + b"}"


TOK, IMG, TXT, SIM, DEC = "/v1/tokenize", "/v1/embed/image", "/v1/embed/text", "/v1/similarity", "/v1/decode"

# (id, method, path, request kwargs (a thunk, so nothing is built at import), status, error code)
CASES = [
    # --- images: corrupt, hostile, not images
    ("truncated-png", "POST", TOK, lambda: _file(media.truncated(media.png())), 400, "invalid_image"),
    ("truncated-jpeg", "POST", TOK, lambda: _file(media.truncated(media.jpeg())), 400, "invalid_image"),
    ("png-bad-crc", "POST", TOK, lambda: _file(media.png_bad_crc()), 400, "invalid_image"),
    ("jpeg-garbage-after-magic", "POST", TOK, lambda: _file(b"\xff\xd8\xff" + bytes(500)), 400, "invalid_image"),
    ("png-bomb-header", "POST", TOK, lambda: _file(media.png_declaring(30000, 30000)), 413, "image_too_large"),
    ("png-20000x20000", "POST", TOK, lambda: _file(media.png_huge_valid(20000)), 413, "image_too_large"),
    ("jpeg-bomb-header", "POST", TOK, lambda: _file(media.jpeg_declaring()), 413, "image_too_large"),
    ("png-bomb-raw-body", "POST", IMG, lambda: _raw(media.png_declaring(9000, 9000)), 413, "image_too_large"),
    ("non-image-bytes", "POST", TOK, lambda: _file(bytes(range(256)) * 8), 400, "not_an_image"),
    ("svg", "POST", TOK, lambda: _file(media.SVG, "x.svg", ctype="image/svg+xml"), 415, "unsupported_image_format"),
    ("html-as-image", "POST", IMG, lambda: _raw(media.HTML, "image/png"), 400, "not_an_image"),
    ("empty-upload", "POST", TOK, lambda: _file(b""), 400, "empty_image"),
    ("empty-raw-body", "POST", TOK, lambda: _raw(b""), 400, "empty_body"),
    ("empty-json-body", "POST", TOK, lambda: _raw(b"", "application/json"), 400, "empty_body"),
    # --- content types and form shapes
    ("wrong-content-type", "POST", TOK, lambda: _raw(b"hello", "text/plain"), 415, "unsupported_media_type"),
    ("urlencoded-form", "POST", TOK, lambda: {"data": {"image": "cat.png"}}, 415, "unsupported_media_type"),
    ("no-content-type", "POST", TOK, lambda: {"content": media.png()}, 415, "unsupported_media_type"),
    ("raw-image-to-text-endpoint", "POST", TXT, lambda: _raw(media.png()), 415, "unsupported_media_type"),
    ("multipart-no-boundary", "POST", TOK, lambda: _raw(b"--x\r\n", "multipart/form-data"), 400, "invalid_multipart"),
    ("multipart-wrong-field", "POST", TOK, lambda: _file(media.png(), field="picture"), 422, "invalid_field"),
    ("multipart-image-as-text", "POST", TOK, lambda: {"files": {"image": (None, "cat.png")}}, 422, "invalid_field"),
    ("multipart-no-image", "POST", TOK, lambda: {"files": {"outputs": (None, "indices")}}, 422, "missing_field"),
    ("similarity-no-texts", "POST", SIM, lambda: _file(media.png()), 422, "missing_field"),
    # --- JSON: syntax, wrong types, missing and unknown fields
    ("invalid-json", "POST", TOK, lambda: _raw(b'{"images": [', "application/json"), 400, "invalid_json"),
    ("json-deeply-nested", "POST", TOK, lambda: _raw(_deep_json(100_000), "application/json"), 400, "invalid_json"),
    ("json-not-object", "POST", TOK, lambda: {"json": ["abc"]}, 422, "invalid_field"),
    ("json-images-not-list", "POST", TOK, lambda: {"json": {"images": "abc"}}, 422, "invalid_field"),
    ("json-image-number", "POST", TOK, lambda: {"json": {"images": [123]}}, 422, "invalid_field"),
    ("json-missing-images", "POST", TOK, lambda: {"json": {"outputs": ["indices"]}}, 422, "invalid_field"),
    ("json-unknown-field", "POST", TOK, lambda: {"json": {"images": ["AAAA"], "imagez": 1}}, 422, "invalid_field"),
    ("json-bad-output-name", "POST", TOK,
     lambda: {"json": {"images": [base64.b64encode(media.png()).decode()], "outputs": ["logits"]}}, 422,
     "invalid_field"),
    ("json-bad-format", "POST", TOK, lambda: {"json": {"images": ["AAAA"], "format": "xml"}}, 422, "invalid_field"),
    ("npy-with-two-outputs", "POST", TOK,
     lambda: {**_file(media.png()), "data": {"outputs": "indices,pooled", "format": "npy"}}, 422, "invalid_field"),
    ("unknown-query-param", "POST", TOK, lambda: {**_file(media.png()), "params": {"colour": "red"}}, 422,
     "invalid_field"),
    ("invalid-base64", "POST", TOK, lambda: {"json": {"images": ["not base64!"]}}, 400, "invalid_base64"),
    ("image-url", "POST", TOK, lambda: {"json": {"images": ["https://example.com/cat.jpg"]}}, 422,
     "url_not_allowed"),
    ("texts-not-strings", "POST", TXT, lambda: {"json": {"texts": ["ok", 5]}}, 422, "invalid_field"),
    ("texts-empty-list", "POST", TXT, lambda: {"json": {"texts": []}}, 422, "invalid_field"),
    ("text-too-long", "POST", TXT, lambda: {"json": {"texts": ["a" * 2001]}}, 422, "text_too_long"),
    # --- limits
    ("oversize-batch", "POST", TOK, lambda: {"files": [("image", ("x.png", media.one_pixel(), "image/png"))] * 33},
     413, "too_many_items"),
    ("oversize-batch-many-files", "POST", TOK,
     lambda: {"files": [("image", ("x.png", media.one_pixel(), "image/png"))] * 100}, 413, "too_many_items"),
    ("too-many-texts", "POST", TXT, lambda: {"json": {"texts": ["a"] * 33}}, 413, "too_many_items"),
    # --- decode: indices of the wrong kind, range or shape
    ("indices-out-of-range", "POST", DEC, lambda: {"json": {"indices": _grid(1024)}}, 422, "invalid_indices"),
    ("indices-negative", "POST", DEC, lambda: {"json": {"indices": _grid(-1)}}, 422, "invalid_indices"),
    ("indices-wrong-grid", "POST", DEC, lambda: {"json": {"indices": _grid(0, 63)}}, 422, "invalid_indices"),
    ("indices-wrong-2d-grid", "POST", DEC, lambda: {"json": {"indices": [[[0] * 4] * 16]}}, 422, "invalid_indices"),
    ("indices-floats", "POST", DEC, lambda: {"json": {"indices": [[0.5] * GRID_N]}}, 422, "invalid_indices"),
    ("indices-bools", "POST", DEC, lambda: {"json": {"indices": [[True] * GRID_N]}}, 422, "invalid_indices"),
    ("indices-strings", "POST", DEC, lambda: {"json": {"indices": [["1"] * GRID_N]}}, 422, "invalid_indices"),
    ("indices-ragged", "POST", DEC, lambda: {"json": {"indices": [[0] * GRID_N, [0] * 3]}}, 422, "invalid_indices"),
    ("indices-1d", "POST", DEC, lambda: {"json": {"indices": [0] * GRID_N}}, 422, "invalid_indices"),
    ("indices-huge-int", "POST", DEC, lambda: {"json": {"indices": [[10**30] * GRID_N]}}, 422, "invalid_indices"),
    ("indices-not-list", "POST", DEC, lambda: {"json": {"indices": "0 1 2"}}, 422, "invalid_field"),
    ("indices-nan", "POST", DEC, lambda: _raw(b'{"indices": [[NaN]]}', "application/json"), 422, "invalid_indices"),
    ("png-batch-of-two", "POST", DEC, lambda: {"json": {"indices": _grid() * 2}}, 422, "invalid_field"),
    ("npy-pickled-objects", "POST", DEC, lambda: _raw(_npy(np.array([[{"a": 1}]], dtype=object)), "application/x-npy"),
     400, "invalid_npy"),
    ("npy-garbage", "POST", DEC, lambda: _raw(b"\x93NUMPYgarbage", "application/x-npy"), 400, "invalid_npy"),
    ("npy-float-indices", "POST", DEC, lambda: _raw(_npy(np.zeros((1, GRID_N))), "application/x-npy"), 422,
     "invalid_indices"),
    ("safetensors-garbage", "POST", DEC,
     lambda: _raw(b"\x10\x00\x00\x00\x00\x00\x00\x00{{{{", "application/x-safetensors"), 400, "invalid_safetensors"),
    ("safetensors-no-indices", "POST", DEC,
     lambda: _raw(save_safetensors({"codes": np.zeros((1, GRID_N), np.int64)}), "application/x-safetensors"), 422,
     "missing_field"),
    ("decode-image-body", "POST", DEC, lambda: _raw(media.png()), 415, "unsupported_media_type"),
    # --- routing
    ("unknown-endpoint", "GET", "/v1/nope", dict, 404, "not_found"),
    ("unknown-endpoint-post", "POST", "/v2/tokenize", lambda: {"json": {}}, 404, "not_found"),
    ("wrong-method-get", "GET", TOK, dict, 405, "method_not_allowed"),
    ("wrong-method-put", "PUT", DEC, lambda: {"json": {}}, 405, "method_not_allowed"),
    ("wrong-method-post-health", "POST", "/healthz", dict, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_gets_clear_4xx(http, method, path, kwargs, status, code):
    r = http.request(method, path, **kwargs())
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code
    assert len(err["message"]) > 10 and "Traceback" not in err["message"]


def test_there_are_at_least_30_bad_input_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_messages_name_the_problem(http):
    svg = http.post("/v1/tokenize", **_file(media.SVG)).json()["error"]["message"]
    assert "SVG" in svg and "PNG" in svg
    bomb = http.post("/v1/tokenize", **_file(media.png_declaring(9000, 9000))).json()["error"]["message"]
    assert "9000x9000" in bomb and "40,000,000" in bomb
    huge = http.post("/v1/tokenize", **_file(media.png_declaring(30000, 30000))).json()["error"]["message"]
    assert "900,000,000 pixels" in huge and "40,000,000" in huge
    rng = http.post("/v1/decode", json={"indices": _grid(5000)}).json()["error"]["message"]
    assert "[0, 1023]" in rng and "5000" in rng
    grid = http.post("/v1/decode", json={"indices": _grid(0, 63)}).json()["error"]["message"]
    assert "63" in grid and "8x8" in grid
    second = http.post("/v1/tokenize", files=[("image", ("a", media.png(), "image/png")),
                                              ("image", ("b", media.truncated(media.png()), "image/png"))])
    assert "images[1]" in second.json()["error"]["message"]
    unknown = http.post("/v1/tokenize", json={"images": ["AAAA"], "imagez": 1}).json()["error"]["message"]
    assert "imagez" in unknown


# ---------------------------------------------------------------- odd but valid images: 200, handled right
VALID = {
    "animated-gif": media.animated_gif,
    "png-16-bit": media.png16,
    "cmyk-jpeg": media.cmyk_jpeg,
    "grayscale": media.grayscale_png,
    "rgba": media.rgba_png,
    "palette-transparency": media.palette_png,
    "1x1": media.one_pixel,
    "webp": media.webp,
    "tiff": media.tiff,
    "bmp": media.bmp,
}


@pytest.mark.parametrize("make", list(VALID.values()), ids=list(VALID))
def test_odd_valid_images_are_served(http, make):
    r = http.post("/v1/tokenize", **_file(make()))
    assert r.status_code == 200, r.text
    indices = np.array(r.json()["indices"])
    assert indices.shape == (1, GRID_N) and indices.min() >= 0 and indices.max() < 1024


def test_animated_gif_uses_first_frame(http):
    gif = media.animated_gif()
    first = Image.open(io.BytesIO(gif)).convert("RGB")
    a = http.post("/v1/tokenize", **_file(gif)).json()["indices"]
    b = http.post("/v1/tokenize", **_file(media.png(first))).json()["indices"]
    assert a == b


def test_exif_rotation_is_applied(http):
    data = media.exif_rotated_jpeg()
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    as_stored = Image.open(io.BytesIO(data)).convert("RGB")
    assert upright.size == (64, 96)  # 96x64 stored, shown rotated
    got = http.post("/v1/tokenize", **_file(data)).json()["indices"]
    assert got == http.post("/v1/tokenize", **_file(media.png(upright))).json()["indices"]
    assert got != http.post("/v1/tokenize", **_file(media.png(as_stored))).json()["indices"]


def test_bad_input_left_the_server_healthy(http):
    """After all of the above: still live and ready, and no request in this session was answered 5xx."""
    assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
    text = http.get("/metrics").text
    fives = [ln for ln in text.splitlines() if ln.startswith("toklip_requests_total") and 'status="5' in ln]
    assert fives == [], fives
    assert json.loads(http.get("/v1/info").content)["name"] == "toklip-test"
