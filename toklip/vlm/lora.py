"""LoRA adapters on the language model through peft (stage 2's cheaper option; LLaVA's LoRA script: r 128,
alpha 256, dropout 0.05 on every linear layer of the LLM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toklip.core.errors import ConfigError, MissingDependencyError
from toklip.vlm.config import check_keys

ADAPTER = "default"
DEFAULTS: dict[str, Any] = {"r": 128, "alpha": 256, "dropout": 0.05, "target_modules": "all-linear"}


def lora_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{r, alpha, dropout, target_modules}`` checked and completed (alpha defaults to 2 r, as LLaVA's)."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"lora must be a mapping such as {{r: 8, alpha: 16}}, got {options!r}")
    check_keys(options, DEFAULTS, "the lora options")
    out = {**DEFAULTS, **dict(options)}
    if "alpha" not in options:
        out["alpha"] = 2 * out["r"]
    r, alpha, dropout, targets = out["r"], out["alpha"], out["dropout"], out["target_modules"]
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ConfigError(f"lora.r must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ConfigError(f"lora.alpha must be a positive number, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ConfigError(f"lora.dropout must be a number in [0, 1), got {dropout!r}")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                          and all(isinstance(t, str) for t in targets))):
        raise ConfigError(f"lora.target_modules must be 'all-linear' or a list of module names, got {targets!r}")
    return out


def apply_lora(llm: Any, options: Mapping[str, Any]) -> Any:
    """The LLM wrapped in peft LoRA adapters (base weights frozen, adapters trainable, B initialised to zero)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MissingDependencyError('LoRA needs peft: pip install "toklip[vlm]"') from e
    o = lora_options(options)
    config = LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"], target_modules=o["target_modules"],
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(llm, config, adapter_name=ADAPTER)


def is_peft(llm: Any) -> bool:
    return hasattr(llm, "peft_config") and hasattr(llm, "merge_and_unload")
