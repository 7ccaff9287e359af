"""Every endpoint of a real `toklip serve` process, checked against the same model run in-process."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load as load_safetensors

from tests.serve import media
from toklip.data.preprocess import preprocess

IMAGES = [media.png(media.noise(seed=s)) for s in range(3)]


def ref_tokenize(model, blobs):
    batch = torch.stack([preprocess(b, model.image_size) for b in blobs])
    with torch.inference_mode():
        return model.tokenize(batch)


def ref_texts(model, texts):
    with torch.inference_mode():
        return model.encode_text(texts, normalize=True)


def test_health_ready_info(http, reference):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = http.get("/v1/info").json()
    assert info["grid"] == list(reference.grid) and info["vocab_size"] == reference.vq.vocab_size
    assert info["image_size"] == reference.image_size and info["device"] == "cpu" and info["has_text"]
    assert info["limits"]["max_request_items"] == 32


def test_tokenize_multipart_matches_library(http, reference):
    r = http.post("/v1/tokenize", files=[("image", ("a.png", b, "image/png")) for b in IMAGES],
                  data={"outputs": "indices,features,pooled"})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = ref_tokenize(reference, IMAGES)
    assert body["grid"] == list(reference.grid) and body["model"] == "toklip-test"
    assert np.array_equal(np.array(body["indices"]), ref.indices.numpy())
    np.testing.assert_allclose(np.array(body["features"]), ref.features.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.array(body["pooled"]), ref.pooled.numpy(), atol=1e-4)


def test_tokenize_json_base64_and_data_url(http, reference):
    b64 = [base64.b64encode(b).decode() for b in IMAGES[:2]]
    b64[1] = "data:image/png;base64," + b64[1]
    r = http.post("/v1/tokenize", json={"images": b64})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "grid", "vocab_size", "indices"}
    assert np.array_equal(np.array(body["indices"]), ref_tokenize(reference, IMAGES[:2]).indices.numpy())


def test_tokenize_raw_image_body(http, reference):
    r = http.post("/v1/tokenize", content=IMAGES[0], headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["indices"] == ref_tokenize(reference, IMAGES[:1]).indices.tolist()


def test_tokenize_safetensors_and_npy(http, reference):
    ref = ref_tokenize(reference, IMAGES)
    files = [("image", ("a.png", b, "image/png")) for b in IMAGES]
    r = http.post("/v1/tokenize", files=files, data={"outputs": "indices,pooled", "format": "safetensors"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-safetensors"
    tensors = load_safetensors(r.content)
    assert tensors["indices"].dtype == np.int64 and np.array_equal(tensors["indices"], ref.indices.numpy())
    np.testing.assert_allclose(tensors["pooled"], ref.pooled.numpy(), atol=1e-4)
    # the Accept header picks the format when no format option is given
    r = http.post("/v1/tokenize", files=files, params={"outputs": "features"}, headers={"Accept": "application/x-npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert arr.shape == tuple(ref.features.shape) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, ref.features.numpy(), atol=1e-4)


def test_embed_image_is_normalised_pooled(http, reference):
    r = http.post("/v1/embed/image", files=[("image", ("a.png", IMAGES[0], "image/png"))])
    assert r.status_code == 200
    emb = np.array(r.json()["embeddings"])
    assert emb.shape == (1, r.json()["dim"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    ref = torch.nn.functional.normalize(ref_tokenize(reference, IMAGES[:1]).pooled, dim=-1)
    np.testing.assert_allclose(emb, ref.numpy(), atol=1e-4)


def test_embed_text(http, reference):
    texts = ["a photo of a cat", "a diagram", ""]
    r = http.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["embeddings"]), ref_texts(reference, texts).numpy(), atol=1e-4)
    r = http.post("/v1/embed/text", files=[("texts", (None, t)) for t in texts], data={"format": "npy"})
    assert r.status_code == 200
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), ref_texts(reference, texts).numpy(), atol=1e-4)


def test_similarity_is_consistent_with_embeddings(http, reference):
    texts = ["a cat", "a dog", "noise"]
    files = [("image", ("a.png", b, "image/png")) for b in IMAGES[:2]]
    r = http.post("/v1/similarity", files=files, data={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    img = torch.nn.functional.normalize(ref_tokenize(reference, IMAGES[:2]).pooled, dim=-1)
    cos = img @ ref_texts(reference, texts).T
    np.testing.assert_allclose(np.array(body["cosine"]), cos.numpy(), atol=1e-4)
    scale = reference.logit_scale.exp().item()
    np.testing.assert_allclose(np.array(body["logits"]), (scale * cos + reference.logit_bias.item()).numpy(), atol=1e-3)
    probs = np.array(body["probs"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, (scale * cos).softmax(-1).numpy(), atol=1e-5)
    # JSON body with base64 images gives the same answer
    r2 = http.post("/v1/similarity", json={"images": [base64.b64encode(b).decode() for b in IMAGES[:2]],
                                           "texts": texts})
    np.testing.assert_allclose(np.array(r2.json()["cosine"]), np.array(body["cosine"]), atol=1e-6)


def test_decode_png_matches_library(http, reference):
    indices = ref_tokenize(reference, IMAGES[:1]).indices
    r = http.post("/v1/decode", json={"indices": indices.tolist()})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    with torch.inference_mode():
        ref = reference.decode(indices)
    want = (ref[0].float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert got.shape == (reference.image_size, reference.image_size, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_decode_grid_shapes_batches_and_binary_bodies(http, reference):
    h, w = reference.grid
    idx = ref_tokenize(reference, IMAGES[:2]).indices.numpy()
    flat = http.post("/v1/decode", json={"indices": idx[:1].tolist()}).content
    grid = http.post("/v1/decode", json={"indices": idx[:1].reshape(1, h, w).tolist()}).content
    assert flat == grid
    # a batch as JSON (base64 PNGs)
    r = http.post("/v1/decode", json={"indices": idx.tolist(), "format": "json"})
    assert r.status_code == 200
    pngs = [base64.b64decode(p) for p in r.json()["images"]]
    assert len(pngs) == 2
    assert _max_diff(pngs[0], flat) <= 1  # batch of 2 vs batch of 1: float rounding only
    # an .npy body, and the safetensors that /v1/tokenize returned, round-trip
    buf = io.BytesIO()
    np.save(buf, idx[:1])
    r = http.post("/v1/decode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200 and r.content == flat
    tok = http.post("/v1/tokenize", files=[("image", ("a.png", IMAGES[0], "image/png"))],
                    data={"format": "safetensors"})
    r = http.post("/v1/decode", content=tok.content, headers={"Content-Type": "application/x-safetensors"})
    assert r.status_code == 200 and r.content == flat


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


def _max_diff(a: bytes, b: bytes) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


def test_concurrent_requests_all_succeed_and_match(http, reference):
    """Concurrent requests share batches; each still gets exactly its own answer."""
    blobs = [media.png(media.noise(seed=10 + i)) for i in range(12)]
    ref = ref_tokenize(reference, blobs).indices.numpy()

    def one(i):
        r = http.post("/v1/tokenize", files=[("image", ("a.png", blobs[i], "image/png"))])
        return i, r.status_code, r.json()["indices"][0]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    for i, status, indices in results:
        assert status == 200 and indices == ref[i].tolist()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics(http):
    http.post("/v1/embed/text", json={"texts": ["x"]})
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _metric(text, "toklip_requests_total", endpoint="/v1/embed/text", status="200") >= 1
    assert _metric(text, "toklip_request_duration_seconds_count", endpoint="/v1/embed/text") >= 1
    assert _metric(text, "toklip_batch_size_count", op="text") >= 1
    assert _metric(text, "toklip_batch_size_count", op="image") >= 1
    assert "toklip_queue_depth" in text and _metric(text, "toklip_ready") == 1.0
    assert re.search(r'toklip_batch_size_bucket\{le="1.0",op="image"\}', text)


def test_openapi_documents_every_endpoint(http):
    spec = http.get("/openapi.json").json()
    for path in ("/v1/tokenize", "/v1/embed/image", "/v1/embed/text", "/v1/similarity", "/v1/decode",
                 "/healthz", "/readyz", "/metrics", "/v1/info"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/tokenize"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "images" in body["application/json"]["schema"]["properties"]
    assert http.get("/docs").status_code == 200


def test_page_and_assets(http):
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert 'src="/static/app.js"' in r.text and "http" not in r.text.split("<body>")[1].replace('href="/docs"', "")
    js = http.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "innerHTML" not in js.text  # user strings go through textContent only
    assert http.get("/static/app.css").status_code == 200
    missing = http.get("/static/../settings.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/v1/tokenize", "/v1/embed/image"])
def test_json_error_shape(http, path):
    r = http.post(path, json={"images": []})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["status"] == 422 and err["code"] == "invalid_field" and "images" in err["message"]
    assert json.loads(r.content) == r.json()
