"""Per-token image features for a language model, read from a frozen TokLIP.

``features="toklip"`` takes TokLIP's semantic features: ``feature_layer=-1`` is ``model.tokenize(x).features``
(after the token encoder's final norm); any other layer is a hidden state of the token encoder counted as in
Hugging Face's ``hidden_states`` (0: the block input after position embeddings, k: the output of block k, -2: the
output of the penultimate block, LLaVA's choice), read with a forward hook so any encoder with ``blocks`` works.
``features="vq"`` is the paper's "Discrete Tokenizer (VQGAN)" row: the VQ code vectors themselves.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError

FeatureSource = Literal["toklip", "vq"]
FEATURE_SOURCES = ("toklip", "vq")


class ImageFeatures(nn.Module):
    """images [B, 3, S, S] in [-1, 1] -> features [B, N, dim]; the TokLIP model inside is frozen and in eval mode."""

    def __init__(self, toklip: nn.Module, *, feature_layer: int = -1, features: FeatureSource = "toklip") -> None:
        super().__init__()
        if features not in FEATURE_SOURCES:
            raise ConfigError(f"features must be one of {FEATURE_SOURCES}, got {features!r}")
        self.toklip = toklip.requires_grad_(False).eval()
        self.source = features
        self.feature_layer = int(feature_layer)
        self.num_tokens = int(toklip.grid[0] * toklip.grid[1])
        if features == "vq":
            if self.feature_layer != -1:
                raise ConfigError("features='vq' reads the VQ code vectors; feature_layer applies to TokLIP features")
            self.dim = int(toklip.vq.code_dim)
        else:
            self.dim = int(toklip.token_encoder.width)
            self._block_index = self._resolve_layer(self.feature_layer)

    def _resolve_layer(self, layer: int) -> int | None:
        """None for the final (normed) features; else the hidden-state index 0..depth (0 = block input)."""
        if layer == -1:
            return None
        blocks = getattr(self.toklip.token_encoder, "blocks", None)
        if blocks is None or not hasattr(blocks, "__len__"):
            raise ConfigError(
                f"feature_layer={layer} needs a token encoder with `blocks`; "
                f"{type(self.toklip.token_encoder).__name__} has none (use feature_layer=-1)")
        depth = len(blocks)
        index = depth + 1 + layer if layer < 0 else layer
        if not 0 <= index <= depth:
            raise ConfigError(f"feature_layer={layer} is out of range for a {depth}-block token encoder: "
                              f"use -1 (final features), 0..{depth} or -{depth + 1}..-2")
        return index

    def train(self, mode: bool = True) -> ImageFeatures:
        super().train(mode)
        self.toklip.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if self.source == "vq":  # the VQ alone: the token encoder is not run
            images = self.toklip.check_images(images)
            codes = self.toklip.vq.encode(images.to(self.toklip._vq_dtype())).codes
            return codes.reshape(images.shape[0], -1, codes.shape[-1]).float()
        if self._block_index is None:
            return self.toklip.tokenize(images).features
        return self._hidden_state(images, self._block_index)

    def _hidden_state(self, images: Tensor, index: int) -> Tensor:
        enc = self.toklip.token_encoder
        captured: list[Tensor] = []
        if index == 0:
            handle = enc.blocks[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        else:
            handle = enc.blocks[index - 1].register_forward_hook(lambda _m, _a, out: captured.append(out))
        try:
            self.toklip.tokenize(images)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"expected one hidden state from the token encoder, captured {len(captured)}")
        return captured[0][:, : self.num_tokens]  # drops an appended class token
