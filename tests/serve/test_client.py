"""toklip.client against a real server: the same operations as the HTTP API, with numpy and PIL."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.serve import media
from tests.serve.conftest import API_KEY
from toklip.serve.client import APIError, Client
from toklip.core.errors import InputError
from toklip.data.preprocess import preprocess


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url) as c:
        yield c


def test_service_state(client):
    assert client.health() and client.ready()
    client.wait_ready(timeout_s=5)
    assert client.info()["name"] == "toklip-test"


def test_tokenize_every_input_kind(client, reference, tmp_path):
    pil = media.noise(seed=3)
    path = tmp_path / "x.png"
    pil.save(path)
    inputs = [str(path), path, media.png(pil), pil, np.asarray(pil)]
    out = client.tokenize(inputs, outputs=("indices", "features", "pooled"))
    assert out.grid == reference.grid and out.vocab_size == 1024
    assert out.indices.shape == (5, 64) and out.indices.dtype == np.int64
    assert (out.indices == out.indices[0]).all()  # the same picture five ways
    with torch.inference_mode():
        ref = reference.tokenize(preprocess(pil, reference.image_size)[None])
    assert np.array_equal(out.indices[0], ref.indices[0].numpy())
    np.testing.assert_allclose(out.features[0], ref.features[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(out.pooled[0], ref.pooled[0].numpy(), atol=1e-4)


def test_large_inputs_are_split_by_the_server_limit(server):
    with Client(server.url) as c:
        c._info = {**c.info(), "limits": {**c.info()["limits"], "max_request_items": 2}}
        out = c.tokenize([media.png(media.noise(seed=s)) for s in range(5)])
        emb = c.embed_text([f"text {i}" for i in range(5)])
    assert out.indices.shape == (5, 64) and emb.shape == (5, 64)


def test_embeddings_and_similarity(client, reference):
    images = [media.png(media.noise(seed=s)) for s in range(2)]
    texts = ["a cat", "a dog", "a house"]
    img = client.embed_image(images)
    txt = client.embed_text(texts)
    assert img.shape == (2, 64) and txt.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    with torch.inference_mode():
        ref_txt = reference.encode_text(texts, normalize=True).numpy()
    np.testing.assert_allclose(txt, ref_txt, atol=1e-4)
    assert client.embed_text("a cat").shape == (1, 64)
    sim = client.similarity(images, texts)
    np.testing.assert_allclose(sim.cosine, img @ txt.T, atol=1e-4)
    np.testing.assert_allclose(sim.probs.sum(1), 1, atol=1e-5)


def test_decode_round_trip(client):
    tok = client.tokenize([media.png(media.noise(seed=s)) for s in range(3)])
    images = client.decode(tok.indices)
    assert len(images) == 3 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
    one = client.decode(tok.indices[0])  # a single grid, batch left out
    two = client.decode(tok.indices[0].reshape(8, 8))
    assert len(one) == len(two) == 1
    assert np.array_equal(np.asarray(one[0]), np.asarray(two[0]))


def test_server_errors_raise_api_error(client):
    with pytest.raises(APIError) as e:
        client.decode(np.full((1, 64), 5000))
    assert e.value.status == 422 and e.value.code == "invalid_indices" and "[0, 1023]" in e.value.message
    with pytest.raises(APIError) as e:
        client.tokenize([b"not an image at all"])
    assert e.value.status == 400 and e.value.code == "not_an_image"


def test_client_side_input_errors(client, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        client.tokenize([tmp_path / "missing.png"])
    with pytest.raises(InputError, match="uint8"):
        client.tokenize([np.zeros((4, 4, 3), dtype=np.float32)])
    with pytest.raises(InputError, match="empty"):
        client.tokenize([])
    with pytest.raises(InputError, match="cannot send a dict"):
        client.tokenize([{"a": 1}])


def test_api_key_and_retry_after(limited_server):
    with Client(limited_server.url) as anon, pytest.raises(APIError) as e:
        anon.info()
    assert e.value.status == 401
    with Client(limited_server.url, api_key=API_KEY, retries=0) as c:
        assert c.info()["limits"]["max_request_items"] == 2


def test_retries_follow_retry_after():
    """A 503 with Retry-After is retried (bounded); other errors are not."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": {"status": 503, "code": "queue_full", "message": "full"}})
        return httpx.Response(200, json={"name": "fake", "limits": {}})

    with Client("http://fake", transport=httpx.MockTransport(handler), retries=1) as c:
        assert c.info()["name"] == "fake"
    assert calls == ["/v1/info", "/v1/info"]

    calls.clear()
    with Client("http://fake", transport=httpx.MockTransport(handler), retries=0) as c, \
            pytest.raises(APIError, match="full"):
        c.info()
    assert calls == ["/v1/info"]


def test_non_json_error_body():
    transport = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://fake", transport=transport) as c, pytest.raises(APIError) as e:
        c.info()
    assert e.value.status == 502 and "bad gateway" in e.value.message


def test_decoded_images_are_real_pngs(client):
    tok = client.tokenize([media.png()])
    image = client.decode(tok.indices)[0]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    assert image.format == "PNG" and image.mode == "RGB"
