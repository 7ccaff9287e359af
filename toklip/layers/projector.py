"""TokLIP's MLP projector, public so accelerated versions (toklip-kernels' ``mlp-fused``) subclass it and share
its parameters, and so its checkpoints interchange with theirs by construction."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLPProjector"]


class MLPProjector(nn.Module):
    """TokLIP's token embedding: Linear(c, hidden) -> exact (erf) GELU -> Linear(hidden, D), hidden = 4D.

    ``fc1``/``fc2`` are the official ``vq_table``/``vq_mapping``. Kernels (toklip-kernels) may replace the
    computation with the exact codebook-space form; this module is the reference.
    """

    def __init__(self, code_dim: int, vocab_size: int, width: int, hidden: int | None = None) -> None:
        super().__init__()
        self.code_dim, self.vocab_size, self.width = code_dim, vocab_size, width
        self.hidden = hidden or 4 * width
        self.fc1 = nn.Linear(code_dim, self.hidden)
        self.fc2 = nn.Linear(self.hidden, width)

    def forward(self, codes: Tensor, indices: Tensor | None = None, code_table: Callable[[], Tensor] | None = None) -> Tensor:
        return self.fc2(F.gelu(self.fc1(codes.to(self.fc1.weight.dtype))))
