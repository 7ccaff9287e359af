"""The official TokLIP checkpoint layout: key names (``visual.trunk.*``) to toklip's, and which released model a
state dict is."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from toklip.core.errors import CheckpointError, ConfigError

# official key prefix -> toklip key prefix (first match wins; order matters)
OFFICIAL_PREFIXES: list[tuple[str, str]] = [
    ("visual.trunk.vq.", "vq."),
    ("visual.trunk.vq_table.", "projector.fc1."),
    ("visual.trunk.vq_mapping.", "projector.fc2."),
    ("visual.trunk.", "token_encoder."),
    ("text.", "text."),
    ("logit_scale", "logit_scale"),
    ("logit_bias", "logit_bias"),
]
# Present in a fresh official model but expected absent from the released files (training removes it).
OPTIONAL_OFFICIAL_KEYS = {"logit_bias"}


def official_to_toklip_key(key: str) -> str:
    for old, new in OFFICIAL_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"key {key!r} is not part of the official TokLIP layout")


def toklip_to_official_key(key: str) -> str:
    for old, new in OFFICIAL_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    raise CheckpointError(f"key {key!r} has no official TokLIP counterpart")


def official_state_to_toklip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    unknown = [k for k in state if not any(k.startswith(o) for o, _ in OFFICIAL_PREFIXES)]
    if unknown:
        raise CheckpointError(
            "this does not look like an official TokLIP checkpoint; unexpected keys: " + ", ".join(unknown[:8])
        )
    return {official_to_toklip_key(k): v for k, v in state.items()}


def infer_preset(state: Mapping[str, Tensor]) -> str:
    """Which released TokLIP a full-size official state dict is, from its position-embedding length."""
    pos = state.get("visual.trunk.pos_embed")
    if pos is None:
        raise ConfigError("cannot tell the model size: no visual.trunk.pos_embed; pass config=...")
    n, width = pos.shape[1], pos.shape[2]
    if width == 1152 and n == 256:
        return "toklip-s-256"
    if width == 1152 and n == 576:
        return "toklip-l-384"
    raise ConfigError(
        f"pos_embed {tuple(pos.shape)} matches no released TokLIP (S-256: 256x1152, L-384: 576x1152); "
        "pass config='config.json' describing this model"
    )


def is_official_state(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("visual.trunk.") for k in state)
