"""Plain ASGI middleware: metrics and headers, the API key, and the request limits.

Order (outermost first): Observe -> [CORS] -> Auth -> Limits -> the FastAPI app. Limits sit inside Auth so
an unauthenticated client cannot use up the in-flight slots; Observe sits outside everything so refused
requests are counted too.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterable
from typing import Any

from toklip.serve.errors import APIError, send_error
from toklip.serve.metrics import EndpointLabels, Metrics, method_label, status_label
from toklip.serve.settings import ServeSettings

Scope = dict[str, Any]
API_PREFIX = "/v1/"
# Open without a key: liveness, readiness, the page and its assets, and the API description.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class ObserveMiddleware:
    """Counts every request by endpoint and status, times it, and adds security headers. Labels come from
    fixed sets (see ``toklip.serve.metrics``), so made-up methods or paths cannot grow /metrics."""

    def __init__(self, app: Any, metrics: Metrics, routes: Iterable[tuple[str, Any]]) -> None:
        self.app, self.metrics, self.endpoint = app, metrics, EndpointLabels(routes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = self.endpoint(path)
        status = 500
        t0 = time.perf_counter()
        api = path.startswith(API_PREFIX)

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *COMMON_HEADERS]}
            await send(message)

        if api:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if api:
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, method_label(scope["method"]), status_label(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


class AuthMiddleware:
    """Optional API key: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time."""

    def __init__(self, app: Any, api_key: str, metrics: Metrics) -> None:
        self.app, self.key, self.metrics = app, api_key.encode("utf-8"), metrics

    def _given(self, scope: Scope) -> bytes | None:
        auth = _header(scope, b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            return auth[7:].strip()
        return _header(scope, b"x-api-key")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = self._given(scope)
        if given is None:
            message = "this server needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        elif hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        else:
            message = "the API key is not valid"
        self.metrics.rejected.labels("auth").inc()
        await send_error(send, 401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="toklip"'})


class LimitsMiddleware:
    """Bounded in-flight API requests, body size, and a deadline for the whole request."""

    def __init__(self, app: Any, settings: ServeSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        s = self.settings
        if self.in_flight >= s.max_concurrency:
            self.metrics.rejected.labels("concurrency").inc()
            await send_error(send, 503, "overloaded",
                             f"{self.in_flight} requests are in flight, the limit is {s.max_concurrency}; retry later",
                             {"Retry-After": str(s.retry_after_s)})
            return
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_error(send, 400, "bad_request", "the Content-Length header is not a number")
                return
            if declared > s.max_body_bytes:
                self.metrics.rejected.labels("body_size").inc()
                # the body is never read: close the connection, or its bytes would be parsed as the next request
                await send_error(send, 413, "body_too_large", _too_large_message(declared, s.max_body_bytes),
                                 {"Connection": "close"})
                return

        received = 0
        waiting_for_body = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, waiting_for_body
            waiting_for_body = True
            message = await receive()  # a timeout cancels this await and leaves the flag set: 408
            waiting_for_body = False
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > s.max_body_bytes:
                    self.metrics.rejected.labels("body_size").inc()
                    raise APIError(413, "body_too_large", _too_large_message(received, s.max_body_bytes, sent=True),
                                   headers={"Connection": "close"})  # the rest of the body is never read
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_flight += 1
        try:
            await asyncio.wait_for(self.app(scope, limited_receive, tracking_send), s.request_timeout_s)
        except asyncio.TimeoutError:
            if started:
                return
            if waiting_for_body:
                self.metrics.rejected.labels("upload_timeout").inc()
                await send_error(send, 408, "request_timeout",
                                 f"the request body did not arrive within {s.request_timeout_s:g} s")
            else:
                self.metrics.rejected.labels("timeout").inc()
                await send_error(send, 503, "timeout",
                                 f"the request did not finish within {s.request_timeout_s:g} s (server busy); retry",
                                 {"Retry-After": str(s.retry_after_s)})
        except APIError as e:  # raised from limited_receive outside the app's own handlers
            if not started:
                await send_error(send, e.status, e.code, e.message, e.headers)
        finally:
            self.in_flight -= 1


def _too_large_message(size: int, limit: int, sent: bool = False) -> str:
    size_text = f"more than {size:,}" if sent else f"{size:,}"
    return (f"the request body is {size_text} bytes, above this server's limit of {limit:,} bytes; "
            "send fewer or smaller images")
