"""One JSON error shape for every failure: ``{"error": {"status", "code", "message"}}``.

Clients (and people reading curl output) get the same fields whether the problem is a bad image, a
missing API key, an unknown endpoint or a full queue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from toklip.core.errors import TokLIPError


class APIError(TokLIPError):
    """An error answered to the client as it is (never a 5xx for bad input)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def bad_request(message: str, code: str = "bad_request") -> APIError:
    return APIError(400, code, message)


def invalid(message: str, code: str = "invalid_input") -> APIError:
    return APIError(422, code, message)


def too_large(message: str, code: str = "too_large") -> APIError:
    return APIError(413, code, message)


def unavailable(message: str, code: str, retry_after_s: int) -> APIError:
    return APIError(503, code, message, {"Retry-After": str(retry_after_s)})


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


def error_bytes(status: int, code: str, message: str) -> bytes:
    return json.dumps(error_body(status, code, message)).encode()


async def send_error(send: Any, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
    """Answer with the JSON error from plain ASGI middleware (before the app has started a response)."""
    body = error_bytes(status, code, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
