"""The HTTP connection layer: uvicorn's h11 protocol with the limits uvicorn lacks, and the uvicorn config.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``) and the size of a request head
(``h11_max_incomplete_event_size``), but has no header read timeout: a client that connects and sends nothing,
or half a request head, holds its connection forever (slowloris). ``GuardedH11Protocol`` adds

- a header timeout: from connecting, or from the first byte of a following request, to a complete request
  head; then the connection is closed (with a JSON 408 when part of a head had arrived). Bodies are bounded
  by the app's request timeout (``LimitsMiddleware``);
- a connection cap: past ``max_connections`` open connections, each new one gets a JSON 503 with Retry-After
  and is closed (uvicorn's own ``limit_concurrency`` answers in plain text, so it is not used);
- JSON for the requests h11 refuses (malformed request lines or headers, heads above the size limit).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from toklip.serve.errors import error_bytes, send_error
from toklip.serve.settings import ServeSettings

log = logging.getLogger("toklip.serve")


class GuardedH11Protocol(H11Protocol):
    """h11 with a header timeout, a connection cap and JSON errors; limits come from ``guarded_protocol``."""

    header_timeout_s: float = ServeSettings.header_timeout_s
    max_connections: int = ServeSettings.max_connections
    max_header_bytes: int = ServeSettings.max_header_bytes
    retry_after_s: int = ServeSettings.retry_after_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections:
            log.warning("connection refused: %d connections open, the limit is %d", len(self.connections) - 1,
                        self.max_connections)
            self.app = _overloaded(self.max_connections, self.retry_after_s)
        self._arm_header_timer(started=False)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        awaiting_head = before is None or before.response_complete
        if awaiting_head and self._head_too_long(data):
            return
        try:
            super().data_received(data)
        except (UnicodeDecodeError, ValueError):  # a non-ASCII path; a Content-Length above int()'s 4,300 digits
            self.send_400_response("the request line or headers cannot be read (a non-ASCII path, or a number "
                                   "too long to be one)")
            return
        if self.cycle is not before:  # a complete head: the app and its request timeout take over
            self._cancel_header_timer()
        elif awaiting_head and self._header_timer is None:
            self._arm_header_timer(started=True)  # the first bytes of a following request head
        elif awaiting_head:
            self._head_started = True  # the first request's head has begun; its deadline stays

    def _head_too_long(self, data: bytes) -> bool:
        """h11 bounds only a head that arrives in pieces; this bounds one that arrives at once, too."""
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        if (end if end >= 0 else len(pending)) <= self.max_header_bytes:
            return False
        self._reply_and_close(431, b"Request Header Fields Too Large", "headers_too_large",
                              f"the request line and headers take more than {self.max_header_bytes:,} bytes, "
                              "this server's limit")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn sends text/plain here; send the server's JSON error shape instead."""
        import h11

        self._cancel_header_timer()
        if msg == "Invalid HTTP request received.":  # uvicorn's only text: say what to check instead
            msg = "the request is not valid HTTP/1.1: its request line or headers are malformed"
        message = f"{msg} (the request line and headers may take at most {self.max_header_bytes:,} bytes)"
        body = error_bytes(400, "invalid_http", message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # a response had already started: nothing more can be said
            pass
        self.transport.close()

    # ------------------------------------------------------------------ the header timer
    def _arm_header_timer(self, *, started: bool) -> None:
        self._cancel_header_timer()
        self._head_started = started
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self._head_started:  # part of a request arrived: say why the connection ends
            self._reply_and_close(408, b"Request Timeout", "request_timeout",
                                  f"the request line and headers did not arrive within {self.header_timeout_s:g} s")
        else:
            self.transport.close()

    def _reply_and_close(self, status: int, reason: bytes, code: str, message: str) -> None:
        """A JSON error written straight to the socket (no request was parsed, so h11 cannot send it)."""
        self._cancel_header_timer()
        body = error_bytes(status, code, message)
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, reason, len(body)) + body)
        self.transport.close()


def _overloaded(limit: int, retry_after_s: int) -> Any:
    message = f"the server has {limit} connections open, its limit; retry later"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send_error(send, 503, "overloaded", message, {"Retry-After": str(retry_after_s),
                                                                 "Connection": "close"})

    return app


def guarded_protocol(settings: ServeSettings) -> type[GuardedH11Protocol]:
    """The protocol class with this server's limits (uvicorn builds one instance per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections,
        "max_header_bytes": settings.max_header_bytes, "retry_after_s": settings.retry_after_s,
    })


def uvicorn_config(app: Any, settings: ServeSettings, **kwargs: Any) -> Any:
    """The uvicorn config ``toklip serve`` runs: the guarded protocol, its limits, no websockets."""
    import uvicorn

    return uvicorn.Config(
        app, http=guarded_protocol(settings), ws="none", timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes, limit_concurrency=None, server_header=False,
        **kwargs,
    )

