"""Image generation in the server: ``POST /v1/generate`` with a class-conditional generator (``--generator``), or a
text-conditional one with its caption encoder (``"prompt"`` / ``"prompts"``).

``GenerateEngine`` is the engine of a generator: it checks a request against the generator (classes in range or
prompts of bounded length, guidance possible, the image limit) before anything is queued, and runs generation
(prompt encoding by the frozen T5 included) in the batcher's model thread (op ``"generate"``), so it never blocks
the event loop and never runs beside another model call. Each request is generated on its own, from its own
seeded ``torch.Generator``: the same request with the same seed gives the same images (batching with other
requests never changes them).

``load_serving_generator`` picks the generator's tokenizer: the served TokLIP when it fits (one model in memory),
else the tokenizer the generator's folder records.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from toklip.core.errors import ConfigError
from toklip.serve import schemas
from toklip.serve.errors import APIError, bad_request, invalid, too_large
from toklip.serve.inputs import load_json, read_json_body, validate
from toklip.serve.outputs import MEDIA_TYPES, choose_format, encode_png

if TYPE_CHECKING:
    from toklip.serve.api import ServerState
    from toklip.serve.settings import ServeSettings

TOKENIZER_MODES = ("auto", "served", "recorded")
DEFAULT_CFG = 4.0  # LlamaGen's sample_c2i default, for generators trained with class dropout
DEFAULT_T2I_CFG = 7.5  # LlamaGen's sample_t2i default
MAX_BODY_BYTES = 16 * 1024  # a generate request is a few numbers; `classes` is bounded by the image limit anyway
MAX_PROMPT_CHARS = 1000  # per prompt; T5 reads the first cls_token_num (120) tokens, a few hundred characters
JSON_BYTES_PER_CHAR = 12  # the most one character takes in JSON ("\\ud83d\\ude00"): bounds a body of prompts
GRID_PADDING = 2  # pixels between the images of a png_grid answer
SEED_BITS = 53  # server-chosen seeds stay exact in JavaScript numbers


@dataclass(frozen=True)
class GeneratorInfo:
    """What clients need to build valid generate requests (``generator`` in GET /v1/info)."""

    name: str
    model_type: str
    num_classes: int  # 0 for a t2i generator
    num_tokens: int
    grid: tuple[int, int]
    vocab_size: int
    image_size: int
    fusion: str | None
    feature_layer: int | None
    guidance: bool  # trained with class dropout: cfg > 1 is possible
    default_cfg: float
    tokenizer: str  # "served" (the served TokLIP decodes) or "recorded" (the one the generator's folder names)
    device: str
    dtype: str
    max_prompt_chars: int | None = None  # t2i: the longest prompt a request may send (None: c2i, no prompts)
    prompt_tokens: int | None = None  # t2i: caption tokens the model reads (longer prompts are truncated)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "grid": list(self.grid)}


@dataclass(frozen=True)
class GenerateJob:
    """One checked request: one label (c2i) or prompt (t2i) per image and the sampling options."""

    labels: tuple[int, ...]
    cfg: float
    cfg_interval: int | None
    top_k: int
    top_p: float
    temperature: float
    seed: int
    prompts: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """Images asked for."""
        return len(self.prompts) or len(self.labels)


@dataclass(frozen=True)
class GenerateResult:
    pixels: torch.Tensor  # uint8 [B, S, S, 3] on the CPU
    seconds: float  # model time of this request alone


class GenerateEngine:
    """A c2i generator with its tokenizer attached (``toklip.load_generator``), or a t2i one with its tokenizer and
    caption encoder, served one request at a time."""

    def __init__(self, generator: Any, *, tokenizer_label: str = "served", tokenizer_source: str | None = None) -> None:
        from toklip.gen.generator import caption_encoder_of, tokenizer_of

        t2i = generator.model_type == "t2i"
        if t2i and caption_encoder_of(generator) is None:
            raise ConfigError(
                "this generator is text-conditional (t2i) and has no caption encoder to turn prompts into caption "
                "features: save it with one, toklip.gen.save_generator(toklip.load_generator(FOLDER, "
                "caption_encoder=T5_FOLDER_OR_HUB_ID), NEW_FOLDER), and serve NEW_FOLDER")
        tok = tokenizer_of(generator)
        if tok is None:
            raise ConfigError("the generator has no tokenizer to decode its codes; load it with tokenizer=...")
        self.generator = generator.eval()
        self.tokenizer_source = tokenizer_source  # for the log only: /v1/info never shows server paths
        cfg, meta = generator.config, getattr(generator, "toklip_meta", None) or {}
        fusion = meta.get("fusion")
        weight = next(generator.parameters())
        default_cfg = DEFAULT_T2I_CFG if t2i else DEFAULT_CFG
        self.info = GeneratorInfo(
            name=str(meta.get("generator") or "custom"),
            model_type=generator.model_type,
            num_classes=0 if t2i else int(cfg.num_classes),
            num_tokens=int(generator.num_tokens),
            grid=(int(cfg.grid), int(cfg.grid)),
            vocab_size=int(cfg.vocab_size),
            image_size=int(getattr(tok, "image_size", 0) or 0),
            fusion=None if not fusion else str(fusion.get("name")),
            feature_layer=meta.get("feature_layer"),
            guidance=bool(cfg.has_null_class),
            default_cfg=default_cfg if cfg.has_null_class else 1.0,
            tokenizer=tokenizer_label,
            device=str(weight.device),
            dtype=str(weight.dtype).removeprefix("torch."),
            max_prompt_chars=MAX_PROMPT_CHARS if t2i else None,
            prompt_tokens=int(cfg.cls_token_num) if t2i else None,
        )

    def body_limit(self, settings: ServeSettings) -> int:
        """The largest request body: a few numbers, plus (t2i) the longest prompts the image limit allows."""
        if self.info.max_prompt_chars is None:
            return MAX_BODY_BYTES
        return MAX_BODY_BYTES + settings.generate_limit * self.info.max_prompt_chars * JSON_BYTES_PER_CHAR

    # ------------------------------------------------------------------ request side (event loop, cheap)
    def check(self, request: schemas.GenerateRequest, settings: ServeSettings) -> GenerateJob:
        """A validated request -> the job to queue, or a 4xx ``APIError`` saying what to change."""
        info = self.info
        if info.model_type == "t2i":
            return self._check_prompts(request, settings)
        if request.prompt is not None or request.prompts is not None:
            raise bad_request(
                f"generator {info.name!r} is class-conditional (c2i) and this server has no caption encoder, so it "
                "cannot take a prompt; send \"class\": N or \"classes\": [...] with N in "
                f"[0, {info.num_classes - 1}]", "no_caption_encoder")
        if request.class_ is not None and request.classes is not None:
            raise invalid("send \"class\" (one class, n images) or \"classes\" (n images of each), not both",
                          "invalid_field")
        if request.class_ is None and request.classes is None:
            raise invalid(f"missing field 'class': send \"class\": N (or \"classes\": [...]) with N in "
                          f"[0, {info.num_classes - 1}]", "missing_field")
        classes = [request.class_] if request.class_ is not None else list(request.classes or [])
        total = len(classes) * request.n
        if total > settings.generate_limit:
            raise too_large(f"{len(classes)} class(es) x n={request.n} is {total} images, above this server's limit "
                            f"of {settings.generate_limit} per request; ask for fewer", "too_many_items")
        bad = [c for c in classes if not 0 <= c < info.num_classes]
        if bad:
            raise invalid(f"class {bad[0]} is out of range: generator {info.name!r} has {info.num_classes} classes, "
                          f"0 to {info.num_classes - 1}", "invalid_class")
        return self._job(request, labels=tuple(c for c in classes for _ in range(request.n)))

    def _check_prompts(self, request: schemas.GenerateRequest, settings: ServeSettings) -> GenerateJob:
        info = self.info
        if request.class_ is not None or request.classes is not None:
            raise invalid(f"generator {info.name!r} is text-conditional (t2i): send \"prompt\": TEXT (n images) or "
                          "\"prompts\": [...] (n images of each), not classes", "invalid_field")
        if request.prompt is not None and request.prompts is not None:
            raise invalid("send \"prompt\" (one prompt, n images) or \"prompts\" (n images of each), not both",
                          "invalid_field")
        if request.prompt is None and request.prompts is None:
            raise invalid("missing field 'prompt': send \"prompt\": \"a red fox\" (or \"prompts\": [...])",
                          "missing_field")
        prompts = [request.prompt] if request.prompt is not None else list(request.prompts or [])
        total = len(prompts) * request.n
        if total > settings.generate_limit:
            raise too_large(f"{len(prompts)} prompt(s) x n={request.n} is {total} images, above this server's limit "
                            f"of {settings.generate_limit} per request; ask for fewer", "too_many_items")
        for i, text in enumerate(prompts):
            if not text.strip():
                raise invalid(f"prompt {i} is empty; describe the image", "invalid_prompt")
            if len(text) > MAX_PROMPT_CHARS:
                raise invalid(f"prompt {i} has {len(text)} characters; this server takes at most {MAX_PROMPT_CHARS} "
                              f"(the model reads {info.prompt_tokens} tokens of it)", "invalid_prompt")
        return self._job(request, labels=(), prompts=tuple(t for t in prompts for _ in range(request.n)))

    def _job(self, request: schemas.GenerateRequest, *, labels: tuple[int, ...],
             prompts: tuple[str, ...] = ()) -> GenerateJob:
        info = self.info
        cfg = info.default_cfg if request.cfg is None else float(request.cfg)
        if cfg > 1.0 and not info.guidance:
            raise invalid(f"generator {info.name!r} was trained without class dropout, so it has no unconditional "
                          "input for classifier-free guidance; send cfg 1", "invalid_field")
        seed = request.seed if request.seed is not None else secrets.randbits(SEED_BITS)
        return GenerateJob(labels=labels, prompts=prompts, cfg=cfg, cfg_interval=request.cfg_interval,
                           top_k=request.top_k, top_p=float(request.top_p), temperature=float(request.temperature),
                           seed=seed)

    # ------------------------------------------------------------------ model thread
    def run(self, payloads: list[GenerateJob]) -> list[GenerateResult]:
        """Batcher runner: each job on its own (its seed alone fixes its images), in order."""
        return [self.generate(job) for job in payloads]

    def generate(self, job: GenerateJob) -> GenerateResult:
        t0 = time.perf_counter()
        condition = {"prompts": list(job.prompts)} if job.prompts else {"labels": list(job.labels)}
        images = self.generator.generate(
            **condition, cfg=job.cfg, cfg_interval=job.cfg_interval, top_k=job.top_k, top_p=job.top_p,
            temperature=job.temperature, seed=job.seed)
        pixels = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
        return GenerateResult(pixels, time.perf_counter() - t0)

    def warm_up(self) -> None:
        """(t2i: one prompt encoded,) two sampled tokens and one decode: the first request pays for no lazy
        initialisation."""
        from toklip.gen.generator import encode_prompts, tokenizer_of

        tokens = min(2, self.info.num_tokens)
        if self.info.model_type == "t2i":
            cond, mask = encode_prompts(self.generator, ["a photo"])
            self.generator.sample(cond, cond_mask=mask, num_tokens=tokens, seed=0)
        else:
            self.generator.sample([0], num_tokens=tokens, seed=0)
        tok = tokenizer_of(self.generator)
        with torch.inference_mode():
            tok.decode(torch.zeros(1, *self.info.grid, dtype=torch.long, device=tok.device))


# ---------------------------------------------------------------------------------------------- images
def tile(pixels: np.ndarray, padding: int = GRID_PADDING) -> np.ndarray:
    """uint8 ``[B, S, S, 3]`` -> one ``[H, W, 3]`` grid, ``ceil(sqrt(B))`` columns in request order, black gaps;
    one image is returned as it is."""
    count, height, width = pixels.shape[:3]
    if count == 1:
        return pixels[0]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    out = np.zeros((rows * height + (rows - 1) * padding, cols * width + (cols - 1) * padding, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, cols)
        out[r * (height + padding):r * (height + padding) + height, c * (width + padding):c * (width + padding) + width] = image
    return out


# ---------------------------------------------------------------------------------------------- the route
def parse_generate_body(body: bytes) -> schemas.GenerateRequest:
    """A JSON body -> ``GenerateRequest`` (400 / 422 with the problem named)."""
    if not body.strip():
        raise bad_request("the request body is empty; send a JSON object such as {\"class\": 3, \"n\": 4}",
                          "empty_body")
    data = load_json(body)
    if not isinstance(data, dict):
        raise invalid(f"the JSON body must be an object such as {{\"class\": 3}}, got {type(data).__name__}",
                      "invalid_field")
    return validate(schemas.GenerateRequest, data)  # type: ignore[return-value]


def add_generate_route(router: APIRouter, state: ServerState) -> None:
    """``POST /v1/generate`` on ``router``; answers 404 ``no_generator`` when the server has none."""

    @router.post(
        "/generate",
        summary="Class label(s) or prompt(s) -> generated images (a PNG grid, one PNG, or JSON with base64 PNGs)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": schemas.GenerateRequest.model_json_schema(by_alias=True)}}}},
        responses={200: {"model": schemas.GenerateJSONResponse, "content": {MEDIA_TYPES["png"]: {
            "schema": {"type": "string", "format": "binary"}}},
            "description": "png_grid (default) or png: one PNG (seed in X-Toklip-Seed); json: base64 PNGs"},
            404: {"model": schemas.ErrorResponse}},
    )
    async def generate(request: Request) -> Response:
        t0 = time.perf_counter()
        engine: GenerateEngine | None = state.generator
        if engine is None:
            raise APIError(404, "no_generator", "this server runs without a generator; start it with "
                           "toklip serve --model MODEL --generator FOLDER (a folder written by "
                           "toklip.gen.save_generator, or a training run)")
        body = await read_json_body(request, engine.body_limit(state.settings), "a generate request")
        parsed = await state.offload(parse_generate_body, body)
        job = engine.check(parsed, state.settings)
        fmt = parsed.format or choose_format(None, request, ("json",), "png_grid")
        if fmt == "png" and job.count != 1:
            raise invalid(f"a PNG holds one image, but {job.count} were asked for; use format png_grid (all "
                          "in one PNG) or json (one PNG each)", "invalid_field")
        result: GenerateResult = await state.submit("generate", job, job.count)
        state.metrics.observe_generation(job.count, result.seconds)
        pixels = result.pixels.numpy()
        timing = {"generate_s": round(result.seconds, 4)}
        if fmt == "json":
            pngs = await state.offload(lambda: [encode_png(p) for p in pixels])
            timing["total_s"] = round(time.perf_counter() - t0, 4)
            condition = {"prompts": list(job.prompts)} if job.prompts else {"classes": list(job.labels)}
            return JSONResponse({
                **state.meta(), "generator": engine.info.name, "seed": job.seed, **condition,
                "cfg": job.cfg, "image_size": int(pixels.shape[1]),
                "images": [base64.b64encode(p).decode("ascii") for p in pngs], "timing": timing,
            })
        png = await state.offload(lambda: encode_png(tile(pixels)))
        headers = {"X-Toklip-Seed": str(job.seed), "X-Toklip-Generate-Seconds": f"{result.seconds:.4f}"}
        if not job.prompts:  # prompts are free text, not header material: the JSON answer carries them
            headers["X-Toklip-Classes"] = ",".join(map(str, job.labels))
        return Response(png, media_type=MEDIA_TYPES["png"], headers=headers)


# ---------------------------------------------------------------------------------------------- loading
def load_serving_generator(source: str | Path, served: Any, *, served_source: str | None = None,
                           tokenizer: str = "auto", caption_encoder: str | None = None) -> GenerateEngine:
    """``--generator SOURCE`` -> a ``GenerateEngine`` on the served model's device and dtype.

    A t2i generator brings the caption encoder its folder records (on the served device, in its own dtype), or
    ``caption_encoder`` (a T5 folder or hub id) where it lives elsewhere now.

    ``tokenizer``: ``served`` decodes (and, for fused generators, reads features) with the served TokLIP;
    ``recorded`` loads the tokenizer the generator's folder records; ``auto`` takes the served TokLIP when it
    fits (its VQ is the recorded one, and for a fused generator it is also the recorded TokLIP: the same
    ``--model`` source, and causal), else the recorded one. The VQ's sha256 is checked either way."""
    from toklip.core.io import read_json
    from toklip.gen.generator import GENERATOR_FILE, load_generator
    from toklip.train.checkpoint import run_checkpoint

    if tokenizer not in TOKENIZER_MODES:
        raise ConfigError(f"--generator-tokenizer must be one of {', '.join(TOKENIZER_MODES)}, got {tokenizer!r}")
    path = run_checkpoint(source, marker=GENERATOR_FILE)
    if not (path / GENERATOR_FILE).is_file():
        raise ConfigError(
            f"{path} is not a generator folder (no {GENERATOR_FILE}) or a training run; a LlamaGen .pt "
            "needs its size: save it first with toklip.gen.save_generator(toklip.load_generator(FILE, config=..., "
            "tokenizer=...), FOLDER)")
    record = read_json(path / GENERATOR_FILE, "generator config")
    recorded = (record.get("tokenizer") if isinstance(record, dict) else None) or {}
    use_served = tokenizer == "served" or (tokenizer == "auto" and _served_fits(served, served_source, record))
    if use_served:
        tok, label = served, "served"
    else:
        recorded_source = recorded.get("source")
        if not recorded_source:
            raise ConfigError(f"{path} records no tokenizer to load; serve it with "
                              "--generator-tokenizer served (the VQ is still checked)")
        from toklip.model.loading import load_model

        tok = load_model(str(recorded_source), device=str(served.device),
                         dtype=str(served.dtype).removeprefix("torch."))
        label = "recorded"
    gen = load_generator(path, tokenizer=tok, device=served.device, dtype=served.dtype, caption_encoder=caption_encoder)
    return GenerateEngine(gen, tokenizer_label=label, tokenizer_source=None if use_served else str(recorded_source))


def _served_fits(served: Any, served_source: str | None, record: Any) -> bool:
    """Whether the served TokLIP is the tokenizer the generator's folder records (see load_serving_generator)."""
    from toklip.gen.generator import tokenizer_sizes
    from toklip.weights.identity import state_dict_sha256

    if not isinstance(record, dict):
        return False
    recorded = record.get("tokenizer") or {}
    sizes = tokenizer_sizes(served)
    if any(key in recorded and recorded[key] != value for key, value in sizes.items()):
        return False
    if recorded.get("vq_sha256") and recorded["vq_sha256"] != state_dict_sha256(served.vq):
        return False
    if record.get("fusion"):
        if not getattr(served, "causal", False):
            return False
        return not recorded.get("source") or _same_source(str(recorded["source"]), served_source)
    return True


def _same_source(a: str, b: str | None) -> bool:
    if b is None:
        return False
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
