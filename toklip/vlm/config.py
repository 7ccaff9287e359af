"""What rebuilds a VLM: the config.json of a saved VLM folder (``format: toklip-vlm``).

``tokenizer`` says where the frozen TokLIP comes from: ``{"source": <preset | folder | hub id>, "pretrained": ...}``
when rebuilding from that source gives the same weights, or ``{"source": null}`` when its weights are saved in the
folder (``toklip.safetensors`` + ``toklip.json``, e.g. a random-init preset or a model object). ``llm`` is the base language model (a folder or
hub id); ``saved`` names the weight groups of ``model.safetensors`` (``projector`` always; ``lora`` or ``llm``
when they trained).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from toklip.core.errors import ConfigError, close_matches

FORMAT = "toklip-vlm"
FORMAT_VERSION = 1
GROUPS = ("projector", "lora", "llm")


@dataclass
class VLMConfig:
    tokenizer: dict[str, Any]
    llm: str
    projector: str = "mlp2x_gelu"
    projector_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_layer: int = -1
    features: str = "toklip"
    template: str = "chat"
    image_token: str = "<image>"
    lora: dict[str, Any] | None = None
    llm_trained: bool = False
    # recorded for checks when loading (a changed source LLM or tokenizer fails clearly)
    feature_dim: int | None = None
    hidden_size: int | None = None
    num_image_tokens: int | None = None

    @property
    def saved(self) -> list[str]:
        """The weight groups a saved folder holds: what trained (the projector always)."""
        groups = ["projector"]
        if self.lora:
            groups.append("lora")
        elif self.llm_trained:
            groups.append("llm")
        return groups

    def to_dict(self) -> dict[str, Any]:
        from toklip import __version__

        return {"format": FORMAT, "format_version": FORMAT_VERSION, "toklip_version": __version__, **asdict(self),
                "saved": self.saved}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "VLM config") -> VLMConfig:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(f"{where} is not a toklip VLM config (expected \"format\": \"{FORMAT}\")")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(f"{where} has format_version {version!r}; this toklip reads {FORMAT_VERSION}")
        body = {k: v for k, v in data.items() if k not in ("format", "format_version", "toklip_version", "saved")}
        check_keys(body, [f.name for f in fields(cls)], where)
        for key in ("tokenizer", "llm"):
            if key not in body:
                raise ConfigError(f"{where} lacks {key!r}")
        if not isinstance(body["tokenizer"], Mapping):
            raise ConfigError(f"{where}: 'tokenizer' must be an object, got {body['tokenizer']!r}")
        cfg = cls(**{**body, "tokenizer": dict(body["tokenizer"])})
        if "saved" in data and list(data["saved"]) != cfg.saved:
            raise ConfigError(f"{where}: 'saved' is {data['saved']!r} but lora/llm_trained say {cfg.saved!r}")
        return cfg


def check_keys(given: Any, known: Any, where: str) -> None:
    """A ConfigError naming every unknown key of ``given`` with a did-you-mean from ``known``."""
    known = list(known)
    unknown = [k for k in given if k not in known]
    if unknown:
        hints = {k: close_matches(str(k), known, n=1) for k in unknown}
        text = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ConfigError(f"unknown key(s) in {where}: {text}; known: {', '.join(known)}")


def key_group(key: str) -> str:
    """The weight group of a VLM state-dict key: ``tokenizer`` (the frozen TokLIP), ``projector``, ``lora``
    (peft adapter tensors) or ``llm``."""
    if key.startswith("projector."):
        return "projector"
    if key.startswith("features."):
        return "tokenizer"
    if key.startswith("llm."):
        return "lora" if ".lora_" in key else "llm"
    return "other"
