"""Limits and protection on a real server: API key, body size, items per request, pixels, bounded queue with
Retry-After, request timeout, CORS off by default. (In-process checks of the same middleware are in
test_units.py.)"""

from __future__ import annotations

import concurrent.futures
import os
import time

import httpx
import pytest

from tests.serve import media
from tests.serve.conftest import API_KEY


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code
    return err["message"]


def test_api_key_is_required_on_the_api(limited_server):
    with httpx.Client(base_url=limited_server.url, timeout=30) as anon:
        r = anon.post("/v1/embed/text", json={"texts": ["a"]})
        assert "Authorization: Bearer" in _error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        for headers in ({"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": "Basic abc"},
                        {"Authorization": b"Bearer " + API_KEY.encode()[:-1]}):
            _error(anon.get("/v1/info", headers=headers), 401, "unauthorized")
        _error(anon.get("/metrics"), 401, "unauthorized")
        # liveness, readiness, the page and the API description stay open
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/openapi.json"):
            assert anon.get(path).status_code == 200, path


def test_api_key_accepted_both_ways(limited_server, limited_http):
    assert limited_http.get("/v1/info").status_code == 200
    with httpx.Client(base_url=limited_server.url, timeout=30) as client:
        r = client.get("/v1/info", headers={"X-API-Key": API_KEY.encode()})
        assert r.status_code == 200 and r.json()["limits"]["max_request_items"] == 2
        assert client.get("/metrics", headers={"authorization": b"bearer " + API_KEY.encode()}).status_code == 200


def test_body_size_limit_declared_and_streamed(limited_http):
    big = os.urandom(300_000)  # limit is 256 KiB
    r = limited_http.post("/v1/tokenize", content=big, headers={"Content-Type": "image/png"})
    assert "262,144" in _error(r, 413, "body_too_large")
    # its body is never read, so the connection closes (else those bytes would be parsed as the next request)
    assert r.headers.get("connection") == "close"

    def chunks():  # no Content-Length: the server counts as the body arrives
        yield big[:100_000]
        yield big[100_000:]

    r = limited_http.post("/v1/tokenize", content=chunks(), headers={"Content-Type": "image/png"})
    _error(r, 413, "body_too_large")
    assert r.headers.get("connection") == "close"


def test_items_per_request_limit(limited_http):
    files = [("image", ("a.png", media.one_pixel(), "image/png"))] * 3
    assert "limit of 2" in _error(limited_http.post("/v1/tokenize", files=files), 413, "too_many_items")


def test_pixel_limit(limited_http):
    r = limited_http.post("/v1/tokenize", files=[("image", ("a.png", media.png(media.halves(400, 400)), "image/png"))])
    message = _error(r, 413, "image_too_large")
    assert "400x400" in message and "100,000" in message


def _queue_depth(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("toklip_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no toklip_queue_depth in /metrics")


def test_full_queue_gets_503_retry_after_and_slow_request_times_out(limited_http):
    """A lone request waits (up to 6 s) for batch company; a second one that does not fit the 2-item queue is
    refused at once with Retry-After; the first one runs into the 3 s request timeout (503, Retry-After)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(limited_http.post, "/v1/embed/text", json={"texts": ["waiting"]})
        deadline = time.monotonic() + 2.5
        while _queue_depth(limited_http) < 1 and time.monotonic() < deadline:
            pass
        assert _queue_depth(limited_http) == 1
        r = limited_http.post("/v1/embed/text", json={"texts": ["b", "c"]})
        assert "queue" in _error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "1"
        slow = first.result(timeout=30)
    assert "3 s" in _error(slow, 503, "timeout")
    assert slow.headers["retry-after"] == "1"
    assert _queue_depth(limited_http) == 0  # the abandoned job gave its slot back at once
    text = limited_http.get("/metrics").text
    assert 'toklip_rejected_total{reason="queue_full"} 1.0' in text
    assert 'toklip_rejected_total{reason="timeout"} 1.0' in text


def test_cors_is_off_by_default(limited_http):
    r = limited_http.get("/v1/info", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = limited_http.options("/v1/tokenize", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


@pytest.mark.parametrize("path", ["/healthz", "/v1/info"])
def test_security_headers(limited_http, path):
    r = limited_http.get(path)
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert "server" not in r.headers
