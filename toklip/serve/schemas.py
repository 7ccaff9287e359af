"""Request and response shapes. JSON bodies are validated with these (strictly: no type coercion, no unknown
fields), and the OpenAPI document at /openapi.json is built from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Output = Literal["indices", "features", "pooled"]
ArrayFormat = Literal["json", "safetensors", "npy"]
ImageFormat = Literal["png", "json"]
GenerateFormat = Literal["png_grid", "png", "json"]

_IMAGES = Field(
    min_length=1,
    description="Image files (PNG, JPEG, WebP, GIF, BMP, TIFF) as base64 strings or data: URLs. Never URLs: "
    "the server fetches nothing.",
)
_TEXTS = Field(min_length=1, description="Texts to embed (tokenised and truncated by the model's text tokenizer).")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TokenizeOptions(_Strict):
    outputs: list[Output] = Field(
        default=["indices"], min_length=1,
        description="What to return: VQ indices, per-token semantic features, the pooled (unnormalised) embedding.",
    )
    format: ArrayFormat | None = Field(
        default=None, description="json (default), safetensors (all outputs) or npy (exactly one output).")


class EmbedOptions(_Strict):
    format: ArrayFormat | None = Field(default=None, description="json (default), safetensors or npy.")


class DecodeOptions(_Strict):
    format: ImageFormat | None = Field(
        default=None, description="png (default; one grid per request) or json (base64 PNGs, any batch).")


class NoOptions(_Strict):
    pass


class TokenizeRequest(TokenizeOptions):
    images: list[str] = _IMAGES


class EmbedImageRequest(EmbedOptions):
    images: list[str] = _IMAGES


class EmbedTextRequest(EmbedOptions):
    texts: list[str] = _TEXTS


class SimilarityRequest(_Strict):
    images: list[str] = _IMAGES
    texts: list[str] = _TEXTS


class DecodeRequest(DecodeOptions):
    indices: list[Any] = Field(
        min_length=1,
        description="A batch of code-index grids: [B][N] (raster order) or [B][h][w]; one image is [[...]].",
    )


class GenerateRequest(_Strict):
    """POST /v1/generate: ``class``/``classes`` for a class-conditional generator, ``prompt``/``prompts`` for a
    text-conditional one. Limits beyond these (images per request, classes in range, prompt length) depend on the
    server and the generator; GET /v1/info says them."""

    class_: int | None = Field(default=None, alias="class", description="The class to generate (c2i generators).")
    classes: list[int] | None = Field(default=None, min_length=1,
                                      description="Several classes: n images of each, in this order.")
    prompt: str | None = Field(default=None, description=(
        "The prompt to generate (t2i generators; a c2i one answers 400 no_caption_encoder)."))
    prompts: list[str] | None = Field(default=None, min_length=1,
                                      description="Several prompts (t2i): n images of each, in this order.")
    n: int = Field(default=1, ge=1, description="Images per class or prompt.")
    cfg: float | None = Field(default=None, ge=1.0, le=20.0, description=(
        "Classifier-free guidance scale in [1, 20] (1 = none); default LlamaGen's, 4 (c2i) or 7.5 (t2i), or 1 for "
        "a generator trained without class dropout."))
    cfg_interval: int | None = Field(default=None, ge=-1,
                                     description="Guide only the first token and decode steps 0..k (None, -1: all).")
    top_k: int = Field(default=0, ge=0, description="Keep the k most likely codes at each step (0 = off).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold (1 = off).")
    temperature: float = Field(default=1.0, gt=0.0, le=10.0, description="Softmax temperature, in (0, 10].")
    seed: int | None = Field(default=None, ge=0, lt=2**63, description=(
        "Same request + same seed = same images. Without one the server picks one (below 2**53) and returns it."))
    format: GenerateFormat | None = Field(default=None, description=(
        "png_grid (default: every image in one PNG), png (exactly one image), or json (base64 PNGs, the seed and "
        "timing). Accept: application/json also selects json."))


_MESSAGES_SCHEMA = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role", "content"], "additionalProperties": False,
    "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}}


class ChatRequest(_Strict):
    """POST /v1/chat. The messages are checked by ``toklip.vlm.serve_chat.check_messages`` (roles, the limits in
    GET /v1/info's ``chat``, the last turn the user's); their schema here is documentation."""

    messages: Any = Field(description=(
        "The conversation so far, oldest first, ending with the user's turn: [{\"role\": \"user\", "
        "\"content\": \"...\"}]. No '<image>' placeholders: the server puts the image before the first user turn."),
        json_schema_extra=_MESSAGES_SCHEMA)
    image: str | None = Field(default=None, description=(
        "One image file as base64 (or a data: URL), about which the conversation is; none for text only. Send it "
        "with every turn: the server keeps no state."))
    max_new_tokens: int | None = Field(default=None, description=(
        "At most this many new tokens (default 128, capped by the server's max_new_tokens, GET /v1/info)."))
    temperature: float = Field(default=0.0, description="0 (default): greedy; in (0, 2]: sampling.")
    stream: bool = Field(default=False, description=(
        "false: one JSON answer; true: text/event-stream, `data: {\"text\": ...}` events then `data: [DONE]`."))


# ------------------------------------------------------------------ responses (documentation only)
class TokenizeResponse(BaseModel):
    model: str
    grid: list[int] = Field(description="[h, w] token grid; indices are in raster order")
    vocab_size: int
    indices: list[list[int]] | None = Field(default=None, description="[B][N] VQ code ids")
    features: list[list[list[float]]] | None = Field(default=None, description="[B][N][D] per-token features")
    pooled: list[list[float]] | None = Field(default=None, description="[B][E] pooled image embedding")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="[B][E] L2-normalised embeddings")


class SimilarityResponse(BaseModel):
    model: str
    cosine: list[list[float]] = Field(description="[images][texts] cosine similarity")
    logits: list[list[float]] = Field(description="logit_scale * cosine (+ logit_bias)")
    probs: list[list[float]] = Field(description="softmax of the logits over the texts (zero-shot scores)")


class DecodeJSONResponse(BaseModel):
    model: str
    images: list[str] = Field(description="base64 PNGs")


class GenerateJSONResponse(BaseModel):
    model: str
    generator: str
    seed: int = Field(description="the seed used: send it again for the same images")
    classes: list[int] | None = Field(default=None, description="c2i: the class of each image, in order")
    prompts: list[str] | None = Field(default=None, description="t2i: the prompt of each image, in order")
    cfg: float
    image_size: int
    images: list[str] = Field(description="base64 PNGs")
    timing: dict[str, float] = Field(description="generate_s (model time), total_s (the whole request)")


class ChatResponse(BaseModel):
    vlm: str = Field(description="the chat model (GET /v1/info's chat.name)")
    text: str = Field(description="the assistant's reply, stripped")
    usage: dict[str, int] = Field(description="new_tokens: tokens generated (the end-of-sequence token included)")
    timing: dict[str, float] = Field(description="generate_s (model time), total_s (the whole request)")


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
