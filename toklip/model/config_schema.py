"""What a config may say to a component: configs, presets and saved folders are data, so what they pass to
third-party loaders (timm, open_clip, transformers) is checked against allowlists here. No
``trust_remote_code``, no URLs, no pass-through ``**kwargs`` dictionaries, no tokenizer paths.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from toklip.core.errors import ConfigError, close_matches

# timm VisionTransformer architecture arguments a config may override (values: JSON scalars). Anything
# else (pretrained_cfg_overlay with its url, pretrained, checkpoint_path, ...) is refused.
VIT_KEYS = frozenset({
    "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "class_token",
    "no_embed_class", "reg_tokens", "pre_norm", "final_norm", "fc_norm", "global_pool", "patch_size",
    "dynamic_img_size", "dynamic_img_pad", "act_layer", "norm_layer", "pos_embed", "drop_path_rate",
})
# open_clip CLIPTextCfg fields a config may set; the hf_* fields (which load a transformers model by name,
# optionally with weights) and the free-form *_kwargs dictionaries are refused.
TEXT_KEYS = frozenset({
    "context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "embed_cls",
    "pad_id", "eos_id", "no_causal_mask", "final_ln_after_pool", "pool_type", "proj_bias", "proj_type",
    "output_tokens", "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
    "scale_attn", "scale_fc",
})
# the small keyword dictionaries open_clip passes to its norm and activation layers (SigLIP's text tower)
TEXT_DICT_KEYS = {"norm_kwargs": frozenset({"eps"}), "act_kwargs": frozenset({"approximate"})}
# what open_clip's HFTokenizer may receive from a model config (never trust_remote_code)
TOKENIZER_KWARGS = frozenset({"clean", "strip_sep_token", "language"})

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^pipe:", re.IGNORECASE)
SCALARS = (str, int, float, bool, type(None))
MAX_DEPTH = 8  # nesting of component kwargs (lists/dicts); real configs use 2


def check_data(value: Any, where: str, depth: int = 0) -> None:
    """JSON data only, no URLs and no ``trust_remote_code`` anywhere in a component's keyword arguments."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        if URL.match(value):
            raise ConfigError(f"{where} = {value[:80]!r}: configs never name URLs (toklip fetches nothing a config "
                              "says); download the file and give its local path")
        return
    if isinstance(value, SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_data(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where} has a non-string key {k!r}")
            if k == "trust_remote_code":
                raise ConfigError(f"{where}.trust_remote_code: toklip never runs code from a config or checkpoint")
            check_data(v, f"{where}.{k}", depth + 1)
        return
    raise ConfigError(f"{where} is a {type(value).__name__}; configs hold JSON values only")


def check_keys(
    given: Mapping[str, Any],
    allowed: frozenset[str] | set[str],
    where: str,
    nested: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Unknown keys refused with did-you-mean; values must be JSON scalars (``nested`` names the keys that hold
    a small dictionary of scalars instead, with its own allowed keys)."""
    nested = nested or {}
    check_keys_only(given, set(allowed) | set(nested), where)
    for k, v in given.items():
        if k in nested and isinstance(v, Mapping):
            check_keys(v, nested[k], f"{where}.{k}")
            continue
        if not isinstance(v, SCALARS):
            raise ConfigError(f"{where}.{k} must be a number, string, boolean or null, got {type(v).__name__}")
        check_data(v, f"{where}.{k}")


def check_factory_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Keyword arguments a config gives a component must be ones its factory declares (when it declares them
    all, i.e. has no ``**kwargs``), and plain data."""
    check_data(dict(kwargs), where)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to compare against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    check_keys_only(kwargs, accepted, where)


def check_keys_only(given: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    """Unknown keys refused, naming the closest accepted one."""
    unknown = [k for k in given if k not in allowed]
    if unknown:
        text = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if (h := close_matches(k, allowed, n=1)) else "")
                         for k in unknown)
        raise ConfigError(f"{where}: unknown or disallowed key(s) {text}; accepted: {', '.join(sorted(allowed))}")
