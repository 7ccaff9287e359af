"""The composed TokLIP model: frozen VQ tokenizer -> projector -> token encoder -> pool, plus a text tower.

Parameter names: ``vq.*`` (the tokenizer's own keys), ``projector.*``, ``token_encoder.*`` (timm ViT names
without ``patch_embed``), ``text.*`` (open_clip), ``fusion.*``, ``logit_scale``, ``logit_bias``. The official
checkpoint maps onto these by prefix (see toklip.weights.official.OFFICIAL_PREFIXES).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.model.config import TokLIPConfig
from toklip.core.errors import ConfigError, InputError
from toklip.core.protocols import AttentionMode
from toklip.layers.vq import check_images, check_indices

if TYPE_CHECKING:  # pragma: no cover
    from toklip.layers.streaming import IndexStream


@dataclass
class TokenizeOutput:
    """Everything one pass of the image path produces."""

    indices: Tensor  # [B, N] int64, raster order
    codes: Tensor  # [B, N, c] code vectors fed to the projector
    tokens: Tensor  # [B, N, D] projector output (before position embeddings)
    features: Tensor  # [B, N, D] per-token semantic features (after the final norm)
    pooled: Tensor  # [B, E] image embedding (not normalised)
    grid: tuple[int, int]


class TokLIP(nn.Module):
    def __init__(
        self,
        *,
        config: TokLIPConfig,
        vq: nn.Module,
        projector: nn.Module,
        token_encoder: nn.Module,
        attention: AttentionMode,
        text: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        fusion: nn.Module | None = None,
        image_size: int,
        init_logit_scale: float = 2.659260036932778,
        init_logit_bias: float | None = None,
        context_length: int | None = None,
        vocab_size: int | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        encoder_builder: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vq = vq.requires_grad_(False).eval()
        self.projector = projector
        self.token_encoder = token_encoder
        self.text = text
        self.fusion = fusion
        self.init_logit_scale, self.init_logit_bias = float(init_logit_scale), init_logit_bias
        self.logit_scale = nn.Parameter(torch.tensor(self.init_logit_scale))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.tokenizer = tokenizer
        self.attention_mode = attention
        self.image_size = image_size
        self.grid: tuple[int, int] = tuple(token_encoder.grid)  # type: ignore[assignment]
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.teacher_mean, self.teacher_std = tuple(mean), tuple(std)
        self.encoder_builder = encoder_builder
        if self.text is not None:
            self.text.requires_grad_(False)

    def reset_parameters(self) -> None:
        """Reset the model's own scalars (``logit_scale``, ``logit_bias``) to their initial values."""
        with torch.no_grad():
            self.logit_scale.fill_(self.init_logit_scale)
            if self.logit_bias is not None and self.init_logit_bias is not None:
                self.logit_bias.fill_(float(self.init_logit_bias))

    # ----------------------------------------------------------------- settings
    @property
    def causal(self) -> bool:
        return self.attention_mode.causal

    def set_attention(self, mode: str | AttentionMode) -> TokLIP:
        """Switch between attention modes ('causal', 'bidirectional', or a plugin's) without rebuilding."""
        if isinstance(mode, str):
            from toklip.core.host import get_spec

            mode = get_spec("attention", mode).create()
        self.attention_mode = mode
        self.config.attention = mode.name
        return self

    def set_attn_backend(self, name: str) -> TokLIP:
        """Pick the attention implementation ('auto', 'sdpa', 'eager', 'flash_attn', 'triton', ...)."""
        if name != "auto":
            from toklip.layers.attention import backend_instance

            backend_instance(name)
        self.token_encoder.set_attn_backend(name)
        self.config.attn_backend = name
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> TokLIP:
        self.token_encoder.set_grad_checkpointing(enable)
        return self

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards one by one: the token-encoder blocks, and the text tower's (frozen or not)."""
        units = list(self.token_encoder.blocks)
        if self.text is not None and hasattr(self.text, "transformer"):
            units += list(self.text.transformer.resblocks)
        return units

    def lock_text(self, lock: bool = True) -> TokLIP:
        if self.text is not None:
            self.text.requires_grad_(not lock)
        return self

    def train(self, mode: bool = True) -> TokLIP:
        super().train(mode)
        self.vq.eval()  # frozen tokenizer: never in training mode
        return self

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_encoder.pos_embed.dtype

    # ----------------------------------------------------------------- images
    def preprocess(self, image: Any) -> Tensor:
        """PIL image, path, bytes, or HWC uint8 array -> [3, S, S] in [-1, 1] (the official eval transform)."""
        from toklip.data.preprocess import preprocess

        return preprocess(image, self.image_size, resize_mode=self.config.resize_mode)

    def preprocess_batch(self, images: Sequence[Any]) -> Tensor:
        return torch.stack([self.preprocess(im) for im in images])

    def teacher_inputs(self, images: Tensor) -> Tensor:
        """[-1, 1] images (the VQ's range) -> the teacher encoder's own normalisation (identity for SigLIP)."""
        if self.teacher_mean == (0.5, 0.5, 0.5) and self.teacher_std == (0.5, 0.5, 0.5):
            return images
        mean = images.new_tensor(self.teacher_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.teacher_std).view(1, 3, 1, 1)
        return ((images + 1) / 2 - mean) / std

    def check_images(self, images: Any) -> Tensor:
        images = check_images(images, downsample=self.vq.downsample)
        h, w = images.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            raise InputError(
                f"images are {h}x{w}, but this model takes {self.image_size}x{self.image_size} "
                f"({self.grid[0]}x{self.grid[1]} tokens); use model.preprocess(...) to resize and crop"
            )
        return images.to(self.device)

    # ----------------------------------------------------------------- image path
    def tokenize(self, images: Tensor) -> TokenizeOutput:
        """images [B, 3, S, S] in [-1, 1] -> indices, codes, features and the pooled embedding."""
        images = self.check_images(images)
        enc = self.vq.encode(images.to(self._vq_dtype()))
        b = images.shape[0]
        indices = enc.indices.reshape(b, -1)
        codes = enc.codes.reshape(b, indices.shape[1], -1)
        return self._from_codes(indices, codes)

    def tokenize_indices(self, indices: Tensor) -> TokenizeOutput:
        """Run the semantic path from VQ indices [B, N] or [B, h, w] without the VQ encoder."""
        idx = check_indices(indices, vocab_size=self.vq.vocab_size, grid=self.grid).to(self.device)
        b = idx.shape[0]
        idx = idx.reshape(b, -1)
        return self._from_codes(idx, self.vq.indices_to_codes(idx))

    def _from_codes(self, indices: Tensor, codes: Tensor) -> TokenizeOutput:
        tokens = self.projector(codes.to(self.dtype), indices, self.vq.code_table)
        features = self.token_encoder.forward_features(tokens.to(self.dtype), causal=self.causal)
        pooled = self.token_encoder.pool(features)
        return TokenizeOutput(
            indices=indices, codes=codes, tokens=tokens,
            features=self.token_encoder.token_features(features), pooled=pooled, grid=self.grid,
        )

    def stream(self, batch_size: int, *, layer: int | None = None, max_len: int | None = None) -> IndexStream:
        """A KV-cached stream of causal features for autoregressive sampling: ``step(indices [B] or [B, k])`` ->
        ``[B, k, D]``, equal to ``tokenize_indices(...).features`` rows, each token encoded once."""
        if not self.causal:
            raise ConfigError(
                f"stream() needs causal attention: under {self.attention_mode.name!r} attention the feature of x_i "
                "depends on later tokens; use model.set_attention('causal') (or re-encode the full grid)"
            )
        if not hasattr(self.token_encoder, "stream"):
            raise ConfigError(f"the token encoder {type(self.token_encoder).__name__} has no stream()")
        from toklip.layers.streaming import IndexStream

        tokens = self.token_encoder.stream(batch_size, layer=layer, max_len=max_len, device=self.device,
                                           dtype=self.dtype)
        return IndexStream(self.vq, self.projector, tokens)

    def _vq_dtype(self) -> torch.dtype:
        p = next(self.vq.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        pooled = self.tokenize(images).pooled
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def decode(self, indices: Tensor) -> Tensor:
        """indices [B, N] or [B, h, w] -> images [B, 3, S, S] in [-1, 1] (the VQ decoder)."""
        idx = check_indices(indices, vocab_size=self.vq.vocab_size, grid=self.grid).to(self.device)
        return self.vq.decode(idx)

    def fuse(self, out: TokenizeOutput) -> Tensor:
        """Join low-level code vectors and semantic features with the configured fusion: [B, N, out_dim]."""
        if self.fusion is None:
            raise ConfigError("this model was built with fusion=None; build with fusion='concat' (or sum, ...)")
        return self.fusion(out.codes.to(out.features.dtype), out.features)

    # ----------------------------------------------------------------- text path
    def tokenize_text(self, texts: Sequence[str]) -> Tensor:
        if self.tokenizer is None:
            raise InputError("this model has no text tokenizer configured; pass token ids (LongTensor [T, L])")
        return self.tokenizer(texts)

    def encode_text(self, texts: Sequence[str] | str | Tensor, normalize: bool = False) -> Tensor:
        """Strings (tokenised with the encoder's tokenizer) or token ids [T, context_length] -> [T, E]."""
        if self.text is None:
            raise ConfigError("this model has no text tower (its encoder provides none)")
        ids = texts if isinstance(texts, Tensor) else self.tokenize_text([texts] if isinstance(texts, str) else texts)
        ids = self._check_ids(ids)
        out = self.text(ids)
        return F.normalize(out, dim=-1) if normalize else out

    def _check_ids(self, ids: Tensor) -> Tensor:
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise InputError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2:
            raise InputError(f"token ids must have shape [T, L], got {tuple(ids.shape)}")
        if self.context_length is not None and ids.shape[1] != self.context_length:
            raise InputError(
                f"token ids have length {ids.shape[1]}, but the text tower takes exactly {self.context_length} "
                "(pad with the pad id or truncate; the tokenizer does this)"
            )
        if ids.numel() and self.vocab_size is not None:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise InputError(f"token ids must lie in [0, {self.vocab_size - 1}], got [{lo}, {hi}]")
        return ids.long().to(self.device)

    # ----------------------------------------------------------------- CLIP-style heads
    def forward(self, images: Tensor | None = None, texts: Any = None) -> dict[str, Tensor | None]:
        """open_clip's ``output_dict`` convention: normalised features, exp(logit_scale), logit_bias."""
        return {
            "image_features": None if images is None else self.encode_image(images, normalize=True),
            "text_features": None if texts is None else self.encode_text(texts, normalize=True),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }

    def get_logits(self, images: Tensor, texts: Any) -> tuple[Tensor, Tensor]:
        out = self.forward(images, texts)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T  # type: ignore[operator]
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (each atomically); ``toklip.from_pretrained`` reads them."""
        from toklip.weights.saved import save_pretrained

        return save_pretrained(self, directory)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        from toklip.weights.saved import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"name={self.config.name!r}, image_size={self.image_size}, grid={self.grid}, "
            f"attention={self.attention_mode.name!r}, attn_backend={self.config.attn_backend!r}"
        )
