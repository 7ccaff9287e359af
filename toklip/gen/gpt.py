"""LlamaGen's autoregressive GPT over image tokens (class- or text-conditional), key for key with its releases.

Written from the architecture facts (shared/spec/downstream.md §2, the llamagen-gpt fixture README), not from
LlamaGen's code. Sequence ``[condition tokens, x_0 .. x_{N-2}]`` -> N logits predicting ``x_0 .. x_{N-1}``.
Pre-RMSNorm blocks with fused ``wqkv``, grouped-query attention, SwiGLU, no biases, 2-D RoPE (rope.py).

Image tokens enter through one method, ``embed_image_tokens``: a fused generator (TokLIP features joined to
the code embedding) overrides it and ``start_image_stream``, and everything else stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.errors import InputError
from toklip.gen.config import GPTConfig
from toklip.gen.kv_cache import StaticKVCache, attention_mask
from toklip.gen.rope import apply_rope, rope_2d_table


class Embedding(nn.Embedding):
    """nn.Embedding that leaves meta tensors uninitialised: ``normal_`` on the meta device imports
    torch._dynamo (seconds), and a meta build is followed by loading weights anyway."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class RMSNorm(nn.Module):
    """x / rms(x) computed in float32, cast back, then scaled (LlamaGen's order: the weight multiplies last)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.ffn_hidden
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Causal self-attention with a fused q/k/v projection and ``n_kv_head`` key/value heads (GQA)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dim = config.dim
        self.wqkv = nn.Linear(config.dim, (config.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: Tensor, rope: Tensor, *, mask: Tensor | None = None,
                cache: StaticKVCache | None = None, layer: int = 0, positions: Tensor | None = None) -> Tensor:
        batch, length, _ = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_width, kv_width], dim=-1)
        q = apply_rope(q.view(batch, length, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(batch, length, self.n_kv_head, self.head_dim), rope).transpose(1, 2)
        v = v.view(batch, length, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            assert positions is not None
            k, v = cache.update(layer, positions, k, v)
        if self.n_kv_head != self.n_head:  # each group of query heads shares one key/value head
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
        )
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(batch, length, self.dim)))


class TransformerBlock(nn.Module):
    def __init__(self, config: GPTConfig, drop_path: float) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        if drop_path > 0:
            from timm.layers import DropPath

            self.drop_path: nn.Module = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()

    def forward(self, x: Tensor, rope: Tensor, **attention: Any) -> Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), rope, **attention))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class LabelEmbedder(nn.Module):
    """c2i condition: one row per class, plus the null row ``num_classes`` when class dropout is on (for CFG)."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: Tensor, drop: Tensor | None) -> Tensor:
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class CaptionMLP(nn.Module):
    """Linear -> tanh-GELU -> Linear, no biases (LlamaGen's caption projection)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, dim, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """t2i condition: caption features ``[B, T, caption_dim]`` through the MLP; the unconditional caption is a
    fixed buffer (in the state dict, not trained), substituted for dropped captions."""

    uncond_embedding: Tensor

    def __init__(self, caption_dim: int, dim: int, dropout_prob: float, token_num: int) -> None:
        super().__init__()
        self.dropout_prob = dropout_prob
        self.cap_proj = CaptionMLP(caption_dim, dim)
        self.register_buffer("uncond_embedding", torch.empty(token_num, caption_dim))  # filled by init_weights

    def forward(self, caption: Tensor, drop: Tensor | None) -> Tensor:
        if drop is not None:
            caption = torch.where(drop[:, None, None], self.uncond_embedding.to(caption.dtype), caption)
        return self.cap_proj(caption)


class GPT(nn.Module):
    """LlamaGen GPT. ``forward(codes, cond)`` is teacher forcing in LlamaGen's training layout; sampling is
    ``sample`` (toklip.gen.sampling) over ``new_cache`` / ``forward_cached``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        if config.model_type == "c2i":
            self.cls_embedding: nn.Module = LabelEmbedder(config.num_classes, config.dim, config.class_dropout_prob)
        else:
            self.cls_embedding = CaptionEmbedder(config.caption_dim, config.dim, config.class_dropout_prob,
                                                 config.cls_token_num)
        self.tok_embeddings = Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        rates = torch.linspace(0, config.drop_path_rate, config.n_layer, device="cpu").tolist()
        self.layers = nn.ModuleList(TransformerBlock(config, rate) for rate in rates)
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.image_inputs: nn.Module | None = None  # fused TokLIP inputs (toklip.gen.fused), set by build_generator
        # Derived, not a parameter: LlamaGen release files do not hold it. One copy per device, made on use.
        self._rope_tables = {"cpu": rope_2d_table(config.grid, config.head_dim, config.rope_base, config.cls_token_num)}
        self.init_weights()

    # ---- weights -------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """LlamaGen's init: N(0, initializer_range) for linears and embeddings, unit norms, a zero output head,
        the unconditional caption N(0, 1 / caption_dim). Nothing to do on the meta device."""
        if self.output.weight.is_meta:
            return
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
        nn.init.zeros_(self.output.weight)
        if isinstance(self.cls_embedding, CaptionEmbedder):
            nn.init.normal_(self.cls_embedding.uncond_embedding, std=self.config.caption_dim**-0.5)

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def num_tokens(self) -> int:
        """Image tokens per sample (grid x grid)."""
        return self.config.block_size

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards one by one: the transformer layers (a fused TokLIP is outside the module tree)."""
        return list(self.layers)

    def rope_table(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._rope_tables:
            self._rope_tables[key] = self._rope_tables["cpu"].to(device)
        return self._rope_tables[key]

    # ---- inputs --------------------------------------------------------------------------------------------
    def embed_image_tokens(self, codes: Tensor, extra: Any = None) -> Tensor:
        """Image tokens ``[B, n]`` -> input embeddings ``[B, n, dim]``: the one place image tokens enter.

        Plain LlamaGen: the token embedding. With ``image_inputs`` set (``toklip.build_generator(fusion=...)``),
        ``fusion(E_tok[x_i], s_i)`` with a frozen causal TokLIP's features ``s_i`` (toklip.gen.fused). ``extra`` is
        None for a whole teacher-forced prefix (``codes`` = x_0 .. x_{n-1}); during sampling it is the state that
        ``start_image_stream`` returned, and ``codes`` is the next token of each of the B real sequences, in
        order (never the CFG-doubled batch: the sampler duplicates the embedding)."""
        embeddings = self.tok_embeddings(codes)
        if self.image_inputs is None:
            return embeddings
        return self.image_inputs(codes, embeddings, extra)

    def start_image_stream(self, batch_size: int) -> Any:
        """Called once at the start of sampling; its result is passed to every ``embed_image_tokens`` call (the
        TokLIP feature stream of fused inputs; None for plain LlamaGen)."""
        return None if self.image_inputs is None else self.image_inputs.start(batch_size)

    def embed_condition(self, cond: Tensor, *, drop: Tensor | None = None) -> Tensor:
        """Validated condition -> ``[B, cls_token_num, dim]``. In training mode conditions are dropped with
        ``class_dropout_prob`` (CFG training); ``drop`` (bool ``[B]``) forces which ones."""
        if drop is None and self.training and self.config.class_dropout_prob > 0:
            drop = torch.rand(cond.shape[0], device=cond.device) < self.config.class_dropout_prob
        return self.cls_embedding(cond, drop)

    def null_condition(self, batch_size: int) -> Tensor:
        """The unconditional input of classifier-free guidance, batched."""
        if not self.config.has_null_class:
            raise InputError(
                "this c2i model has no null class (class_dropout_prob = 0), so classifier-free guidance has no "
                "unconditional input; sample with cfg=1.0"
            )
        device = self.tok_embeddings.weight.device
        if self.model_type == "c2i":
            return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=device)
        uncond = self.cls_embedding.uncond_embedding
        return uncond.expand(batch_size, *uncond.shape).to(self.tok_embeddings.weight.dtype)

    def check_condition(self, cond: Tensor | Sequence[int], cond_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The condition as a tensor on the model's device, or an InputError saying what is wrong."""
        weight = self.tok_embeddings.weight
        cfg = self.config
        if self.model_type == "c2i":
            if not isinstance(cond, Tensor):
                if not isinstance(cond, Sequence) or not all(isinstance(c, int) and not isinstance(c, bool) for c in cond):
                    raise InputError(f"c2i condition must be class labels (a LongTensor [B] or a list of ints), got {type(cond).__name__}")
                cond = torch.tensor(list(cond), dtype=torch.long)
            if cond.dtype in (torch.bool,) or cond.dtype.is_floating_point or cond.dtype.is_complex:
                raise InputError(f"c2i condition must be integer class labels, got dtype {cond.dtype}")
            if cond.ndim != 1 or cond.numel() == 0:
                raise InputError(f"c2i condition must be labels of shape [B] with B >= 1, got shape {tuple(cond.shape)}")
            top = cfg.num_classes + int(cfg.has_null_class)
            if int(cond.min()) < 0 or int(cond.max()) >= top:
                null = f" ({cfg.num_classes} is the null class)" if cfg.has_null_class else ""
                raise InputError(f"class labels must be in [0, {top - 1}]{null}; got values in "
                                 f"[{int(cond.min())}, {int(cond.max())}]")
            if cond_mask is not None:
                raise InputError("cond_mask is for t2i captions; a c2i model takes labels only")
            return cond.to(device=weight.device, dtype=torch.long), None
        want = (cfg.cls_token_num, cfg.caption_dim)
        if not isinstance(cond, Tensor) or not cond.dtype.is_floating_point:
            raise InputError(f"t2i condition must be caption features, a float tensor [B, {want[0]}, {want[1]}]; "
                             f"got {type(cond).__name__}{'' if not isinstance(cond, Tensor) else ' ' + str(cond.dtype)}")
        if cond.ndim != 3 or tuple(cond.shape[1:]) != want or cond.shape[0] == 0:
            raise InputError(f"t2i condition must have shape [B, {want[0]}, {want[1]}] (B >= 1; pad or truncate "
                             f"captions to {want[0]} tokens), got {tuple(cond.shape)}")
        if not bool(torch.isfinite(cond).all()):
            raise InputError("t2i caption features contain NaN or inf")
        if cond_mask is not None:
            if not isinstance(cond_mask, Tensor) or tuple(cond_mask.shape) != tuple(cond.shape[:2]):
                raise InputError(f"cond_mask must be a tensor [B, {want[0]}] (True = real caption token), got "
                                 f"{tuple(cond_mask.shape) if isinstance(cond_mask, Tensor) else type(cond_mask).__name__}")
            if cond_mask.dtype != torch.bool and not bool(((cond_mask == 0) | (cond_mask == 1)).all()):
                raise InputError("cond_mask must hold only 0/1 or True/False")
            cond_mask = cond_mask.to(device=weight.device, dtype=torch.bool)
        return cond.to(device=weight.device, dtype=weight.dtype), cond_mask

    def check_codes(self, codes: Tensor, batch_size: int | None = None) -> Tensor:
        """Image-token indices ``[B, N]`` (1 <= N <= block_size, values < vocab_size) on the model's device."""
        if not isinstance(codes, Tensor) or codes.dtype == torch.bool or codes.dtype.is_floating_point or codes.dtype.is_complex:
            raise InputError(f"codes must be an integer tensor [B, N] of image-token indices, got "
                             f"{codes.dtype if isinstance(codes, Tensor) else type(codes).__name__}")
        n_max, vocab = self.config.block_size, self.config.vocab_size
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= n_max or codes.shape[0] == 0:
            raise InputError(f"codes must have shape [B, N] with B >= 1 and 1 <= N <= {n_max} (the model's "
                             f"{self.config.grid}x{self.config.grid} grid), got {tuple(codes.shape)}")
        if batch_size is not None and codes.shape[0] != batch_size:
            raise InputError(f"codes have batch {codes.shape[0]} but the condition has batch {batch_size}")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= vocab:
            raise InputError(f"code indices must be in [0, {vocab - 1}] (vocab_size {vocab}); got values in "
                             f"[{low}, {high}]. Was this sequence made by a tokenizer with a different codebook?")
        return codes.to(device=self.tok_embeddings.weight.device, dtype=torch.long)

    # ---- teacher forcing -----------------------------------------------------------------------------------
    def forward(self, codes: Tensor, cond: Tensor | Sequence[int], *, cond_mask: Tensor | None = None,
                drop_cond: Tensor | None = None, image_extra: Any = None) -> Tensor:
        """Logits ``[B, N, vocab]`` (float32) predicting ``codes`` ``[B, N]`` from ``[cond, codes[:, :-1]]``.

        ``cond``: c2i labels ``[B]``; t2i caption features ``[B, cls_token_num, caption_dim]`` with an optional
        ``cond_mask`` ``[B, cls_token_num]`` hiding padded caption tokens. ``drop_cond`` (bool ``[B]``) forces
        the unconditional input for those rows; in training mode rows are also dropped at random."""
        cond, cond_mask = self.check_condition(cond, cond_mask)
        codes = self.check_codes(codes, cond.shape[0])
        if drop_cond is not None:
            if not isinstance(drop_cond, Tensor) or tuple(drop_cond.shape) != (cond.shape[0],):
                raise InputError(f"drop_cond must be a bool tensor [{cond.shape[0]}]")
            if self.model_type == "c2i" and not self.config.has_null_class:
                raise InputError("drop_cond needs a null class; this model has class_dropout_prob = 0")
            drop_cond = drop_cond.to(device=cond.device, dtype=torch.bool)
        cond_tokens = self.embed_condition(cond, drop=drop_cond)
        image_tokens = self.embed_image_tokens(codes[:, :-1], extra=image_extra)
        h = self.tok_dropout(torch.cat([cond_tokens, image_tokens.to(cond_tokens.dtype)], dim=1))
        length = h.shape[1]
        mask = None if cond_mask is None else attention_mask(h.shape[0], length, cond_mask, device=h.device)[:, None]
        rope = self.rope_table(h.device)[:length]
        for layer in self.layers:
            h = layer(h, rope, mask=mask)
        return self.head(h[:, self.config.cls_token_num - 1:])

    def head(self, h: Tensor) -> Tensor:
        """Final norm and output projection; logits in float32."""
        return self.output(self.norm(h)).float()

    # ---- cached decoding -----------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, *, max_len: int | None = None, cond_mask: Tensor | None = None) -> StaticKVCache:
        """An empty static KV cache for ``batch_size`` sequences of up to ``max_len`` tokens (condition + image)."""
        weight = self.tok_embeddings.weight
        return StaticKVCache(
            len(self.layers), batch_size, max_len or self.config.seq_len, self.config.kv_heads, self.config.head_dim,
            dtype=weight.dtype, device=weight.device, cond_mask=cond_mask,
        )

    def forward_cached(self, embeddings: Tensor, positions: Tensor, cache: StaticKVCache) -> Tensor:
        """Run input embeddings ``[B, S, dim]`` at sequence ``positions`` (LongTensor ``[S]``) through the model,
        reading and extending ``cache``. Returns float32 logits ``[B, S, vocab]``."""
        rope = self.rope_table(embeddings.device).index_select(0, positions)
        mask = cache.mask_for(positions)
        h = self.tok_dropout(embeddings)
        for index, layer in enumerate(self.layers):
            h = layer(h, rope, mask=mask, cache=cache, layer=index, positions=positions)
        return self.head(h)

    def sample(
        self,
        cond: Tensor | Sequence[int],
        *,
        cfg: float = 1.0,
        cfg_interval: int | None = None,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        cond_mask: Tensor | None = None,
        num_tokens: int | None = None,
        compile: bool = False,
    ) -> Tensor:
        """Sampled codes ``[B, num_tokens or block_size]`` int64 (see ``toklip.gen.sampling.sample``)."""
        from toklip.gen.sampling import sample

        return sample(self, cond, cfg=cfg, cfg_interval=cfg_interval, top_k=top_k, top_p=top_p,
                      temperature=temperature, greedy=greedy, seed=seed, generator=generator, cond_mask=cond_mask,
                      num_tokens=num_tokens, compile=compile)

    def generate(self, labels: Sequence[int] | Tensor | None = None, **options: Any) -> Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1] decoded by the tokenizer this generator was built or loaded with
        (see ``toklip.gen.generator.generate`` for the options)."""
        from toklip.gen.generator import generate

        return generate(self, labels, **options)


def build_gpt(name: str = "gpt-b", **overrides: Any) -> GPT:
    """Build a named size (``gpt-b`` ... ``gpt-3b``, ``gpt-test``, ``-t2i`` variants) with config overrides."""
    from toklip.gen.config import named_config

    return GPT(named_config(name, **overrides))


def _sized(name: str) -> Any:
    def factory(**overrides: Any) -> GPT:
        return build_gpt(name, **overrides)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"LlamaGen {name} (config overrides as keyword arguments, e.g. vocab_size, block_size)."
    return factory


# One factory per registered name (LlamaGen's gpt.py ends with the same table).
gpt_b, gpt_l, gpt_xl, gpt_xxl, gpt_3b, gpt_test = (
    _sized(n) for n in ("gpt-b", "gpt-l", "gpt-xl", "gpt-xxl", "gpt-3b", "gpt-test"))
gpt_b_t2i, gpt_l_t2i, gpt_xl_t2i, gpt_xxl_t2i, gpt_3b_t2i, gpt_test_t2i = (
    _sized(n) for n in ("gpt-b-t2i", "gpt-l-t2i", "gpt-xl-t2i", "gpt-xxl-t2i", "gpt-3b-t2i", "gpt-test-t2i"))
