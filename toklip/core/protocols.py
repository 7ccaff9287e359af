"""What each component kind must provide. Plugins implement these; the composed model relies on nothing else.

Shapes: B batch, N = h*w tokens in raster order (n = row * w + col), c code dim, D encoder width,
E joint embedding dim, H heads, d head dim. Images are float [B, 3, S, S] in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn


@dataclass
class VQEncoding:
    """What a VQ tokenizer returns for a batch of images."""

    indices: Tensor  # [B, h, w] int64
    codes: Tensor  # [B, h, w, c]: the code vectors the tokenizer feeds forward
    latent: Tensor | None = None  # [B, c, h, w]: pre-quantisation latent, for inspection and parity


@runtime_checkable
class VQTokenizer(Protocol):
    """A frozen image tokenizer (an ``nn.Module``). Subclass :class:`toklip.layers.vq.VQTokenizerBase` for checks."""

    code_dim: int
    vocab_size: int
    downsample: int

    def encode(self, images: Tensor) -> VQEncoding: ...

    def indices_to_codes(self, indices: Tensor) -> Tensor: ...  # [...] -> [..., c]

    def decode(self, indices: Tensor) -> Tensor: ...  # [B, h, w] -> [B, 3, h*ds, w*ds] in [-1, 1]

    def code_table(self) -> Tensor | None: ...  # [vocab, c] every code vector, or None if too large


@runtime_checkable
class TokenEncoder(Protocol):
    """Transformer blocks + pooling that turn projected tokens into semantic features (an ``nn.Module``)."""

    width: int
    embed_dim: int
    num_tokens: int
    grid: tuple[int, int]

    def forward_features(self, tokens: Tensor, *, causal: bool) -> Tensor: ...  # [B,N,D] -> [B,N,D]

    def token_features(self, features: Tensor) -> Tensor: ...  # per-token features the model returns [B,N,D]

    def pool(self, features: Tensor) -> Tensor: ...  # [B,N,D] -> [B,E]

    def set_attn_backend(self, name: str) -> None: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@runtime_checkable
class SemanticEncoder(Protocol):
    """A semantic encoder family: builds the token encoder, the text tower, its tokenizer and the teacher."""

    embed_dim: int
    patch_size: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    init_logit_scale: float
    init_logit_bias: float | None
    context_length: int | None  # text tower's token count (None without a text tower)
    vocab_size: int | None  # text tokenizer's vocabulary (None without a text tower)

    @property
    def grid(self) -> tuple[int, int]: ...  # the vision tower's patch grid at its native size

    def logit_init(self) -> tuple[float, float | None]: ...  # (logit_scale, logit_bias), from weights if loaded

    def build_token_encoder(self, grid: tuple[int, int]) -> nn.Module: ...

    def build_text_tower(self) -> nn.Module | None: ...  # ids [T, L] -> [T, E]

    def build_tokenizer(self) -> Callable[[Sequence[str]], Tensor] | None: ...

    def build_teacher(self) -> nn.Module: ...  # images (encoder mean/std) -> [B, E]


@runtime_checkable
class Projector(Protocol):
    """Code vectors / indices -> token embeddings of the encoder width (an ``nn.Module``); built as
    ``factory(code_dim=, vocab_size=, width=, **kwargs)``."""

    def forward(self, codes: Tensor, indices: Tensor, code_table: Tensor | None = None) -> Tensor: ...  # [B,N,D]


@runtime_checkable
class Fusion(Protocol):
    """Joins low-level code embeddings and semantic features (an ``nn.Module``); built as
    ``factory(low_dim=, high_dim=, out_dim=None, **kwargs)``."""

    out_dim: int

    def forward(self, low: Tensor, high: Tensor) -> Tensor: ...  # [B,N,low], [B,N,high] -> [B,N,out_dim]


@runtime_checkable
class VLMProjector(Protocol):
    """Per-token image features -> a language model's hidden size (an ``nn.Module``); built as
    ``factory(in_dim=, out_dim=, **kwargs)``."""

    def forward(self, features: Tensor) -> Tensor: ...  # [B,N,in_dim] -> [B,N,out_dim]


@runtime_checkable
class Generator(Protocol):
    """An autoregressive model over image tokens (an ``nn.Module``), LlamaGen's interface."""

    config: Any
    model_type: str  # "c2i" | "t2i"
    num_tokens: int

    def forward(self, codes: Tensor, cond: Any) -> Tensor: ...  # teacher forcing -> [B, N, vocab] logits

    def embed_image_tokens(self, codes: Tensor, extra: Any = None) -> Tensor: ...

    def start_image_stream(self, batch_size: int) -> Any: ...

    def sample(self, cond: Any, **options: Any) -> Tensor: ...  # -> codes [B, N] int64


@dataclass(frozen=True)
class AttentionMode:
    """Mask semantics of the token encoder."""

    name: str
    causal: bool
    summary: str = ""


@runtime_checkable
class AttentionBackend(Protocol):
    """An attention implementation on ``[B, H, N, d]`` tensors."""

    name: str

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor: ...

    def supports(self, q: Tensor, *, causal: bool, has_mask: bool) -> str | None:
        """None if this backend can run the call, else the reason it cannot."""
        ...
