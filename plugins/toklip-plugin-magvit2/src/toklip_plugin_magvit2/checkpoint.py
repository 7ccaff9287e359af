"""Reading Open-MAGVIT2 release checkpoints (Lightning ``.ckpt``) into the clean tokenizer.

A release file is ``{"state_dict": sd, ...}`` where ``sd`` holds the raw training weights under
``encoder.*``/``decoder.*`` **and** their EMA shadows as ``model_ema.<name with every '.' removed>``
(``LitEma``), plus ``model_ema.decay``/``model_ema.num_updates`` and possibly ``loss.*`` (discriminator).
The official inference (``reconstruct_image.py``) runs inside ``ema_scope()``, i.e. with the EMA weights,
so those are the default here. Files are read with ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from toklip.weights import load_state_dict_strict, read_checkpoint, unwrap_state_dict
from toklip import CheckpointError, ConfigError

Weights = Literal["auto", "ema", "raw"]
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = {"decay", "num_updates"}
OWN_PREFIXES = ("encoder", "decoder")


def ema_state(sd: Mapping[str, Tensor], names: list[str], source: str) -> dict[str, Tensor]:
    """Map ``model_ema.<dot-stripped name>`` shadows back onto the module's parameter ``names``."""
    by_stripped = {n.replace(".", ""): n for n in names}
    if len(by_stripped) != len(names):  # cannot happen for the official layout; guards odd configs
        raise CheckpointError(f"{source}: parameter names collide once dots are removed; load raw weights instead")
    state: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in sd.items():
        if not key.startswith(EMA_PREFIX):
            continue
        stripped = key[len(EMA_PREFIX):]
        if stripped in EMA_BOOKKEEPING:
            continue
        if stripped in by_stripped:
            state[by_stripped[stripped]] = value
        elif stripped.startswith(OWN_PREFIXES):
            unexpected.append(key)  # an encoder/decoder weight this architecture does not have
    if unexpected:
        # Report them as unexpected keys through the strict loader's message.
        state.update({k: sd[k] for k in unexpected})
    return state


def has_ema(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(EMA_PREFIX + p) for k in sd for p in OWN_PREFIXES)


def load_magvit2_checkpoint(module: nn.Module, path: str | Path, *, weights: Weights = "auto") -> str:
    """Load a release ``.ckpt`` (or a state dict / safetensors) strictly; returns "ema" or "raw".

    ``weights="auto"`` takes the EMA weights when the file has them (as official inference does), else the
    raw ones; ``"ema"``/``"raw"`` force a choice.
    """
    if weights not in ("auto", "ema", "raw"):
        raise ConfigError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    source = str(path)
    sd = unwrap_state_dict(read_checkpoint(path))  # {'state_dict': ...} or a plain state dict
    names = list(module.state_dict())
    use_ema = has_ema(sd) if weights == "auto" else weights == "ema"
    if use_ema:
        if not has_ema(sd):
            raise CheckpointError(
                f"{source} has no EMA weights (no 'model_ema.encoder*' keys); load it with weights='raw'"
            )
        state = ema_state(sd, names, source)
    else:
        state = {k: v for k, v in sd.items() if k.startswith(tuple(p + "." for p in OWN_PREFIXES))}
    if not state:
        raise CheckpointError(
            f"{source} holds no Open-MAGVIT2 encoder/decoder weights (first keys: {list(sd)[:5]})"
        )
    load_state_dict_strict(module, state, source=f"{source} ({'EMA' if use_ema else 'raw'} weights)")
    return "ema" if use_ema else "raw"
