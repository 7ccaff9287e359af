"""Regression tests for the attacks on `toklip serve` in issue 11 (items 7-13). Each test builds its hostile
request itself. Real-server tests use the session `server`; the rest run the app in-process (ASGI, or uvicorn
in a thread for the connection layer)."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serve import media

GRID_N = 64  # toklip-test: 8 x 8 tokens, 1024 codes
TOK, DEC = "/v1/tokenize", "/v1/decode"


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code
    return err["message"]


def _upload(data: bytes, ctype: str = "image/png"):
    return {"files": [("image", ("x.png", data, ctype))]}


# ---------------------------------------------------------------- 7: only allowlisted formats are decoded
@pytest.mark.parametrize(("make", "named"), [(lambda: media.EPS, "EPS"), (lambda: media.PDF, "PDF"),
                                             (media.psd, "PSD")], ids=["eps", "pdf", "psd"])
def test_non_allowlisted_formats_get_415(http, make, named):
    data = make()
    for kwargs in (_upload(data), {"content": data, "headers": {"Content-Type": "image/png"}},
                   {"json": {"images": [base64.b64encode(data).decode()]}}):
        message = _error(http.post(TOK, **kwargs), 415, "unsupported_image_format")
        assert named in message and "PNG, JPEG" in message


def test_eps_never_reaches_ghostscript(monkeypatch):
    """In-process: the server's decoder refuses EPS before any Pillow plugin but the allowed ones runs."""
    import subprocess

    from PIL import EpsImagePlugin

    from toklip.serve.errors import APIError
    from toklip.serve.images import decode_image

    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append("eps-open"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append("gs"))
    with pytest.raises(APIError) as e:
        decode_image(media.EPS, 0, 1_000_000)
    assert e.value.status == 415 and "EPS" in e.value.message
    assert calls == []


# ---------------------------------------------------------------- 8: resize amplification
def test_extreme_strip_is_refused_at_once(http):
    strip = media.strip_png(1, 100_000)
    assert len(strip) < 1000
    t0 = time.perf_counter()
    message = _error(http.post(TOK, **_upload(strip)), 422, "unsupported_image_shape")
    assert "1x100000" in message and "50:1" in message and "images[0]" in message
    assert time.perf_counter() - t0 < 30  # generous: the point is it neither stalls nor runs out of memory


def test_long_but_allowed_strip_is_served(http):
    r = http.post(TOK, **_upload(media.strip_png(4, 160)))  # 40:1: cropped before resizing
    assert r.status_code == 200, r.text
    assert np.array(r.json()["indices"]).shape == (1, GRID_N)


# ---------------------------------------------------------------- 9: former 500s
def test_json_integer_with_too_many_digits(http):
    body = b'{"indices": [[' + b"7" * 5000 + b"]]}"
    message = _error(http.post(DEC, content=body, headers={"Content-Type": "application/json"}), 400, "invalid_json")
    assert "digits" in message


def test_npy_declaring_a_huge_shape(http):
    body = media.npy_declaring((1 << 20, 1 << 20, 1 << 10), payload=bytes(64))
    message = _error(http.post(DEC, content=body, headers={"Content-Type": "application/x-npy"}), 400, "invalid_npy")
    assert "declares shape" in message and "64 bytes" in message


def test_npy_with_a_lying_small_shape_and_bad_headers(http):
    headers = {"Content-Type": "application/x-npy"}
    short = media.npy_declaring((1, GRID_N), payload=bytes(8))  # needs 512 bytes of data
    _error(http.post(DEC, content=short, headers=headers), 400, "invalid_npy")
    nested = b"\x93NUMPY\x01\x00" + (2000).to_bytes(2, "little") + b"(" * 1999 + b"\n"
    _error(http.post(DEC, content=nested, headers=headers), 400, "invalid_npy")


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F8_E5M2", "F16"])
def test_safetensors_with_float_indices_names_the_dtypes(http, dtype):
    size = GRID_N * (1 if dtype.startswith("F8") else 2)
    body = media.safetensors_raw({"indices": (dtype, [1, GRID_N], bytes(size))})
    r = http.post(DEC, content=body, headers={"Content-Type": "application/x-safetensors"})
    message = _error(r, 422, "invalid_indices")
    assert dtype in message and "I64" in message and "U8" in message


def test_safetensors_other_tensors_may_have_any_dtype(http):
    body = media.safetensors_raw({"indices": ("I64", [1, GRID_N], bytes(8 * GRID_N)),
                                  "extra": ("BF16", [4], bytes(8))})
    r = http.post(DEC, content=body, headers={"Content-Type": "application/x-safetensors"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def _raw_exchange(url: str, payload: bytes, timeout: float = 10.0) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _json_of(response: bytes) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return json.loads(body)["error"]


def test_malformed_http_gets_json(server):
    for payload, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400),
                            (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
                            (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
                            (b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
                             400),
                            ("GET /caf\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400)):
        response = _raw_exchange(server.url, payload)
        assert response.startswith(b"HTTP/1.1 %d" % status), response[:200]
        assert _json_of(response)["status"] == status


# ---------------------------------------------------------------- 10: /metrics labels are bounded
def _asgi(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_made_up_methods_and_paths_do_not_grow_metrics(reference):
    from toklip.serve.app import create_app
    from toklip.serve.settings import ServeSettings

    async def main():
        app = create_app(reference, ServeSettings())
        async with app.router.lifespan_context(app), _asgi(app) as client:
            for method, path in (("MADEUP", "/v1/tokenize"), ("MADEUP", "/made/up"), ("GET", "/made/up"),
                                 ("GET", "/static/app.js"), ("GET", "/static/nope")):
                await client.request(method, path)  # every (endpoint, method, status) the loop below makes
            await client.get("/metrics")
            before = (await client.get("/metrics")).text
            for i in range(1000):
                await client.request(f"M{i}", f"/v1/tokenize?x={i}" if i % 2 else f"/made/up/{i}")
            await client.get(f"/static/{'x' * 50}")
            after = (await client.get("/metrics")).text
        return before, after

    before, after = asyncio.run(asyncio.wait_for(main(), 120))

    def series(text: str) -> set[str]:
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}

    assert series(after) == series(before)
    assert 'method="other"' in after and 'endpoint="other"' in after and 'endpoint="/static/{name}"' in after
    assert "M999" not in after and "/made/up" not in after
    assert abs(len(after) - len(before)) < 200  # only the counts changed


# ---------------------------------------------------------------- 11: connection limits (uvicorn in a thread)
@pytest.fixture(scope="module")
def guarded_url(reference):
    """The real app under the real uvicorn config, with short timeouts and a 6-connection cap."""
    import uvicorn

    from toklip.serve.app import create_app
    from toklip.serve.protocol import uvicorn_config
    from toklip.serve.settings import ServeSettings

    settings = ServeSettings(header_timeout_s=0.5, keep_alive_timeout_s=0.5, max_connections=6,
                             max_header_bytes=4096)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(create_app(reference, settings), settings, log_level="error",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)
    sock.close()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):  # socket.timeout (5 s) fails the test if the server never closes
        out += chunk
    return out


def test_idle_and_half_sent_connections_are_closed(guarded_url):
    idle = [_connect(guarded_url) for _ in range(3)]
    half = [_connect(guarded_url) for _ in range(2)]
    for s in half:
        s.sendall(b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Ty")
    t0 = time.monotonic()
    try:
        assert all(_read_until_closed(s) == b"" for s in idle)
        for s in half:
            response = _read_until_closed(s)
            assert response.startswith(b"HTTP/1.1 408") and _json_of(response)["code"] == "request_timeout"
    finally:
        for s in idle + half:
            s.close()
    assert time.monotonic() - t0 < 4  # closed after the 0.5 s header timeout, well before the 5 s socket timeout
    assert httpx.get(guarded_url + "/healthz", timeout=10).status_code == 200  # the server itself is fine


def test_kept_alive_connection_is_closed_when_idle(guarded_url):
    with _connect(guarded_url) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = _read_until_closed(s)  # the answer, then the close after the 0.5 s keep-alive timeout
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"status":"ok"}')


def test_connection_cap_answers_json_503(guarded_url):
    held = [_connect(guarded_url) for _ in range(6)]
    try:
        with _connect(guarded_url) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = _read_until_closed(extra)
    finally:
        for s in held:
            s.close()
    assert response.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in response.lower()
    assert _json_of(response)["code"] == "overloaded"


# ---------------------------------------------------------------- 12: body size per content type; parsing off the loop
def test_json_index_bodies_have_a_small_cap(reference):
    from toklip.serve.app import create_app
    from toklip.serve.settings import ServeSettings

    big = b'{"indices": [[' + b"0, " * 10_000_000 + b"0]]}"  # 30 MB: the size that stalled the loop

    async def chunks():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    async def main():
        app = create_app(reference, ServeSettings())
        async with app.router.lifespan_context(app), _asgi(app) as client:
            info = (await client.get("/v1/info")).json()["limits"]
            declared = await client.post(DEC, content=big, headers={"Content-Type": "application/json"})
            streamed = await client.post(DEC, content=chunks(), headers={"Content-Type": "application/json"})
        return info, declared, streamed

    info, declared, streamed = asyncio.run(asyncio.wait_for(main(), 120))
    limit = info["max_json_body_bytes"]["indices"]
    assert limit < info["max_json_body_bytes"]["images"] == info["max_body_bytes"]
    for r in (declared, streamed):
        message = _error(r, 413, "body_too_large")
        assert f"{limit:,}" in message and "index grids" in message


def test_json_with_millions_of_values_is_refused_before_parsing(http):
    body = b'{"images": [' + b'"A",' * 1_000_000 + b'"A"]}'
    message = _error(http.post(TOK, content=body, headers={"Content-Type": "application/json"}), 413,
                     "too_many_items")
    assert "values" in message


def test_healthz_answers_while_a_json_body_is_parsed(reference, monkeypatch):
    """The parser is held in its worker thread until /healthz has answered: if parsing ran on the event loop,
    /healthz could not answer first and the held parser would time out."""
    import toklip.serve.inputs as inputs
    from toklip.serve.app import create_app
    from toklip.serve.settings import ServeSettings

    order: list[str] = []
    healthz_done = threading.Event()
    parse = inputs.parse_json_body

    def held_parse(*args):
        order.append("parse started")
        released = healthz_done.wait(10)
        order.append("parse released" if released else "parse timed out")
        return parse(*args)

    monkeypatch.setattr(inputs, "parse_json_body", held_parse)
    body = json.dumps({"indices": [[1] * GRID_N] * 32}).encode()

    async def main():
        app = create_app(reference, ServeSettings())
        async with app.router.lifespan_context(app), _asgi(app) as client:
            big = asyncio.ensure_future(client.post(DEC, content=body, headers={"Content-Type": "application/json"},
                                                    params={"format": "json"}))
            while not order:
                await asyncio.sleep(0.01)
            health = await client.get("/healthz")
            order.append("healthz answered")
            healthz_done.set()
            return health, await big

    health, decoded = asyncio.run(asyncio.wait_for(main(), 60))
    assert health.status_code == 200 and decoded.status_code == 200, decoded.text
    assert order == ["parse started", "healthz answered", "parse released"]


# ---------------------------------------------------------------- 13: messages say what was found, and no more
def test_random_bytes_are_described_not_called_pickles(http):
    rnd = bytes(np.random.default_rng(11).integers(0, 256, 4096, dtype=np.uint8))
    rnd = b"\x01" + rnd[1:]  # no accidental magic
    msg = _error(http.post(DEC, content=rnd, headers={"Content-Type": "application/octet-stream"}), 400,
                 "invalid_safetensors")
    assert "neither an .npy array nor a safetensors file" in msg and "first bytes are 01" in msg
    assert "pickle" not in msg
    msg = _error(http.post(TOK, **_upload(rnd)), 400, "not_an_image")
    assert "PNG, JPEG" in msg and "first bytes are 01" in msg and "pickle" not in msg
    pickled = pickle.dumps({"a": 1}, protocol=4)
    msg = _error(http.post(DEC, content=pickled, headers={"Content-Type": "application/octet-stream"}), 400,
                 "invalid_safetensors")
    assert "pickle" in msg and "never loaded" in msg
    msg = _error(http.post(DEC, content=media.png(), headers={"Content-Type": "application/octet-stream"}), 400,
                 "invalid_safetensors")
    assert "a PNG image" in msg


def test_decoder_exception_text_is_logged_not_sent(http):
    import io

    from PIL import Image

    broken = media.truncated(media.png(media.noise(256, 256)))
    try:
        Image.open(io.BytesIO(broken)).load()
    except Exception as e:  # noqa: BLE001 - whatever Pillow says about it
        raw = str(e)
    else:  # pragma: no cover
        pytest.fail("the truncated PNG decoded")
    message = _error(http.post(TOK, **_upload(broken)), 400, "invalid_image")
    assert raw not in message and "truncated or corrupt" in message and "images[0]" in message


def test_internal_errors_do_not_leak_their_text(reference, caplog):
    from toklip.core.errors import ConfigError
    from toklip.serve.app import create_app
    from toklip.serve.engine import Engine
    from toklip.serve.settings import ServeSettings

    secret = "/tmp/toklip-secret-path/model.pt: gs -sOutputFile=/tmp/x"

    class LeakyEngine(Engine):
        def run_texts(self, payloads):
            if payloads[0][0] == "hi":  # not the warm-up's text
                raise ConfigError(secret)
            return super().run_texts(payloads)

    async def main():
        app = create_app(LeakyEngine(reference, max_batch=4), ServeSettings())
        async with app.router.lifespan_context(app), _asgi(app) as client:
            while not app.state.toklip.ready and app.state.toklip.warmup_error is None:
                await asyncio.sleep(0.01)
            return await client.post("/v1/embed/text", json={"texts": ["hi"]})

    with caplog.at_level("ERROR", logger="toklip.serve"):
        r = asyncio.run(asyncio.wait_for(main(), 60))
    message = _error(r, 500, "internal_error")
    assert "/tmp" not in message and "gs " not in message and "server log" in message
    assert secret in caplog.text


def test_no_request_in_this_module_got_a_5xx(http):
    text = http.get("/metrics").text
    fives = [ln for ln in text.splitlines() if ln.startswith("toklip_requests_total") and 'status="5' in ln]
    assert fives == [], fives
