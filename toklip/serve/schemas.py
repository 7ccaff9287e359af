"""Request and response shapes. JSON bodies are validated with these (strictly: no type coercion, no unknown
fields), and the OpenAPI document at /openapi.json is built from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Output = Literal["indices", "features", "pooled"]
ArrayFormat = Literal["json", "safetensors", "npy"]
ImageFormat = Literal["png", "json"]

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


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
