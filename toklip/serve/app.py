"""``create_app(model, settings)``: the FastAPI application (routes, error handlers, middleware, lifespan).

Lifespan: start the batcher, warm the model up in the background (``/healthz`` answers at once, ``/readyz``
turns 200 when warm-up is done), and on shutdown finish whatever is queued before stopping the model
thread. uvicorn itself stops accepting connections and waits for in-flight requests first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from toklip._version import __version__
from toklip.core.errors import InputError, TokLIPError
from toklip.serve.api import ServerState, build_router
from toklip.serve.batcher import Batcher
from toklip.serve.chat import ChatEngine, chat_limits
from toklip.serve.engine import Engine
from toklip.serve.errors import APIError, error_body
from toklip.serve.generate import GenerateEngine
from toklip.serve.metrics import Metrics
from toklip.serve.middleware import AuthMiddleware, LimitsMiddleware, ObserveMiddleware
from toklip.serve.settings import ServeSettings

log = logging.getLogger("toklip.serve")

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

DESCRIPTION = """TokLIP visual tokenizer as a service: images to discrete VQ tokens and semantic features,
normalised image and text embeddings, image-text similarity, and decoding tokens back to pixels; with a
generator (`--generator`), image generation from class labels or prompts; with a VLM (`--vlm`), chat about an image.

Images come as multipart uploads (field `image`), base64 strings in JSON (`images`), or the file itself as
the body. The server never fetches URLs. Errors are always JSON: `{"error": {"status", "code", "message"}}`.
"""


def _static(name: str) -> bytes:
    return importlib.resources.files("toklip.serve").joinpath("static", name).read_bytes()


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def create_app(
    model: Any,
    settings: ServeSettings | None = None,
    *,
    on_ready: Callable[[float], None] | None = None,
    generator: Any = None,
    vlm: Any = None,
) -> FastAPI:
    """Serve one TokLIP model (or an ``Engine`` around one) with the given limits; ``generator`` (a generator
    with its tokenizer attached, or a ``GenerateEngine``) also serves POST /v1/generate, and ``vlm`` (a VLM, or a
    ``ChatEngine``) POST /v1/chat."""
    settings = settings or ServeSettings()
    engine = model if isinstance(model, Engine) else Engine(model, max_batch=settings.max_batch)
    metrics = Metrics()
    state = ServerState(engine, settings, metrics)
    if generator is not None:
        state.generator = generator if isinstance(generator, GenerateEngine) else GenerateEngine(generator)
    if vlm is not None:
        state.chat = vlm if isinstance(vlm, ChatEngine) else ChatEngine(vlm, chat_limits(settings))
        state.chat.on_reply = metrics.observe_chat  # in the model thread (prometheus_client is thread-safe)

    async def warm_up() -> None:
        assert state.batcher is not None
        t0 = time.perf_counter()
        try:
            await state.batcher.run_exclusive(engine.warm_up)
            if state.generator is not None:
                await state.batcher.run_exclusive(state.generator.warm_up)
            if state.chat is not None:
                await state.batcher.run_exclusive(state.chat.warm_up)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and every request
            log.exception("warm-up failed")
            state.warmup_error = type(e).__name__  # the details (paths, device messages) go to the log only
            return
        state.ready = True
        metrics.ready.set(1)
        if on_ready is not None:
            on_ready(time.perf_counter() - t0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)
        runners = {"image": engine.run_images, "text": engine.run_texts, "decode": engine.run_decode}
        if state.generator is not None:
            runners["generate"] = state.generator.run
        if state.chat is not None:
            runners["chat"] = state.chat.run
        batcher = Batcher(
            runners,
            max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000.0, max_queue=settings.max_queue,
            on_batch=metrics.observe_batch, on_depth=metrics.queue_depth.set, op_batch={"chat": 1},
        )
        batcher.start()
        state.batcher = batcher
        warm = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            await batcher.close(drain_timeout_s=settings.request_timeout_s)
            if not warm.done():
                warm.cancel()
            state.ready = False
            metrics.ready.set(0)

    app = FastAPI(title="toklip", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.toklip = state
    _add_handlers(app)
    _add_pages(app, state)
    router = build_router(state)
    app.include_router(router)

    routes = {(r.path, getattr(r, "path_regex", None))
              for r in [*app.routes, *router.routes] if getattr(r, "path", "")}
    app.add_middleware(LimitsMiddleware, settings=settings, metrics=metrics)
    if settings.api_key:
        app.add_middleware(AuthMiddleware, api_key=settings.api_key, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"])
    app.add_middleware(ObserveMiddleware, metrics=metrics, routes=routes)
    return app


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _json_error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _json_error(422, "invalid_input", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        method, path = request.method[:20], request.url.path[:200]  # echo the client's request, briefly
        if exc.status_code == 404:
            message = f"no endpoint {method} {path}; the API is described at /docs"
            return _json_error(404, "not_found", message, headers)
        if exc.status_code == 405:
            allowed = headers.get("Allow", "")
            message = f"{method} is not allowed on {path}; use {allowed}"
            return _json_error(405, "method_not_allowed", message, headers)
        code = "bad_request" if exc.status_code == 400 else f"http_{exc.status_code}"
        return _json_error(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(422, "invalid_field", "; ".join(str(e.get("msg")) for e in exc.errors()[:5]))

    @app.exception_handler(TokLIPError)
    async def toklip_error(request: Request, exc: TokLIPError) -> JSONResponse:
        # A library error that is not the client's fault: its text (paths, settings) is for the log only.
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method[:20], request.url.path[:200],
                  exc_info=exc)
        return _json_error(500, "internal_error", f"internal server error ({type(exc).__name__}; see the server log)")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method[:20], request.url.path[:200], exc_info=exc)
        return _json_error(500, "internal_error", "internal server error (see the server log)")


def _add_pages(app: FastAPI, state: ServerState) -> None:
    page = _static("index.html")
    assets = {name: _static(name) for name in STATIC_FILES}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:
            return _json_error(404, "not_found", f"no static file {name!r}")
        return Response(assets[name], media_type=STATIC_FILES[name])

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once the model has warmed up", responses={503: {}})
    async def readyz() -> Response:
        if state.warmup_error is not None:
            return _json_error(503, "not_ready", f"warm-up failed ({state.warmup_error}); see the server log")
        if not state.ready:
            return _json_error(503, "not_ready", "warming up", {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "model": state.engine.info.name})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)
