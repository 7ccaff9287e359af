"""The model side of the server: batched calls on one TokLIP model, run in the batcher's model thread.

Every runner takes the payloads of several requests, concatenates them into one batch (split into chunks
of ``max_batch``), runs the model once per chunk under ``torch.inference_mode`` and hands each request its
own slice back as CPU float32 / int64 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from toklip.core.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What clients need to know to build valid requests (served at GET /v1/info)."""

    name: str
    image_size: int
    grid: tuple[int, int]
    vocab_size: int
    code_dim: int
    feature_dim: int
    embed_dim: int
    has_text: bool
    attention: str
    device: str
    dtype: str
    logit_scale: float
    logit_bias: float | None

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "grid": list(self.grid)}


class Engine:
    """Wraps a TokLIP model with the three batched operations the server needs."""

    def __init__(self, model: Any, *, max_batch: int) -> None:
        self.model = model.eval()
        self.max_batch = max_batch
        self.info = ModelInfo(
            name=model.config.name or "custom",
            image_size=int(model.image_size),
            grid=(int(model.grid[0]), int(model.grid[1])),
            vocab_size=int(model.vq.vocab_size),
            code_dim=int(model.vq.code_dim),
            feature_dim=int(model.token_encoder.width),
            embed_dim=int(model.token_encoder.embed_dim),
            has_text=model.text is not None and model.tokenizer is not None,
            attention=model.attention_mode.name,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            logit_scale=float(model.logit_scale.detach().exp()),
            logit_bias=None if model.logit_bias is None else float(model.logit_bias.detach()),
        )

    # ------------------------------------------------------------------ request side (any thread)
    def preprocess(self, image: Image.Image) -> Tensor:
        """RGB PIL image -> [3, S, S] in [-1, 1] with the model's own eval transform."""
        from toklip.data.preprocess import resize_and_crop, to_tensor

        return to_tensor(resize_and_crop(image, self.info.image_size, self.model.config.resize_mode))

    # ------------------------------------------------------------------ model thread
    def _chunks(self, batch: Tensor) -> list[Tensor]:
        return list(batch.split(self.max_batch))

    def run_images(self, payloads: list[Tensor]) -> list[dict[str, Tensor]]:
        """Payloads [n_i, 3, S, S] -> per payload {indices [n_i, N], features [n_i, N, D], pooled [n_i, E]}."""
        model = self.model
        outs: list[dict[str, Tensor]] = []
        with torch.inference_mode():
            for chunk in self._chunks(torch.cat(payloads)):
                out = model.tokenize(chunk.to(model.device))
                outs.append({
                    "indices": out.indices.to("cpu", torch.int64),
                    "features": out.features.to("cpu", torch.float32),
                    "pooled": out.pooled.to("cpu", torch.float32),
                })
        return _split({k: torch.cat([o[k] for o in outs]) for k in outs[0]}, [p.shape[0] for p in payloads])

    def run_texts(self, payloads: list[Sequence[str]]) -> list[Tensor]:
        """Payloads of strings -> per payload normalised text embeddings [n_i, E] (float32, CPU)."""
        if not self.info.has_text:
            raise ConfigError("this model has no text tower")
        texts = [t for p in payloads for t in p]
        with torch.inference_mode():
            parts = [
                self.model.encode_text(list(texts[i:i + self.max_batch]), normalize=True).to("cpu", torch.float32)
                for i in range(0, len(texts), self.max_batch)
            ]
        emb = torch.cat(parts)
        return list(emb.split([len(p) for p in payloads]))

    def run_decode(self, payloads: list[Tensor]) -> list[Tensor]:
        """Payloads of indices [n_i, h, w] -> per payload uint8 pixels [n_i, S, S, 3] (CPU)."""
        with torch.inference_mode():
            parts = []
            for chunk in self._chunks(torch.cat(payloads)):
                images = self.model.decode(chunk.to(self.model.device))
                parts.append((images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
        pixels = torch.cat(parts)
        return list(pixels.split([p.shape[0] for p in payloads]))

    def warm_up(self) -> None:
        """One pass of every operation, so the first request does not pay for lazy initialisation."""
        s, (h, w) = self.info.image_size, self.info.grid
        out = self.run_images([torch.zeros(1, 3, s, s)])[0]
        self.run_decode([out["indices"].reshape(1, h, w)])
        if self.info.has_text:
            self.run_texts([["a photo"]])


def _split(batch: dict[str, Tensor], sizes: list[int]) -> list[dict[str, Tensor]]:
    parts = {k: v.split(sizes) for k, v in batch.items()}
    return [{k: parts[k][i] for k in batch} for i in range(len(sizes))]
