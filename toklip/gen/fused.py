"""Fused image-token inputs (TokLIP paper §3.2, Fig. 2b): at image position i the generator reads
``fusion(E_tok[x_i], s_i)``, where ``s_i`` is a frozen causal TokLIP's feature of the tokens ``x_<=i``.

The TokLIP is held by reference, not as a submodule: it is frozen, its weights are not part of the generator's
checkpoint (the generator's config records which tokenizer it reads), and DDP/FSDP never see it. Its features
are computed on the fly under ``no_grad`` through the KV-cached stream (``TokLIP.stream``), so teacher forcing
and sampling share one code path and sampling computes each token's feature once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError


def check_causal(tokenizer: Any) -> None:
    """Fused inputs need a causal TokLIP: a bidirectional one's feature of x_<=i depends on later tokens."""
    if not hasattr(tokenizer, "stream") or not hasattr(tokenizer, "token_encoder"):
        raise ConfigError(
            f"fused inputs need a TokLIP model (toklip.build / toklip.load), got {type(tokenizer).__name__}; "
            "for plain VQ tokens pass fusion=None"
        )
    if not tokenizer.causal:
        raise ConfigError(
            "fused generator inputs need a causal TokLIP: with bidirectional attention the feature of token i depends "
            "on tokens after i, which an autoregressive model has not generated yet. Use a causal model "
            "(model.set_attention('causal'), as TokLIP's generation setting), or fusion=None for plain VQ inputs"
        )


class FusedImageInputs(nn.Module):
    """``codes -> fusion(token_embedding(codes), TokLIP features)``; only ``fusion`` has parameters."""

    def __init__(self, tokenizer: Any, fusion: nn.Module, *, fusion_name: str, layer: int | None = None) -> None:
        super().__init__()
        check_causal(tokenizer)
        self.fusion = fusion
        self.fusion_name = fusion_name
        self.layer = layer
        self._tokenizer = [tokenizer]  # a list hides it from nn.Module: not saved, not trained, not wrapped

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer[0]

    def start(self, batch_size: int) -> Any:
        """A TokLIP feature stream for sampling ``batch_size`` sequences."""
        return self.tokenizer.stream(batch_size, layer=self.layer)

    @torch.no_grad()
    def features(self, codes: Tensor, stream: Any = None) -> Tensor:
        """Causal features ``[B, n, D]`` of ``codes`` ``[B, n]``: the next ``n`` tokens of ``stream``, or (None) a
        prefix starting at token 0."""
        if stream is None:
            stream = self.start(codes.shape[0])
        return stream.step(codes.to(self.tokenizer.device))

    def forward(self, codes: Tensor, embeddings: Tensor, stream: Any = None) -> Tensor:
        high = self.features(codes, stream).to(device=embeddings.device, dtype=embeddings.dtype)
        return self.fusion(embeddings, high)

    def extra_repr(self) -> str:
        return f"fusion={self.fusion_name!r}, layer={self.layer}"
