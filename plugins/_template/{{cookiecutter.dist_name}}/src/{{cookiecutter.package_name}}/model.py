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
from toklip.layers.vq import VQTokenizerBase


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
        from toklip.checkpoints import load_state_dict_strict, read_checkpoint, unwrap_state_dict

        load_state_dict_strict(self, unwrap_state_dict(read_checkpoint(path)), source=str(path))


def build(*, checkpoint: str | Path | None = None, pretrained: Any = None, **kwargs: Any) -> Tokenizer:
    """The factory toklip calls: registered defaults merged with the user's keyword arguments.

    ``checkpoint`` is a local file; ``pretrained`` is a local file (toklip.build resolves hub tags to one)
    or a tag/True for the weights registered in plugin.py.
    """
    model = Tokenizer(**kwargs)
    if pretrained and not (isinstance(pretrained, (str, Path)) and Path(pretrained).is_file()):
        from toklip.weights.hub import resolve_component_weights

        pretrained = resolve_component_weights("vq", "{{ cookiecutter.component_name }}", pretrained)
    source = checkpoint or pretrained
    if source:
        model.load_checkpoint(source)
    return model.requires_grad_(False).eval()
