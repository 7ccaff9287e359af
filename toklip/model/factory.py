"""``toklip.build``: presets + component names -> a composed TokLIP model."""

from __future__ import annotations

import contextlib
import copy
import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from toklip.core.io import parse_json, read_json
from toklip.model.config import ComponentRef, TokLIPConfig
from toklip.core.errors import ConfigError
from toklip.core.host import get_host
from toklip.core.registry import ComponentSpec

def list_presets(pattern: str = "*") -> list[str]:
    return get_host().registry("preset").names(pattern)


def preset_data(spec: ComponentSpec) -> dict[str, Any]:
    """The JSON dict of a registered preset (a dict, a file path, or a 'package:resource.json' string)."""
    from toklip.presets.schema import validate_preset

    src = spec.factory
    if isinstance(src, Mapping):
        data = copy.deepcopy(dict(src))
    elif ":" in str(src) and not Path(str(src)).exists():
        package, _, resource = str(src).partition(":")
        raw = importlib.resources.files(package).joinpath(resource).read_bytes()
        data = parse_json(raw, f"preset {spec.name!r} ({src})")
    else:
        data = read_json(str(src), f"preset {spec.name!r}")
    from toklip.model.official_config import is_official_config

    if not is_official_config(data):  # the official-architecture format has its own checks
        validate_preset(data, source=f"preset {spec.name!r}")
    return data


def resolve_config(source: str | Path | Mapping[str, Any] | TokLIPConfig) -> TokLIPConfig:
    """A preset name, a JSON file (toklip config or the official fixture format), a dict, or a config."""
    if isinstance(source, TokLIPConfig):
        return copy.deepcopy(source)
    if isinstance(source, Mapping):
        return _from_mapping(source)
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix == ".json" or path.is_file():
        return _from_mapping(read_json(path, "config"))
    spec = get_host().get("preset", text)
    cfg = _from_mapping(preset_data(spec))
    cfg.name = cfg.name or spec.name
    return cfg


def _from_mapping(data: Mapping[str, Any]) -> TokLIPConfig:
    from toklip.model.official_config import is_official_config, toklip_config_from_official

    if is_official_config(data):
        return toklip_config_from_official(data)
    return TokLIPConfig.from_dict(data)


def _merge(ref: ComponentRef | None, value: Any, what: str) -> ComponentRef | None:
    """A string replaces the component; a mapping with a name replaces it; a mapping without a name
    updates the keyword arguments of the preset's component."""
    if value is None:
        return ref
    if isinstance(value, Mapping) and "name" not in value:
        if ref is None:
            raise ConfigError(f"{what}={dict(value)!r} has no 'name' and there is no preset {what} to update")
        return ComponentRef(ref.name, {**ref.kwargs, **copy.deepcopy(dict(value))})
    return ComponentRef.parse(value, what)


def build(
    preset: str | Path | Mapping[str, Any] | TokLIPConfig | None = None,
    /,
    *,
    vq: Any = None,
    encoder: Any = None,
    projector: Any = None,
    attention: str | None = None,
    attn_backend: str | None = None,
    fusion: Any = None,
    image_size: int | None = None,
    pretrained: bool | str = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Build a TokLIP model.

    ``toklip.build("toklip-l-384")`` builds a preset; ``toklip.build(vq="llamagen", encoder="siglip2")`` builds
    from component names (defaults: TokLIP-S's components). Each component is a name, ``{"name": ..., **kwargs}``,
    or (with a preset) a kwargs mapping that updates the preset's component.

    ``pretrained=False`` (default) is random init with no network. ``pretrained=True`` loads the preset's
    official release, or, for a composition without one, each component's published weights (LlamaGen VQ,
    SigLIP2 webli) as TokLIP's training starts from. ``pretrained="path"`` loads a TokLIP checkpoint file.
    """
    if preset is None:
        cfg = TokLIPConfig(vq=ComponentRef("llamagen"), encoder=ComponentRef("siglip2"))
    else:
        cfg = resolve_config(preset)
    cfg.vq = _merge(cfg.vq, vq, "vq")  # type: ignore[assignment]
    cfg.encoder = _merge(cfg.encoder, encoder, "encoder")  # type: ignore[assignment]
    cfg.projector = _merge(cfg.projector, projector, "projector")  # type: ignore[assignment]
    if fusion is not None:
        cfg.fusion = None if fusion is False else _merge(cfg.fusion, fusion, "fusion")
    if attention is not None:
        cfg.attention = attention
    if attn_backend is not None:
        cfg.attn_backend = attn_backend
    if image_size is not None:
        cfg.image_size = image_size
    if (vq is not None or encoder is not None) and preset is not None:
        cfg.name = None  # no longer the preset

    from toklip.model.loading import load_weights

    if pretrained is True:
        release = preset_release(preset)
        if release is not None:
            return load_weights(cfg, release, device=device, dtype=dtype)
        for ref in (cfg.vq, cfg.encoder):  # no release: each component's published weights
            ref.kwargs.setdefault("pretrained", True)
    elif pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained={str(pretrained)!r} is not a checkpoint file (or pass pretrained=True)")
        return load_weights(cfg, path, device=device, dtype=dtype)
    return build_from_config(cfg, device=device, dtype=dtype)


def _spec(kind: str, ref: ComponentRef | str) -> ComponentSpec:
    """The registered spec, its requirements met and the config's keyword arguments checked against it."""
    from toklip.model.config_schema import check_factory_kwargs

    name = ref if isinstance(ref, str) else ref.name
    spec = get_host().get(kind, name)
    spec.check_requirements()
    if isinstance(ref, ComponentRef) and ref.kwargs:
        check_factory_kwargs(spec.load(), ref.kwargs, f"{kind} {name!r}")
    return spec


def preset_release(preset: Any) -> Path | None:
    """The official release file of a preset named by ``preset`` (None for compositions and configs)."""
    if not isinstance(preset, str) or Path(preset).expanduser().exists():
        return None
    spec = get_host().get("preset", preset)
    if not spec.pretrained:
        return None
    from toklip.weights.hub import resolve_weights

    return Path(resolve_weights(spec, True))


def build_from_config(
    cfg: TokLIPConfig, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Any:
    """Instantiate every component of a config (random init unless a component names `pretrained`)."""
    from toklip.model.toklip import TokLIP

    # Resolve every name and check requirements before constructing anything heavy.
    specs = {
        "vq": _spec("vq", cfg.vq),
        "encoder": _spec("encoder", cfg.encoder),
        "projector": _spec("projector", cfg.projector),
        "attention": _spec("attention", cfg.attention),
    }
    if cfg.fusion is not None:
        specs["fusion"] = _spec("fusion", cfg.fusion)
    if cfg.attn_backend != "auto":
        _spec("attn_backend", cfg.attn_backend)

    target = torch.device(device) if device is not None else None
    # Construct directly on the target device (initialising 1.2B parameters on a GPU beats moving them there).
    ctx = target if target is not None else contextlib.nullcontext()
    with ctx:
        vq = specs["vq"].create(**cfg.vq.kwargs)
        enc = specs["encoder"].create(**cfg.encoder.kwargs)
        ds = int(vq.downsample)
        image_size = cfg.image_size or enc.grid[0] * ds
        if image_size % ds:
            raise ConfigError(f"image_size {image_size} is not a multiple of the VQ downsample factor {ds}")
        grid = (image_size // ds, image_size // ds)
        token_encoder = enc.build_token_encoder(grid)
        projector = specs["projector"].create(
            code_dim=vq.code_dim, vocab_size=vq.vocab_size, width=token_encoder.width, **cfg.projector.kwargs
        )
        fusion = None
        if cfg.fusion is not None:
            fusion = specs["fusion"].create(low_dim=vq.code_dim, high_dim=token_encoder.width, **cfg.fusion.kwargs)
        scale, bias = enc.logit_init()
        model = TokLIP(
            config=copy.deepcopy(cfg),
            vq=vq,
            projector=projector,
            token_encoder=token_encoder,
            attention=specs["attention"].create(),
            text=enc.build_text_tower(),
            tokenizer=enc.build_tokenizer(),
            fusion=fusion,
            image_size=image_size,
            init_logit_scale=scale,
            init_logit_bias=bias,
            context_length=getattr(enc, "context_length", None),
            vocab_size=getattr(enc, "vocab_size", None),
            mean=tuple(enc.mean),
            std=tuple(enc.std),
            encoder_builder=enc,
        )
    release = getattr(enc, "release", None)
    if callable(release):
        release()  # the towers hold their tensors now; the encoder keeps only what rebuilds the teacher
    model.config.image_size = image_size
    model.set_attn_backend(cfg.attn_backend)
    if target is not None and target.type != "meta" or dtype is not None:
        model.to(device=target, dtype=dtype)
    return model.eval()

