"""Projectors: VQ code vectors (or indices) -> token embeddings of the encoder width D.

``forward(codes [B, N, c], indices [B, N], code_table=None) -> [B, N, D]``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from toklip.core.errors import ConfigError
from toklip.layers.projector import MLPProjector  # noqa: F401  (its home before toklip.layers)



class CodebookProjector(nn.Module):
    """One learned D-dim row per code index (an embedding table). Memory = vocab * D * 4 bytes in fp32."""

    def __init__(self, code_dim: int, vocab_size: int, width: int, max_bytes: int = 1 << 30) -> None:
        super().__init__()
        cost = vocab_size * width * 4
        if cost > max_bytes:
            raise ConfigError(
                f"the codebook projector would hold {vocab_size:,} x {width} = {vocab_size * width:,} parameters "
                f"({cost / 2**30:.2f} GiB in fp32, plus twice that in AdamW state); the limit is "
                f"{max_bytes / 2**30:.2f} GiB. Use projector='mlp', or raise the limit with "
                f"projector={{'name': 'codebook', 'max_bytes': {cost}}}"
            )
        self.code_dim, self.vocab_size, self.width = code_dim, vocab_size, width
        self.embedding = nn.Embedding(vocab_size, width)

    def forward(self, codes: Tensor, indices: Tensor | None = None, code_table: Callable[[], Tensor] | None = None) -> Tensor:
        if indices is None:
            raise ConfigError("the codebook projector needs the code indices")
        return self.embedding(indices)


class IdentityProjector(nn.Module):
    """Code vectors passed through: for tokenizers whose code dim already equals the encoder width."""

    def __init__(self, code_dim: int, vocab_size: int, width: int) -> None:
        super().__init__()
        if code_dim != width:
            raise ConfigError(
                f"the identity projector needs code_dim == encoder width, got {code_dim} and {width}; use 'mlp'"
            )
        self.code_dim, self.vocab_size, self.width = code_dim, vocab_size, width

    def forward(self, codes: Tensor, indices: Tensor | None = None, code_table: Callable[[], Tensor] | None = None) -> Tensor:
        return codes
