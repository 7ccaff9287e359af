"""Generators: LlamaGen's autoregressive GPT over image tokens (c2i and t2i), its KV cache and sampler, and the
T5 caption encoder of t2i generators (``CaptionEncoder``).

``import toklip.gen`` is cheap (no torch): ``GENERATORS`` names each factory as a ``"module:attr"`` string for
the registry, and the model code loads on first use of an attribute below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toklip.core.lazy import lazy_getattr

_GPT = "toklip.gen.gpt"
_SIZES = {  # name -> what LlamaGen calls it and its parameter count (LlamaGen's gpt.py)
    "gpt-b": "GPT-B, 111M",
    "gpt-l": "GPT-L, 343M",
    "gpt-xl": "GPT-XL, 775M",
    "gpt-xxl": "GPT-XXL, 1.4B",
    "gpt-3b": "GPT-3B, 3.1B",
}

# registry-facing table: name -> (factory "module:attr", summary). Factories take GPTConfig field overrides.
GENERATORS: dict[str, tuple[str, str]] = {
    **{name: (f"{_GPT}:{name.replace('-', '_')}", f"LlamaGen {what}, class-conditional (c2i), 2-D RoPE")
       for name, what in _SIZES.items()},
    "gpt-test": (f"{_GPT}:gpt_test", "tiny random c2i LlamaGen GPT (2 x 64 wide, 512 codes, 4x4 grid, 10 classes) for tests"),
    **{f"{name}-t2i": (f"{_GPT}:{name.replace('-', '_')}_t2i",
                       f"LlamaGen {what}, text-conditional (t2i): 120 caption tokens (flan-t5-xl, 2048-d)")
       for name, what in _SIZES.items()},
    "gpt-test-t2i": (f"{_GPT}:gpt_test_t2i", "tiny random t2i LlamaGen GPT (120 x 32-d caption tokens) for tests"),
}

_LAZY = {
    "GPT": f"{_GPT}:GPT",
    "build_gpt": f"{_GPT}:build_gpt",
    "GPTConfig": "toklip.gen.config:GPTConfig",
    "named_config": "toklip.gen.config:named_config",
    "StaticKVCache": "toklip.gen.kv_cache:StaticKVCache",
    "sample": "toklip.gen.sampling:sample",
    "cached_logits": "toklip.gen.sampling:cached_logits",
    "filter_logits": "toklip.gen.sampling:filter_logits",
    "load_gpt": "toklip.gen.load:load_gpt",
    "build_generator": "toklip.gen.generator:build_generator",
    "CaptionEncoder": "toklip.gen.captions:CaptionEncoder",
    "load_generator": "toklip.gen.generator:load_generator",
    "save_generator": "toklip.gen.generator:save_generator",
    "generate": "toklip.gen.generator:generate",
    "inception_fid_is": "toklip.gen.evaluate:inception_fid_is",
    "feature_fid": "toklip.gen.evaluate:feature_fid",
    "class_consistency": "toklip.gen.evaluate:class_consistency",
    "save_reference_stats": "toklip.gen.evaluate:save_reference_stats",
}

__all__ = [
    "GENERATORS",
    "CaptionEncoder",
    "build_generator",
    "class_consistency",
    "feature_fid",
    "generate",
    "inception_fid_is",
    "load_generator",
    "save_generator",
    "save_reference_stats",
    "GPT",
    "GPTConfig",
    "StaticKVCache",
    "build_gpt",
    "cached_logits",
    "filter_logits",
    "load_gpt",
    "named_config",
    "sample",
]

__getattr__ = lazy_getattr(__name__, _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from toklip.gen.captions import CaptionEncoder
    from toklip.gen.config import GPTConfig, named_config
    from toklip.gen.gpt import GPT, build_gpt
    from toklip.gen.kv_cache import StaticKVCache
    from toklip.gen.evaluate import class_consistency, feature_fid, inception_fid_is, save_reference_stats
    from toklip.gen.generator import build_generator, generate, load_generator, save_generator
    from toklip.gen.load import load_gpt
    from toklip.gen.sampling import cached_logits, filter_logits, sample
