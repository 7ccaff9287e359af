"""The /v1 endpoints. Each one parses and checks its input completely before anything is queued for the
model, so a bad request costs no model time and never fails a batch it would have shared."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from toklip.data.preprocess import ALLOWED_FORMATS, MAX_ASPECT_RATIO
from toklip.serve import schemas
from toklip.serve.batcher import Batcher, QueueFull, ShuttingDown
from toklip.serve.engine import Engine
from toklip.serve.errors import bad_request, invalid, unavailable
from toklip.serve.chat import add_chat_route
from toklip.serve.generate import add_generate_route
from toklip.serve.images import images_to_batch
from toklip.serve.inputs import BodyLimits, Parsed, body_limits, parse_request
from toklip.serve.metrics import Metrics
from toklip.serve.outputs import MEDIA_TYPES, array_response, choose_format, encode_png, png_response
from toklip.serve.settings import ServeSettings
from toklip.layers.vq import check_indices

IMAGES = frozenset({"images"})
TEXTS = frozenset({"texts"})
BOTH = frozenset({"images", "texts"})
INDICES = frozenset({"indices"})


@dataclass
class ServerState:
    """Everything the routes share; one per app."""

    engine: Engine
    settings: ServeSettings
    metrics: Metrics
    batcher: Batcher | None = None
    ready: bool = False
    warmup_error: str | None = None
    decode_limiter: Any = field(default=None)  # anyio.CapacityLimiter, made in the app's lifespan
    generator: Any = None  # toklip.serve.generate.GenerateEngine when started with --generator
    chat: Any = None  # toklip.serve.chat.ChatEngine when started with --vlm

    async def submit(self, op: str, payload: Any, n: int) -> Any:
        if self.warmup_error is not None:
            raise unavailable(f"the model failed its warm-up ({self.warmup_error}); see the server log",
                              "not_ready", self.settings.retry_after_s)
        if self.batcher is None:
            raise unavailable("the server is starting", "not_ready", self.settings.retry_after_s)
        try:
            return await self.batcher.submit(op, payload, n)
        except QueueFull as e:
            self.metrics.rejected.labels("queue_full").inc()
            raise unavailable(f"the queue is full ({e}); retry later", "queue_full", self.settings.retry_after_s) from e
        except ShuttingDown as e:
            raise unavailable(str(e), "shutting_down", self.settings.retry_after_s) from e

    async def offload(self, func: Any, *args: Any) -> Any:
        """Run CPU work (parsing, decoding) in the bounded worker pool, never on the event loop."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self.decode_limiter)

    async def parse(self, request: Request, body_model: type[BaseModel], options_model: type[BaseModel],
                    wants: frozenset[str]) -> Parsed:
        return await parse_request(request, self.settings, body_model=body_model, options_model=options_model,
                                   wants=wants, limits=self.limits(wants), offload=self.offload)

    def limits(self, wants: frozenset[str]) -> BodyLimits:
        return body_limits(self.settings, wants, self.engine.info.grid)

    async def images(self, parsed: Parsed) -> torch.Tensor:
        """Decode and preprocess in a worker thread (bounded), never on the event loop."""
        return await self.offload(images_to_batch, parsed.images, self.settings.max_image_pixels,
                                  self.engine.preprocess)

    def meta(self) -> dict[str, Any]:
        return {"model": self.engine.info.name}


def _body_doc(model: type[BaseModel], form: Mapping[str, Any] | None, raw: tuple[str, ...] = ()) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if form is not None:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": dict(form)}}
    for media in raw:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


_FILE = {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "one or more image files"}
_TEXTS = {"type": "array", "items": {"type": "string"}, "description": "one field per text"}
_ERRORS = {code: {"model": schemas.ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 503)}


def _binary(*formats: str) -> dict[str, Any]:
    return {MEDIA_TYPES[f]: {"schema": {"type": "string", "format": "binary"}} for f in formats}


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=_ERRORS)
    settings, engine = state.settings, state.engine

    def need_text() -> None:
        if not engine.info.has_text:
            raise bad_request(f"model {engine.info.name!r} has no text tower, so it cannot embed texts",
                              "no_text_tower")

    @router.get("/info", summary="The model and this server's limits")
    async def info() -> dict[str, Any]:
        s = settings
        return {
            **engine.info.to_json(),
            "limits": {
                "max_request_items": s.max_request_items, "max_body_bytes": s.max_body_bytes,
                "max_image_pixels": s.max_image_pixels, "max_text_chars": s.max_text_chars,
                "max_batch": s.max_batch, "request_timeout_s": s.request_timeout_s,
                "max_json_body_bytes": {name: state.limits(w).json_bytes
                                        for name, w in (("images", IMAGES), ("texts", TEXTS), ("indices", INDICES))},
                "max_index_file_bytes": state.limits(INDICES).binary_bytes,
                "allowed_image_formats": list(ALLOWED_FORMATS),
                "max_aspect_ratio": MAX_ASPECT_RATIO,
                "max_generate_images": s.generate_limit,
            },
            "generator": None if state.generator is None else state.generator.info.to_json(),
            "chat": None if state.chat is None else state.chat.info_json(s.max_body_bytes),
        }

    @router.post(
        "/tokenize",
        summary="Images -> VQ indices (and, on request, per-token features and the pooled embedding)",
        openapi_extra=_body_doc(schemas.TokenizeRequest, {"image": _FILE, "outputs": {"type": "string"},
                                                          "format": {"type": "string"}}, ("image/*",)),
        responses={200: {"model": schemas.TokenizeResponse, "content": _binary("safetensors", "npy")}},
    )
    async def tokenize(request: Request) -> Response:
        parsed = await state.parse(request, schemas.TokenizeRequest, schemas.TokenizeOptions, IMAGES)
        outputs = list(dict.fromkeys(getattr(parsed.options, "outputs", ["indices"])))
        fmt = choose_format(_format(parsed), request, ("json", "safetensors", "npy"), "json")
        if fmt == "npy" and len(outputs) != 1:
            raise invalid(f"an .npy file holds one array, but {len(outputs)} outputs were asked for "
                          f"({', '.join(outputs)}); ask for one output or use format=safetensors", "invalid_field")
        batch = await state.images(parsed)
        out = await state.submit("image", batch, batch.shape[0])
        arrays = {k: out[k].numpy() for k in outputs}
        meta = {**state.meta(), "grid": list(engine.info.grid), "vocab_size": engine.info.vocab_size}
        return array_response(arrays, fmt, meta)

    @router.post(
        "/embed/image",
        summary="Images -> L2-normalised image embeddings",
        openapi_extra=_body_doc(schemas.EmbedImageRequest, {"image": _FILE, "format": {"type": "string"}},
                                ("image/*",)),
        responses={200: {"model": schemas.EmbedResponse, "content": _binary("safetensors", "npy")}},
    )
    async def embed_image(request: Request) -> Response:
        parsed = await state.parse(request, schemas.EmbedImageRequest, schemas.EmbedOptions, IMAGES)
        fmt = choose_format(_format(parsed), request, ("json", "safetensors", "npy"), "json")
        batch = await state.images(parsed)
        out = await state.submit("image", batch, batch.shape[0])
        emb = torch.nn.functional.normalize(out["pooled"], dim=-1).numpy()
        return array_response({"embeddings": emb}, fmt, {**state.meta(), "dim": int(emb.shape[-1])})

    @router.post(
        "/embed/text",
        summary="Texts -> L2-normalised text embeddings",
        openapi_extra=_body_doc(schemas.EmbedTextRequest, {"texts": _TEXTS, "format": {"type": "string"}}),
        responses={200: {"model": schemas.EmbedResponse, "content": _binary("safetensors", "npy")}},
    )
    async def embed_text(request: Request) -> Response:
        need_text()
        parsed = await state.parse(request, schemas.EmbedTextRequest, schemas.EmbedOptions, TEXTS)
        fmt = choose_format(_format(parsed), request, ("json", "safetensors", "npy"), "json")
        emb = (await state.submit("text", parsed.texts, len(parsed.texts))).numpy()
        return array_response({"embeddings": emb}, fmt, {**state.meta(), "dim": int(emb.shape[-1])})

    @router.post(
        "/similarity",
        summary="Images x texts -> cosine similarity, logits and zero-shot probabilities",
        openapi_extra=_body_doc(schemas.SimilarityRequest, {"image": _FILE, "texts": _TEXTS}),
        responses={200: {"model": schemas.SimilarityResponse}},
    )
    async def similarity(request: Request) -> Response:
        need_text()
        parsed = await state.parse(request, schemas.SimilarityRequest, schemas.NoOptions, BOTH)
        batch = await state.images(parsed)
        image_out, text_emb = await asyncio.gather(
            state.submit("image", batch, batch.shape[0]), state.submit("text", parsed.texts, len(parsed.texts))
        )
        img = torch.nn.functional.normalize(image_out["pooled"], dim=-1)
        cosine = img @ text_emb.T
        scaled = engine.info.logit_scale * cosine
        logits = scaled + (engine.info.logit_bias or 0.0)
        probs = scaled.softmax(dim=-1)
        return JSONResponse({**state.meta(), "cosine": cosine.tolist(), "logits": logits.tolist(),
                             "probs": probs.tolist()})

    @router.post(
        "/decode",
        summary="VQ indices -> image (PNG)",
        openapi_extra=_body_doc(schemas.DecodeRequest, None, (MEDIA_TYPES["npy"], MEDIA_TYPES["safetensors"])),
        responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                         "description": "one PNG, or JSON with base64 PNGs (format=json)"}},
    )
    async def decode(request: Request) -> Response:
        parsed = await state.parse(request, schemas.DecodeRequest, schemas.DecodeOptions, INDICES)
        fmt = choose_format(_format(parsed), request, ("png", "json"), "png")
        indices = check_grids(parsed.indices, engine)
        if fmt == "png" and indices.shape[0] != 1:
            raise invalid(f"a PNG holds one image, but {indices.shape[0]} grids were sent; send format=json "
                          "for a batch", "invalid_field")
        pixels = await state.submit("decode", indices, indices.shape[0])
        pngs = await state.offload(lambda: [encode_png(p) for p in pixels.numpy()])
        return png_response(pngs, fmt, state.meta())

    add_generate_route(router, state)
    add_chat_route(router, state)
    return router


def _format(parsed: Parsed) -> str | None:
    return getattr(parsed.options, "format", None)


def check_grids(arr: np.ndarray, engine: Engine) -> torch.Tensor:
    """Integer array [B, N] or [B, h, w] -> int64 [B, h, w] that fits this model (422 otherwise)."""
    from toklip.core.errors import InputError

    try:
        return check_indices(torch.from_numpy(np.ascontiguousarray(arr)), vocab_size=engine.info.vocab_size,
                             grid=engine.info.grid)
    except InputError as e:
        raise invalid(str(e), "invalid_indices") from e

