"""What every open_clip-backed semantic encoder shares: config resolution, weights, text tower, tokenizer.

Subclasses say how to build the vision tower as a timm VisionTransformer (`build_vit`) and how it pools.
Weights are read once per encoder object from an open_clip state dict (``visual.*``, ``text.*``,
``logit_scale``, ``logit_bias``), whether it came from the hub, a local file or a conversion.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from toklip.core.errors import ConfigError, InputError, WeightsNotFoundError

CLIP_BPE = "clip-bpe"


class OpenCLIPEncoderBase:
    """Common behaviour. ``model`` names an open_clip config or one of ``TINY_CONFIGS`` of the subclass."""

    registry_name: str = "encoder"
    TINY_CONFIGS: Mapping[str, Mapping[str, Any]] = {}
    pool: str = "map"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        model: str,
        *,
        vision: Mapping[str, Any] | None = None,
        text: Mapping[str, Any] | None = None,
        embed_dim: int | None = None,
        image_size: int | None = None,
        patch_size: int | None = None,
        tokenizer: str | None = None,
        init_logit_scale: float | None = None,
        init_logit_bias: float | None = None,
        pretrained: bool | str | None = None,
        name: str | None = None,
    ) -> None:
        from toklip.model.config_schema import TEXT_DICT_KEYS, TEXT_KEYS, VIT_KEYS, check_keys

        check_keys(vision or {}, VIT_KEYS, "encoder.vision")
        check_keys(text or {}, TEXT_KEYS, "encoder.text", nested=TEXT_DICT_KEYS)
        if tokenizer is not None:
            check_tokenizer_name(tokenizer)
        self.model = model
        self.name = name or self.registry_name
        cfg = copy.deepcopy(dict(self.TINY_CONFIGS[model])) if model in self.TINY_CONFIGS else self._open_clip_config(model)
        self.cfg = cfg
        self.vision_overrides = dict(cfg.get("vision_overrides", {}))
        self.vision_overrides.update(vision or {})
        self.text_cfg = dict(cfg.get("text_cfg", {}))
        self.text_cfg.update(text or {})
        self.embed_dim = int(embed_dim or cfg["embed_dim"])
        self.image_size = int(image_size or cfg["vision_cfg"]["image_size"])
        self.patch_size = int(patch_size or cfg["vision_cfg"].get("patch_size") or self._default_patch_size())
        self.tokenizer_name = tokenizer if tokenizer is not None else cfg.get("tokenizer", self.text_cfg.get("hf_tokenizer_name"))
        self.init_logit_scale = float(init_logit_scale if init_logit_scale is not None else math.log(1 / 0.07))
        bias = init_logit_bias if init_logit_bias is not None else cfg.get("init_logit_bias")
        self.init_logit_bias = None if bias is None else float(bias)
        self.pretrained = pretrained
        self._state: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ config
    @staticmethod
    def _open_clip_config(model: str) -> dict[str, Any]:
        import open_clip

        cfg = open_clip.get_model_config(model)
        if cfg is None:
            raise ConfigError(f"open_clip has no model config named {model!r}; see open_clip.list_models()")
        return copy.deepcopy(cfg)

    def _default_patch_size(self) -> int:
        return 16

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    # ------------------------------------------------------------------ weights
    def state(self) -> dict[str, Tensor] | None:
        """The open_clip state dict for ``pretrained`` (None for random init), read once."""
        if not self.pretrained:
            return None
        if self._state is None:
            self._state = self._read_pretrained(self.pretrained)
        return self._state

    def _read_pretrained(self, pretrained: bool | str) -> dict[str, Tensor]:
        """An open_clip state dict from a local file (the registry resolved weight tags to files)."""
        from toklip.weights import local_weights, read_checkpoint, unwrap_state_dict

        return unwrap_state_dict(read_checkpoint(local_weights(pretrained, f"encoder {self.name!r}")))

    def release(self) -> None:
        """Drop the state dict read for building (the built towers hold their own tensors): a model keeps its
        encoder to build the distillation teacher later, which re-reads the file instead of pinning the whole
        checkpoint in memory for the model's lifetime."""
        self._state = None

    def _subset(self, prefix: str) -> dict[str, Tensor]:
        state = self.state() or {}
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def _load(self, module: nn.Module, prefix: str, *, skip: Sequence[str] = ()) -> None:
        if self.state() is None:
            return
        from toklip.weights import load_state_dict_strict

        sub = {k: v for k, v in self._subset(prefix).items() if not any(k.startswith(s) for s in skip)}
        if not sub:
            raise WeightsNotFoundError(
                f"the {self.name} weights ({self.pretrained}) have no '{prefix}*' tensors: not an open_clip "
                f"checkpoint of {self.model}?"
            )
        load_state_dict_strict(module, sub, source=f"{self.pretrained} [{prefix}*]")

    def logit_init(self) -> tuple[float, float | None]:
        state = self.state()
        scale, bias = self.init_logit_scale, self.init_logit_bias
        if state is not None:
            if "logit_scale" in state:
                scale = float(state["logit_scale"])
            if "logit_bias" in state:
                bias = float(state["logit_bias"])
        return scale, bias

    # ------------------------------------------------------------------ towers
    def build_vit(self) -> nn.Module:
        raise NotImplementedError

    def build_token_encoder(self, grid: tuple[int, int]) -> nn.Module:
        from toklip.layers.vit_adapter import token_encoder_from_timm

        vit = self.build_vit()
        self.load_visual(vit)
        return token_encoder_from_timm(vit, grid, pool=self.pool)  # type: ignore[arg-type]

    def load_visual(self, vit: nn.Module) -> None:
        raise NotImplementedError

    def build_teacher(self) -> nn.Module:
        """The encoder's own image tower (patch embedding, bidirectional), frozen: the distillation teacher."""
        vit = self.build_vit()
        self.load_visual(vit)
        vit.eval().requires_grad_(False)
        return vit

    def build_text_tower(self) -> nn.Module | None:
        if not self.text_cfg:
            return None
        from open_clip.model import _build_text_tower

        cfg = {k: v for k, v in self.text_cfg.items() if k not in {"hf_tokenizer_name", "tokenizer_kwargs"}}
        tower = _build_text_tower(self.embed_dim, cfg, quick_gelu=bool(self.cfg.get("quick_gelu", False)))
        self._load(tower, "text.")
        return tower

    @property
    def context_length(self) -> int:
        return int(self.text_cfg.get("context_length", 77))

    @property
    def vocab_size(self) -> int:
        return int(self.text_cfg.get("vocab_size", 49408))

    def build_tokenizer(self) -> Callable[[Sequence[str]], Tensor] | None:
        if not self.tokenizer_name:
            return None
        from toklip.model.config_schema import TOKENIZER_KWARGS

        kwargs = {k: v for k, v in (self.text_cfg.get("tokenizer_kwargs") or {}).items() if k in TOKENIZER_KWARGS}
        return LazyTokenizer(self.tokenizer_name, self.context_length, kwargs)


class LazyTokenizer:
    """Creates the real tokenizer on first use, so building a model never needs tokenizer files."""

    def __init__(self, name: str, context_length: int, kwargs: Mapping[str, Any]) -> None:
        self.name, self.context_length, self.kwargs = name, context_length, dict(kwargs)
        self._tok: Any = None

    def _get(self) -> Any:
        if self._tok is None:
            from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

            if self.name == CLIP_BPE:
                self._tok = SimpleTokenizer(context_length=self.context_length)
            else:
                try:
                    # trust_remote_code=False: a tokenizer repo's Python never runs, whatever a config says
                    self._tok = HFTokenizer(self.name, context_length=self.context_length, trust_remote_code=False,
                                            **self.kwargs)
                except Exception as e:  # noqa: BLE001 - offline / missing files come in many types
                    raise WeightsNotFoundError(
                        f"the tokenizer {self.name!r} comes from the Hugging Face hub and is not available "
                        f"({type(e).__name__}: {e}). Connect once to cache it, or pass token ids "
                        "(LongTensor [T, context_length]) to encode_text instead of strings."
                    ) from e
        return self._tok

    def __call__(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise InputError("encode_text takes a list of strings or a LongTensor of token ids")
        return self._get()(list(texts))


def check_tokenizer_name(name: str) -> None:
    """A text tokenizer is the offline CLIP BPE or a hub repo id: never a local folder, whose files could
    carry code for transformers to import."""
    from toklip.weights.hub import is_hub_repo_id

    if name in ("", CLIP_BPE) or is_hub_repo_id(name):
        return
    raise ConfigError(
        f"encoder.tokenizer={name!r}: a tokenizer is {CLIP_BPE!r} or a Hugging Face hub repo id ('owner/name'), "
        "not a path; to use a local tokenizer, pass token ids to encode_text or set model.tokenizer in code"
    )
