"""Chat in the server: ``POST /v1/chat`` with a VLM (``--vlm``): an image and messages -> the reply, whole or
streamed as server-sent events.

``ChatEngine`` holds the VLM. A request is checked completely before it queues (the messages, the options and the
image, decoded to pixels in the bounded worker pool: ``toklip.vlm.serve_chat.prepare_chat``), then runs in the
batcher's model thread (op ``"chat"``), one reply at a time, never beside another model call. A streamed reply
crosses from the model thread to the event loop piece by piece (``loop.call_soon_threadsafe`` into an
``asyncio.Queue``); when the client goes away, or the request times out, a flag stops the generation at the next
token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from toklip.core.errors import InputError
from toklip.data.preprocess import ImageError, ImageShapeError
from toklip.serve import schemas
from toklip.serve.errors import APIError, bad_request, invalid, too_large
from toklip.serve.images import image_error
from toklip.serve.inputs import decode_base64, load_json, read_json_body, validate
from toklip.vlm.serve_chat import (
    MAX_TEMPERATURE,
    ROLES,
    ChatInputError,
    ChatLimits,
    PreparedChat,
    prepare_chat,
    run_chat,
)

if TYPE_CHECKING:
    from toklip.serve.api import ServerState
    from toklip.serve.settings import ServeSettings

log = logging.getLogger("toklip.serve")

SLACK_VALUES = 64  # JSON values (commas) of a chat body besides the messages: its other fields, a data: URL
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies: pass each event on at once
DONE = b"data: [DONE]\n\n"


def chat_limits(settings: ServeSettings) -> ChatLimits:
    """The chat limits of a server: ``--max-chat-tokens`` and ``--max-image-pixels``, the rest ChatLimits'."""
    default = ChatLimits()
    return ChatLimits(max_new_tokens=settings.max_chat_tokens,
                      default_new_tokens=min(default.default_new_tokens, settings.max_chat_tokens),
                      max_image_pixels=settings.max_image_pixels)


def _public(source: Any) -> str:
    """A source as /v1/info may show it: a local path by its folder name (never a server path), a hub id as is."""
    text = str(source)
    path = Path(text).expanduser()
    return path.name if path.is_absolute() or path.exists() else text


@dataclass(frozen=True)
class ChatInfo:
    """What clients need to build valid chat requests (``chat`` in GET /v1/info)."""

    name: str
    llm: str
    tokenizer: str
    features: str
    feature_layer: int
    projector: str
    lora: bool
    template: str
    image_size: int
    image_tokens: int  # LLM positions one image takes
    device: str
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ChatJob:
    """One checked request on its way to the model thread. ``emit`` (streamed replies) is called there with
    each piece; ``stop`` is set by the event loop when nobody waits for the reply any more."""

    chat: PreparedChat
    stop: threading.Event
    emit: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ChatResult:
    """What the model thread hands back for one job (errors included: the runner never raises)."""

    text: str  # the whole reply ("" when streamed: the pieces went to emit)
    new_tokens: int
    seconds: float  # model time of this reply alone
    error: BaseException | None = None  # raised in the model thread; the route answers it


class ChatEngine:
    """A VLM (``toklip.load_vlm``) served one reply at a time."""

    def __init__(self, vlm: Any, limits: ChatLimits = ChatLimits(),
                 on_reply: Callable[[str, int, float], None] | None = None) -> None:
        """``on_reply(mode, new_tokens, seconds)`` is called in the model thread after each reply that ran; mode
        is ``whole``, ``stream``, ``stopped`` (cut short: nobody waited any more) or ``failed``."""
        self.vlm = vlm.eval()
        self.limits = limits
        self.on_reply = on_reply
        c = vlm.config
        tokenizer = _public(c.tokenizer.get("source") or getattr(vlm.toklip.config, "name", None) or "custom")
        self.info = ChatInfo(
            name=f"{tokenizer} + {_public(c.llm)}", llm=_public(c.llm), tokenizer=tokenizer, features=c.features,
            feature_layer=int(c.feature_layer), projector=c.projector, lora=bool(c.lora), template=c.template,
            image_size=int(vlm.image_size), image_tokens=int(vlm.num_image_tokens),
            device=str(vlm.device), dtype=str(next(vlm.llm.parameters()).dtype).removeprefix("torch."),
        )

    def info_json(self, max_body_bytes: int) -> dict[str, Any]:
        """``chat`` in GET /v1/info: the model and the limits of a request."""
        lim = self.limits
        return {**self.info.to_json(), "roles": list(ROLES), "limits": {
            "max_messages": lim.max_messages, "max_chars": lim.max_chars, "max_new_tokens": lim.max_new_tokens,
            "default_new_tokens": lim.default_new_tokens, "max_image_pixels": lim.max_image_pixels,
            "max_temperature": MAX_TEMPERATURE, "max_body_bytes": max_body_bytes}}

    # ------------------------------------------------------------------ request side (worker pool, cheap)
    def prepare(self, request: schemas.ChatRequest, image: bytes | None) -> PreparedChat:
        """A validated body -> the checked chat, or the 4xx saying what to change."""
        try:
            return prepare_chat(self.vlm, image, request.messages, self.limits,
                                max_new_tokens=request.max_new_tokens, temperature=request.temperature)
        except ChatInputError as e:
            raise _chat_error(e) from e
        except ImageShapeError as e:
            raise invalid(f"image: {e}", "unsupported_image_shape") from e
        except ImageError as e:
            raise image_error(e, image or b"", "image") from e
        except InputError as e:  # the VLM's own transform refusing the image
            raise invalid(f"image: {e}", "invalid_image") from e

    # ------------------------------------------------------------------ model thread
    def run(self, payloads: list[ChatJob]) -> list[ChatResult]:
        """Batcher runner: each reply on its own, in order. It never raises, so one failed reply never makes the
        batcher run the others twice (a stream's pieces must be sent once)."""
        return [self.reply(job) for job in payloads]

    def reply(self, job: ChatJob) -> ChatResult:
        if job.stop.is_set():  # the client left while this waited in the queue
            return ChatResult("", 0, 0.0)
        t0 = time.perf_counter()
        watch = _watch_class()(job.stop)
        options = {"stopping_criteria": _criteria([watch])}
        text, error = "", None
        try:
            if job.emit is None:
                text = str(run_chat(self.vlm, job.chat, **options))
            else:
                for piece in run_chat(self.vlm, job.chat, stream=True, **options):
                    if job.stop.is_set():
                        break
                    job.emit(piece)
        except Exception as e:  # noqa: BLE001 - answered by the route (an error event mid-stream)
            error = e
        result = ChatResult(text, watch.steps, time.perf_counter() - t0, error)
        if self.on_reply is not None:
            mode = "failed" if error else "stopped" if job.stop.is_set() else "whole" if job.emit is None else "stream"
            self.on_reply(mode, result.new_tokens, result.seconds)
        return result

    def warm_up(self) -> None:
        """One token about a blank image: the first request pays for no lazy initialisation."""
        import torch

        s, tag = self.info.image_size, self.vlm.config.image_token
        self.vlm.generate([[{"role": "user", "content": f"{tag}\nhi"}]], [[torch.zeros(3, s, s)]], max_new_tokens=1,
                          do_sample=False)


@functools.cache
def _watch_class() -> type:
    """A transformers stopping criterion (made on first use: transformers loads only with a VLM)."""
    import torch
    from transformers import StoppingCriteria

    class Watch(StoppingCriteria):
        """Counts the new tokens (``steps``: generate calls it once per token) and ends the generation once
        ``stop`` is set."""

        def __init__(self, stop: threading.Event) -> None:
            self.stop, self.steps = stop, 0

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.steps += 1
            return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return Watch


def _criteria(items: list[Any]) -> Any:
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList(items)


def _chat_error(e: ChatInputError) -> APIError:
    if e.limit == "max_messages":
        return too_large(str(e), "too_many_items")
    if e.limit == "max_chars":
        return too_large(str(e), "messages_too_long")
    if e.field == "messages":
        return invalid(str(e), "invalid_messages")
    if e.field == "image":
        return bad_request(str(e), "empty_image")
    return invalid(str(e), "invalid_field")


# ---------------------------------------------------------------------------------------------- the route
def parse_chat_body(body: bytes, max_values: int) -> tuple[schemas.ChatRequest, bytes | None]:
    """A JSON body -> (``ChatRequest``, the image's bytes or None); the value count is bounded first."""
    if not body.strip():
        raise bad_request("the request body is empty; send a JSON object such as "
                          "{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}", "empty_body")
    if body.count(b",") >= max_values:
        raise too_large(f"the JSON body holds more than {max_values:,} values, more than any valid chat request; "
                        "send fewer or shorter messages", "too_many_items")
    data = load_json(body)
    if not isinstance(data, dict):
        raise invalid(f"the JSON body must be an object such as {{\"messages\": [...]}}, got {type(data).__name__}",
                      "invalid_field")
    request: schemas.ChatRequest = validate(schemas.ChatRequest, data)  # type: ignore[assignment]
    image = None if request.image is None else decode_base64(request.image, 0, name="image")
    return request, image


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"  # json.dumps escapes newlines: one line per event


def _error_event(e: BaseException) -> bytes:
    """An error after the stream began, in the server's error shape."""
    if isinstance(e, APIError):
        status, code, message = e.status, e.code, e.message
    elif isinstance(e, InputError):
        status, code, message = 422, "invalid_input", str(e)
    else:
        log.error("chat reply failed mid-stream", exc_info=e)
        status, code, message = 500, "internal_error", f"internal server error ({type(e).__name__}; see the server log)"
    return _sse({"error": {"status": status, "code": code, "message": message}})


def add_chat_route(router: APIRouter, state: ServerState) -> None:
    """``POST /v1/chat`` on ``router``; answers 404 ``no_chat_model`` when the server has no VLM."""

    @router.post(
        "/chat",
        summary="An image (optional) + chat messages -> the assistant's reply, whole (JSON) or streamed (SSE)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": schemas.ChatRequest.model_json_schema()}}}},
        responses={200: {"model": schemas.ChatResponse, "content": {"text/event-stream": {"schema": {
            "type": "string"}}}, "description": "JSON, or with stream true: `data: {\"text\": piece}` events, then "
            "`data: [DONE]` (or `data: {\"error\": {...}}` when the reply fails midway)"},
            404: {"model": schemas.ErrorResponse}},
    )
    async def chat(request: Request) -> Response:
        t0 = time.perf_counter()
        engine: ChatEngine | None = state.chat
        if engine is None:
            raise APIError(404, "no_chat_model", "this server runs without a chat model; start it with "
                           "toklip serve --vlm PATH (a folder written by VLM.save_pretrained, or a vlm training "
                           "run; with or without --model)")
        settings = state.settings
        body = await read_json_body(request, settings.max_body_bytes, "a chat request (the image as base64)")
        max_values = engine.limits.max_chars + 4 * engine.limits.max_messages + SLACK_VALUES
        parsed, image = await state.offload(parse_chat_body, body, max_values)
        prepared = await state.offload(engine.prepare, parsed, image)
        stop = threading.Event()
        if not parsed.stream:
            try:
                result: ChatResult = await state.submit("chat", ChatJob(prepared, stop), 1)
            finally:
                stop.set()  # the request timeout cancels the wait: the model stops too
            if result.error is not None:
                raise result.error
            return JSONResponse({
                "vlm": engine.info.name, "text": result.text, "usage": {"new_tokens": result.new_tokens},
                "timing": {"generate_s": round(result.seconds, 4), "total_s": round(time.perf_counter() - t0, 4)},
            })
        return await _stream(state, prepared, stop)


async def _stream(state: ServerState, prepared: PreparedChat, stop: threading.Event) -> Response:
    """Queue a streamed reply; an error before its first piece is a plain HTTP error, after it an error event."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()  # pieces, then None once the job is over
    job = ChatJob(prepared, stop, emit=lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece))
    task = asyncio.create_task(state.submit("chat", job, 1))
    # after the job's last emit: the result arrives through the loop after every piece scheduled before it
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        first = await queue.get()
        if first is None:
            result: ChatResult = task.result()  # raises the queue's 503s, as any endpoint's
            if result.error is not None:
                raise result.error
    except BaseException:
        stop.set()
        task.cancel()
        raise

    async def events() -> AsyncIterator[bytes]:
        try:
            piece = first
            while piece is not None:
                yield _sse({"text": piece})
                piece = await queue.get()
            try:
                result = task.result()
                if result.error is not None:
                    raise result.error
            except Exception as e:  # noqa: BLE001 - the status line has gone: the error is an event
                yield _error_event(e)
                return
            yield DONE
        finally:  # finished, failed, or cancelled by a disconnect or the request timeout
            stop.set()
            if not task.done():
                task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


# ---------------------------------------------------------------------------------------------- loading
def load_serving_vlm(source: str | Path, served: Any, limits: ChatLimits = ChatLimits(), *,
                     device: Any = None, dtype: Any = None) -> ChatEngine:
    """``--vlm SOURCE`` (a VLM folder or a vlm training run) -> a ``ChatEngine`` on the served model's device, in
    its dtype (``served`` None: on ``device`` / ``dtype``, when the VLM's own TokLIP is the served model). The
    VLM's TokLIP and LLM are rebuilt from the sources its config.json names."""
    from toklip.vlm.saving import load_vlm

    if served is not None:
        device, dtype = served.device, served.dtype
    vlm = load_vlm(source, device=device, dtype=dtype)
    return ChatEngine(vlm, limits)
