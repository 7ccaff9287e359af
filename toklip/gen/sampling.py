"""Autoregressive sampling for GPT generators: classifier-free guidance, temperature, top-k / top-p, greedy.

The rules are LlamaGen's (generate.py), so seeded runs reproduce the official sequences: logits / temperature,
then top-k and top-p (the Hugging Face rule: top-p keeps the first token that crosses the threshold, and at least
one token), softmax, then one ``torch.multinomial`` draw per step on ``[B, vocab]`` (or top-1 when greedy).
CFG runs the batch ``[cond; uncond]`` and guides with ``u + (c - u) * cfg``, feeding the chosen token to both
halves; guidance is on for the first token and for decode steps ``i <= cfg_interval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from toklip.core.errors import InputError

if TYPE_CHECKING:
    from toklip.gen.gpt import GPT


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Top-k then top-p filtering of ``[B, V]`` logits; removed entries become -inf, at least one stays."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        beyond = cumulative > top_p
        # shift right: the token that crosses the threshold stays, and so does the most likely one
        remove_sorted = torch.zeros_like(beyond)
        remove_sorted[..., 1:] = beyond[..., :-1]
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def next_token(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               greedy: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """One token per row ``[B, 1]`` int64 from ``[B, V]`` logits."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = filter_logits(logits, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    if greedy:
        return torch.topk(probs, 1, dim=-1).indices
    return torch.multinomial(probs, 1, generator=generator)


def guide(logits: Tensor, cfg: float) -> Tensor:
    """``[cond; uncond]`` logits ``[2B, V]`` -> ``u + (c - u) * cfg`` ``[B, V]``."""
    cond_logits, uncond_logits = logits.chunk(2, dim=0)
    return uncond_logits + (cond_logits - uncond_logits) * cfg


def check_sampling_options(*, cfg: float, cfg_interval: int | None, top_k: int, top_p: float, temperature: float,
                           seed: int | None) -> None:
    """InputError for any option that LlamaGen would silently misread."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not number(cfg) or cfg < 1.0:
        raise InputError(f"cfg must be a number >= 1 (1 = no guidance; LlamaGen guides only above 1), got {cfg!r}")
    if cfg_interval is not None and (not isinstance(cfg_interval, int) or isinstance(cfg_interval, bool)
                                     or cfg_interval < -1):
        raise InputError(f"cfg_interval must be None (or -1: guide every step) or an integer step >= 0, got {cfg_interval!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not number(top_p) or not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if not number(temperature) or temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature!r}; for argmax decoding pass greedy=True")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise InputError(f"seed must be None or an integer in [0, 2**63), got {seed!r}")


class Decoding:
    """One cached decoding run of B sequences: the logits of the first token, then of each next one.

    Shared by sampling and by teacher-forced cached decoding, so both go through the same code. With
    ``cfg > 1`` the cache holds ``[cond; uncond]`` and every returned logit row is already guided."""

    def __init__(self, model: GPT, cond: Tensor, *, cfg: float = 1.0, cfg_interval: int | None = None,
                 cond_mask: Tensor | None = None, num_tokens: int | None = None, compile: bool = False) -> None:
        self.model, self.cfg, self.cfg_interval = model, cfg, cfg_interval
        self._forward = _compiled_forward() if compile else _forward
        self.batch_size = cond.shape[0]
        self.guided = cfg > 1.0
        self.cond_len = model.config.cls_token_num
        self.num_tokens = num_tokens or model.num_tokens
        batch = cond
        if self.guided:
            batch = torch.cat([cond, model.null_condition(self.batch_size)])
            if cond_mask is not None:
                cond_mask = torch.cat([cond_mask, cond_mask])
        device = model.tok_embeddings.weight.device
        self.cache = model.new_cache(batch.shape[0], max_len=self.cond_len + self.num_tokens, cond_mask=cond_mask)
        self.stream = model.start_image_stream(self.batch_size)
        self._condition = batch
        self._positions = torch.arange(self.cond_len + self.num_tokens, device=device)
        self._step = 0

    def first(self) -> Tensor:
        """Prefill the condition; guided logits ``[B, V]`` of image token 0."""
        embeddings = self.model.embed_condition(self._condition)
        logits = self._forward(self.model, embeddings, self._positions[: self.cond_len], self.cache)[:, -1]
        return guide(logits, self.cfg) if self.guided else logits

    def next(self, tokens: Tensor) -> Tensor:
        """Feed image token ``i`` ``[B]`` (or ``[B, 1]``); guided logits ``[B, V]`` of token ``i + 1``."""
        step = self._step
        if step >= self.num_tokens - 1:
            raise InputError(f"all {self.num_tokens} tokens are decoded; nothing follows")
        embeddings = self.model.embed_image_tokens(tokens.reshape(self.batch_size, 1), extra=self.stream)
        if self.guided:  # the real token's embedding, once, shared by both halves
            embeddings = torch.cat([embeddings, embeddings])
        position = self._positions[self.cond_len + step : self.cond_len + step + 1]
        logits = self._forward(self.model, embeddings, position, self.cache)[:, -1]
        self._step += 1
        if not self.guided:
            return logits
        if self.cfg_interval is not None and self.cfg_interval > -1 and step > self.cfg_interval:
            return logits[: self.batch_size]
        return guide(logits, self.cfg)


def _forward(model: GPT, embeddings: Tensor, positions: Tensor, cache: Any) -> Tensor:
    return model.forward_cached(embeddings, positions, cache)


_COMPILED: list[Any] = []


def _compiled_forward() -> Any:
    """The GPT's cached forward under ``torch.compile``, made once per process. Shapes are static (the prefill of
    the condition, then one token per step, into a preallocated cache), so each model compiles two graphs and
    reuses them for every step and call; the fused TokLIP step stays eager."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_forward, dynamic=False))
    return _COMPILED[0]


@contextmanager
def _inference(model: GPT) -> Iterator[None]:
    """No autograd and eval mode (dropout off) for the call; the caller's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def sample(
    model: GPT,
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
    """Sample image-token codes ``[B, num_tokens]`` int64 (default: the whole grid) for conditions ``cond``.

    ``seed`` draws from a private generator seeded with it (same draws as LlamaGen after
    ``torch.manual_seed(seed)`` on the same device); without seed or generator the global RNG is used, as
    LlamaGen does. ``cfg_interval`` k: guidance only for the first token and decode steps 0..k. ``compile``: the
    GPT's decode step under ``torch.compile`` (LlamaGen's ``--compile``; the first call pays the compilation)."""
    check_sampling_options(cfg=cfg, cfg_interval=cfg_interval, top_k=top_k, top_p=top_p, temperature=temperature,
                           seed=seed)
    if seed is not None and generator is not None:
        raise InputError("pass seed or generator, not both")
    total = model.num_tokens
    if num_tokens is not None and (not isinstance(num_tokens, int) or not 1 <= num_tokens <= total):
        raise InputError(f"num_tokens must be an integer in [1, {total}], got {num_tokens!r}")
    cond, cond_mask = model.check_condition(cond, cond_mask)
    if cfg > 1.0:
        model.null_condition(1)  # an InputError now, before any work, if the model has no null class
    if seed is not None:
        generator = torch.Generator(device=model.tok_embeddings.weight.device).manual_seed(seed)
    pick: dict[str, Any] = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy,
                            "generator": generator}
    with _inference(model):
        run = Decoding(model, cond, cfg=cfg, cfg_interval=cfg_interval, cond_mask=cond_mask, num_tokens=num_tokens,
                       compile=compile)
        codes = torch.empty(cond.shape[0], run.num_tokens, dtype=torch.long, device=cond.device)
        token = next_token(run.first(), **pick)
        codes[:, :1] = token
        for i in range(1, run.num_tokens):
            token = next_token(run.next(token), **pick)
            codes[:, i : i + 1] = token
    return codes


def cached_logits(model: GPT, codes: Tensor, cond: Tensor | Sequence[int], *, cfg: float = 1.0,
                  cfg_interval: int | None = None, cond_mask: Tensor | None = None) -> Tensor:
    """Teacher-forced logits ``[B, N, V]`` through the KV cache (guided when ``cfg > 1``): the sampler's path
    with the given tokens instead of drawn ones. Without CFG it equals ``model(codes, cond)``."""
    check_sampling_options(cfg=cfg, cfg_interval=cfg_interval, top_k=0, top_p=1.0, temperature=1.0, seed=None)
    cond, cond_mask = model.check_condition(cond, cond_mask)
    codes = model.check_codes(codes, cond.shape[0])
    with _inference(model):
        run = Decoding(model, cond, cfg=cfg, cfg_interval=cfg_interval, cond_mask=cond_mask,
                       num_tokens=codes.shape[1])
        steps = [run.first()]
        steps += [run.next(codes[:, i]) for i in range(codes.shape[1] - 1)]
    return torch.stack(steps, dim=1)
