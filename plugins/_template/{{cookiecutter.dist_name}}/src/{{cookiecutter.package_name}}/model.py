{% if cookiecutter.component_kind == "vq" -%}
"""The {{ cookiecutter.component_name }} tokenizer: replace the layers with your own model.

It is a complete, working VQ tokenizer so that the generated tests pass from the start: a patch encoder,
a cosine nearest-neighbour codebook lookup, and a transposed-conv decoder. ``VQTokenizerBase`` validates
images and indices (and raises ``toklip.InputError`` with a clear message), so the methods below only do maths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.protocols import VQEncoding
from toklip.layers import VQTokenizerBase


class Tokenizer(VQTokenizerBase):
    """images [B, 3, H, W] in [-1, 1] -> indices [B, H/ds, W/ds] (int64) and codes [B, H/ds, W/ds, code_dim]."""

    def __init__(self, *, downsample: int = 16, code_dim: int = 8, vocab_size: int = 16384, hidden: int = 256) -> None:
        super().__init__()
        self.downsample, self.code_dim, self.vocab_size = downsample, code_dim, vocab_size
        self.encoder = nn.Sequential(
            nn.Conv2d(3, hidden, downsample, stride=downsample), nn.GELU(), nn.Conv2d(hidden, code_dim, 1)
        )
        self.codebook = nn.Embedding(vocab_size, code_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 1), nn.GELU(), nn.ConvTranspose2d(hidden, 3, downsample, stride=downsample)
        )

    def normalized_codebook(self) -> Tensor:
        return F.normalize(self.codebook.weight.float(), dim=-1)

    def _encode(self, images: Tensor) -> VQEncoding:
        latent = self.encoder(images)  # [B, c, h, w]
        z = F.normalize(latent.float().permute(0, 2, 3, 1), dim=-1)
        indices = (z @ self.normalized_codebook().T).argmax(dim=-1)  # cosine nearest code, [B, h, w] int64
        return VQEncoding(indices=indices, codes=self.indices_to_codes(indices), latent=latent)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.normalized_codebook()[indices.long()]

    def _decode_codes(self, codes_bchw: Tensor) -> Tensor:
        return torch.tanh(self.decoder(codes_bchw.to(self.codebook.weight.dtype)))

    def load_checkpoint(self, path: str | Path) -> None:
        """Strict, safe loading (safetensors or torch.load(weights_only=True))."""
        from toklip.weights import load_state_dict_strict, read_checkpoint, unwrap_state_dict

        load_state_dict_strict(self, unwrap_state_dict(read_checkpoint(path)), source=str(path))


def build(*, checkpoint: str | Path | None = None, pretrained: str | Path | None = None, **kwargs: Any) -> Tokenizer:
    """The factory toklip calls: registered defaults merged with the user's keyword arguments.

    ``checkpoint`` and ``pretrained`` are local weight files (``toklip.build(..., pretrained=True)`` resolves the
    weights registered in plugin.py to a file before calling this).
    """
    model = Tokenizer(**kwargs)
    source = checkpoint or pretrained
    if source:
        model.load_checkpoint(source)
    return model.requires_grad_(False).eval()
{% elif cookiecutter.component_kind == "encoder" -%}
"""The {{ cookiecutter.component_name }} encoder: replace the vision tower with your own.

A semantic encoder is a factory object, not an nn.Module: it knows the grid, normalisation and logit init, and
builds the token encoder (initialised from its vision tower), the text tower (None here: vision only), the
tokenizer and the frozen teacher used for distillation. This one is a timm ViT with average pooling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from toklip import ConfigError


class Encoder:
    """``timm_model`` with ``vision`` overrides (embed_dim, depth, num_heads, ...) at ``image_size``."""

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    init_logit_scale = math.log(10.0)
    init_logit_bias: float | None = None
    context_length = None  # no text tower
    vocab_size = None

    def __init__(self, *, timm_model: str = "vit_base_patch16_224", image_size: int = 224, patch_size: int = 16,
                 vision: Mapping[str, Any] | None = None, checkpoint: str | Path | None = None,
                 pretrained: str | Path | None = None) -> None:
        if image_size % patch_size:
            raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.timm_model, self.image_size, self.patch_size = timm_model, int(image_size), int(patch_size)
        self.vision = {"class_token": False, "global_pool": "avg", "patch_size": self.patch_size, **(vision or {})}
        self.embed_dim = int(self.vision.get("embed_dim", 768))
        self.weights = checkpoint or pretrained  # a local file: toklip.build resolves hub tags before calling

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    def _vit(self) -> nn.Module:
        import timm

        from toklip.layers.attention import BackendAttention  # routes attention through toklip's backends

        vit = timm.create_model(self.timm_model, pretrained=False, num_classes=0, img_size=self.image_size,
                                attn_layer=BackendAttention, **self.vision)
        if self.weights:
            from toklip.weights import load_state_dict_strict, read_checkpoint, unwrap_state_dict

            load_state_dict_strict(vit, unwrap_state_dict(read_checkpoint(self.weights)), source=str(self.weights))
        return vit

    def build_token_encoder(self, grid: tuple[int, int]) -> nn.Module:
        from toklip.layers import token_encoder_from_timm

        return token_encoder_from_timm(self._vit(), grid, pool="avg")

    def build_teacher(self) -> nn.Module:
        return self._vit().eval().requires_grad_(False)

    def build_text_tower(self) -> nn.Module | None:
        return None

    def build_tokenizer(self) -> Callable[[Sequence[str]], Tensor] | None:
        return None

    def logit_init(self) -> tuple[float, float | None]:
        return self.init_logit_scale, self.init_logit_bias
{% elif cookiecutter.component_kind == "fusion" -%}
"""The {{ cookiecutter.component_name }} fusion: replace the layers with your own.

A fusion joins the low-level code embeddings and the semantic features of each token (what a generator reads).
toklip calls ``GatedFusion(low_dim=, high_dim=, out_dim=None, **registered defaults)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedFusion(nn.Module):
    """out = W_h high + sigmoid(g) * W_l low, per token.

    low [B, N, low_dim], high [B, N, high_dim] -> [B, N, out_dim]; the gate starts at 0.5."""

    def __init__(self, low_dim: int, high_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.out_dim = int(out_dim or high_dim)
        self.low = nn.Linear(low_dim, self.out_dim)
        self.high = nn.Linear(high_dim, self.out_dim)
        self.gate = nn.Parameter(torch.zeros(self.out_dim))

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.high(high) + torch.sigmoid(self.gate) * self.low(low.to(self.low.weight.dtype))
{% endif %}
