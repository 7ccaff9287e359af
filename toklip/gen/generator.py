"""Generators with their tokenizer: ``toklip.build_generator``, ``toklip.load_generator``, saving, ``generate``.

A generator (kind ``generator``: LlamaGen's GPT family and plugins) predicts VQ codes. ``build_generator`` sizes it
from the tokenizer (vocabulary = the VQ's codebook, image tokens = its grid), optionally gives it fused inputs
``fusion(E_tok[x_i], s_i)`` from a frozen causal TokLIP (toklip.gen.fused), and attaches the tokenizer so
``generate`` returns images. A text-conditional (t2i) generator also holds a frozen caption encoder
(toklip.gen.captions: T5), so ``generate(prompts=[...])`` works. Tokenizer and caption encoder are held by
reference, outside the module tree: never in the state dict, a checkpoint or the optimizer. The saved form is a
folder: ``generator.json`` (the generator's name and config, the fusion, which tokenizer it reads with that
tokenizer's weights sha256, and where its caption encoder comes from) + ``model.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import CheckpointError, ConfigError, InputError

GENERATOR_FILE = "generator.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "toklip-generator"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


# ---------------------------------------------------------------------------------------------- build
def resolve_tokenizer(tokenizer: Any) -> tuple[Any, str | None]:
    """A tokenizer object, or a source ``toklip.load`` takes (preset, folder, file), frozen -> (model, source)."""
    if tokenizer is None:
        return None, None
    source = None
    if isinstance(tokenizer, (str, Path)):
        import toklip

        source = str(tokenizer)
        with torch.random.fork_rng(devices=[]):  # a preset without released weights is random: the same one each
            torch.manual_seed(0)  # time (seed 0, as `toklip tokenize` builds it), so its codes and features match
            tokenizer = toklip.load(source)
    if not isinstance(tokenizer, nn.Module) or not hasattr(tokenizer, "decode"):
        raise ConfigError(f"tokenizer must be a toklip model or VQ tokenizer (or a name toklip.load takes), got "
                          f"{type(tokenizer).__name__}")
    tokenizer.eval().requires_grad_(False)
    return tokenizer, source


def tokenizer_sizes(tokenizer: Any) -> dict[str, int]:
    """The generator sizes a tokenizer fixes: its codebook and (for a TokLIP) its grid of image tokens."""
    vq = getattr(tokenizer, "vq", tokenizer)
    sizes = {"vocab_size": int(vq.vocab_size)}
    grid = getattr(tokenizer, "grid", None)
    if grid is not None:
        sizes["block_size"] = int(grid[0]) * int(grid[1])
    return sizes


def build_generator(
    name: str = "gpt-b",
    *,
    tokenizer: Any = None,
    fusion: str | Mapping[str, Any] | None = None,
    feature_layer: int | None = None,
    num_classes: int | None = None,
    caption_encoder: Any = None,
    **overrides: Any,
) -> nn.Module:
    """A generator sized for ``tokenizer``; ``fusion`` (a registered name, or ``{"name": ..., **kwargs}``) makes its
    image-token inputs ``fusion(E_tok[x_i], s_i)`` with the frozen causal TokLIP's features from
    ``feature_layer`` (None: after the final norm). ``fusion=None`` is plain LlamaGen.

    ``caption_encoder`` (t2i generators): a ``toklip.gen.captions.CaptionEncoder``, or what its ``from_pretrained``
    takes (a T5 encoder folder, a hub id, ``"flan-t5-xl"``); its width must be the generator's caption_dim."""
    from toklip.core.host import get_spec
    from toklip.gen.fused import FusedImageInputs, check_causal

    encoder = None
    if caption_encoder is not None:
        from toklip.gen.captions import as_caption_encoder

        encoder = as_caption_encoder(caption_encoder)
    tok, source = resolve_tokenizer(tokenizer)
    if tok is not None:
        for key, value in tokenizer_sizes(tok).items():
            if key in overrides and overrides[key] != value:
                raise ConfigError(f"{key}={overrides[key]} does not fit the tokenizer, whose {key} is {value}; "
                                  f"leave {key} out and build_generator takes it from the tokenizer")
            overrides[key] = value
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    gen = get_spec("generator", name).create(**overrides)
    fusion_spec = None
    if fusion is not None:
        if tok is None:
            raise ConfigError("fusion needs the TokLIP whose features it fuses: build_generator(..., tokenizer=...)")
        check_causal(tok)
        fusion_spec = {"name": fusion} if isinstance(fusion, str) else dict(fusion)
        kwargs = {k: v for k, v in fusion_spec.items() if k != "name"}
        dim = gen.config.dim
        module = get_spec("fusion", fusion_spec["name"]).create(
            low_dim=dim, high_dim=tok.token_encoder.width, out_dim=dim, **kwargs)
        gen.image_inputs = FusedImageInputs(tok, module, fusion_name=fusion_spec["name"], layer=feature_layer)
    elif feature_layer is not None:
        raise ConfigError("feature_layer selects the TokLIP layer that fused inputs read; it needs fusion=...")
    attach(gen, tok, {
        "generator": name, "fusion": fusion_spec, "feature_layer": feature_layer,
        "tokenizer": None if tok is None else describe_tokenizer(tok, source),
    })
    attach_caption_encoder(gen, encoder)
    return gen


def describe_tokenizer(tok: Any, source: str | None) -> dict[str, Any]:
    from toklip.weights.identity import state_dict_sha256

    config = getattr(tok, "config", None)
    return {"source": source or getattr(config, "name", None), "vq_sha256": state_dict_sha256(getattr(tok, "vq", tok)),
            **tokenizer_sizes(tok)}


def attach(gen: nn.Module, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Keep the tokenizer (by reference: never saved or trained) and what the generator was built from."""
    gen._toklip_tokenizer = [tokenizer]
    gen.toklip_meta = meta


def tokenizer_of(gen: nn.Module) -> Any:
    held = getattr(gen, "_toklip_tokenizer", None)
    return held[0] if held else None


def attach_caption_encoder(gen: nn.Module, encoder: Any) -> None:
    """Keep a t2i generator's caption encoder by reference (a list, so nn.Module does not register it: it is never
    in the state dict, checkpoints or the optimizer) and record its source in ``toklip_meta``."""
    gen._toklip_caption_encoder = [encoder]
    gen.toklip_meta["caption_encoder"] = None if encoder is None else encoder.describe()
    if encoder is None:
        return
    if gen.config.model_type != "t2i":
        raise ConfigError("caption_encoder is for text-conditional generators (the -t2i names, e.g. gpt-b-t2i); this "
                          "one is class-conditional (c2i) and takes labels")
    encoder.check_fits(gen.config.caption_dim)


def caption_encoder_of(gen: nn.Module) -> Any:
    held = getattr(gen, "_toklip_caption_encoder", None)
    return held[0] if held else None


def encode_prompts(gen: nn.Module, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Prompts -> the generator's caption features ``[B, cls_token_num, caption_dim]`` and mask ``[B,
    cls_token_num]`` (left-padded, LlamaGen's layout), by its caption encoder."""
    return prompt_encoder(gen).encode(prompts, length=gen.config.cls_token_num)


def prompt_encoder(gen: nn.Module) -> Any:
    """The caption encoder that turns prompts into ``gen``'s condition; an InputError naming the fix when ``gen`` is
    c2i or has none."""
    if gen.config.model_type != "t2i":
        raise InputError("this generator is class-conditional (c2i): give labels=[...] (class indices), not prompts")
    encoder = caption_encoder_of(gen)
    if encoder is None:
        raise InputError("this t2i generator has no caption encoder to turn prompts into caption features: build it "
                         "with toklip.build_generator(..., caption_encoder='flan-t5-xl' or a T5 folder), load it with "
                         "toklip.load_generator(..., caption_encoder=PATH), or pass cond= caption features")
    return encoder


# ---------------------------------------------------------------------------------------------- generate
@torch.no_grad()
def generate(
    gen: nn.Module,
    labels: Sequence[int] | Tensor | None = None,
    *,
    prompts: Sequence[str] | None = None,
    cond: Any = None,
    cond_mask: Tensor | None = None,
    cfg: float = 1.0,
    cfg_interval: int | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
    tokenizer: Any = None,
) -> Tensor:
    """Images ``[B, 3, S, S]`` in [-1, 1]: sample codes for ``labels`` (c2i), ``prompts`` (t2i, encoded by the
    attached caption encoder, one image each) or caption features ``cond`` (t2i, with ``cond_mask``) and decode
    them with the tokenizer's VQ. Classifier-free guidance's unconditional half is the model's null condition (t2i:
    its ``uncond_embedding`` under the prompt's mask, as LlamaGen). Batches of ``batch_size`` draw from one seeded
    generator in order: the same seed and batch size give the same images on any run."""
    tok = tokenizer if tokenizer is not None else tokenizer_of(gen)
    if tok is None:
        raise InputError("generate decodes codes with a tokenizer: build or load the generator with tokenizer=... "
                         "(or call gen.sample(...) for the codes)")
    if sum(x is not None for x in (labels, prompts, cond)) != 1:
        raise InputError("give one of labels=[...] (class-conditional), prompts=[...] or cond=caption features "
                         "(text-conditional)")
    if cond_mask is not None and cond is None:
        raise InputError("cond_mask goes with cond= caption features (prompts are masked by their encoder)")
    if prompts is not None:
        from toklip.gen.captions import check_prompts

        prompts = check_prompts(prompts)
        prompt_encoder(gen)  # a c2i generator or no encoder: the error now, before any work
        cond = prompts
    cond = labels if cond is None else cond
    if isinstance(cond, Tensor):
        n = cond.shape[0]
    elif isinstance(cond, Sequence):
        n = len(cond)
    else:
        raise InputError(f"labels must be a list of ints or a LongTensor [B], got {type(cond).__name__}")
    step = batch_size or n
    if not isinstance(step, int) or step < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = next(gen.parameters()).device
    rng = torch.Generator(device=device)
    if seed is not None:
        rng.manual_seed(seed)
    else:
        rng.seed()
    images = []
    for start in range(0, n, step):
        chunk = cond[start:start + step]
        mask = None if cond_mask is None else cond_mask[start:start + step]
        if prompts is not None:
            chunk, mask = encode_prompts(gen, list(chunk))
        codes = gen.sample(list(chunk) if not isinstance(chunk, Tensor) else chunk, cfg=cfg, cfg_interval=cfg_interval,
                           top_k=top_k, top_p=top_p, temperature=temperature, generator=rng, cond_mask=mask)
        images.append(tok.decode(codes.to(tok.device if hasattr(tok, "device") else codes.device)).float().clamp(-1, 1))
    return torch.cat(images)


# ---------------------------------------------------------------------------------------------- save / load
def save_generator(gen: nn.Module, directory: str | Path, *, state: Mapping[str, Tensor] | None = None) -> Path:
    """``generator.json`` + ``model.safetensors`` in ``directory`` (each written atomically)."""
    from safetensors.torch import save_file

    from toklip._version import __version__
    from toklip.core.io import atomic_write, atomic_write_text

    meta = getattr(gen, "toklip_meta", None)
    if meta is None:
        raise ConfigError("save_generator saves generators made by toklip.build_generator / load_generator")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in (state if state is not None else gen.state_dict()).items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    record = {"format": FORMAT, "version": 1, "toklip_version": __version__, **meta, "config": gen.config.to_dict()}
    atomic_write_text(directory / GENERATOR_FILE, json.dumps(record, indent=2) + "\n")
    return directory


def load_generator(
    source: str | Path,
    *,
    config: Any = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    check_tokenizer: bool = True,
    caption_encoder: Any = None,
    **overrides: Any,
) -> nn.Module:
    """A generator from a folder ``save_generator`` wrote, a training run (its newest checkpoint), or a LlamaGen
    release file (``c2i_B_256.pt``, ``t2i_XL_stage1_256.pt``; ``config`` = a size name, mapping or config.json, as
    ``load_gpt``).

    ``tokenizer`` (object or ``toklip.load`` source) defaults to the one the folder records; a fused generator
    needs it, and its VQ must be the one the generator was trained with (sha256 checked unless
    ``check_tokenizer=False``). ``caption_encoder`` (t2i) defaults to the one the folder records (a T5 folder or
    hub id); pass a folder or ``CaptionEncoder`` where it lives elsewhere now, or False to attach none. It moves
    to ``device`` but keeps its own dtype (float32 unless built otherwise)."""
    from toklip.train.checkpoint import run_checkpoint

    path = run_checkpoint(source, marker=GENERATOR_FILE)
    if path.is_dir():
        gen = _load_folder(path, tokenizer=tokenizer, device=device, dtype=dtype, check_tokenizer=check_tokenizer,
                           caption_encoder=caption_encoder)
    else:
        gen = _load_release_file(path, str(source), config=config, tokenizer=tokenizer, device=device, dtype=dtype,
                                 caption_encoder=caption_encoder, **overrides)
    tok = tokenizer_of(gen)
    if tok is not None and device is not None:
        tok.to(device)  # the tokenizer decodes (and, fused, feeds) on the generator's device
    encoder = caption_encoder_of(gen)
    if encoder is not None and device is not None:
        encoder.to(device)
    return gen


def _caption_encoder_for(where: Path, recorded: Any, given: Any) -> Any:
    """The caption encoder to attach: ``given`` (False: none), else the one ``recorded`` in the folder, loaded with
    the recorded options; a recorded folder that is gone is a ConfigError naming ``caption_encoder=`` as the fix."""
    from toklip.gen.captions import CaptionEncoder, as_caption_encoder

    if given is False:
        return None
    recorded = recorded if isinstance(recorded, dict) else {}
    options = {"lowercase": bool(recorded.get("lowercase", True))}
    if given is not None:
        return given if isinstance(given, CaptionEncoder) else as_caption_encoder(given, **options)
    if not recorded.get("source"):
        return None
    try:
        return as_caption_encoder(str(recorded["source"]), **options)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        raise type(e)(f"{where} records its caption encoder as {recorded['source']!r}, which cannot be loaded: {e}\n"
                      "  Pass it where it is now: toklip.load_generator(..., caption_encoder=PATH) or "
                      "`toklip generate ... --caption-encoder PATH`") from e


def _load_release_file(path: Path, source: str, *, config: Any, tokenizer: Any, device: Any, dtype: Any,
                       caption_encoder: Any = None, **overrides: Any) -> nn.Module:
    if path.suffix not in WEIGHT_SUFFIXES or not path.is_file():
        raise ConfigError(f"{source}: not a generator folder (with {GENERATOR_FILE}), a training run or a checkpoint "
                          f"file ({', '.join(WEIGHT_SUFFIXES)})")
    from toklip.gen.load import load_gpt

    gen = load_gpt(path, config, device=device, dtype=dtype, **overrides)
    tok, tok_source = resolve_tokenizer(tokenizer)
    if tok is not None:
        _check_sizes(gen, tok, str(path))
    attach(gen, tok, {"generator": None, "fusion": None, "feature_layer": None,
                      "tokenizer": None if tok is None else describe_tokenizer(tok, tok_source)})
    attach_caption_encoder(gen, _caption_encoder_for(path, None, caption_encoder))
    return gen


def _load_folder(path: Path, *, tokenizer: Any, device: Any, dtype: Any, check_tokenizer: bool,
                 caption_encoder: Any = None) -> nn.Module:
    from toklip.core.io import read_json
    from toklip.gen.config import GPTConfig
    from toklip.model.loading import materialize_missing
    from toklip.weights.readers import load_state_dict_strict, read_checkpoint

    record = read_json(path / GENERATOR_FILE, "generator config")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path / GENERATOR_FILE} is not a toklip generator config (format {FORMAT!r})")
    cfg = GPTConfig.from_dict(record.get("config") or {})
    recorded = record.get("tokenizer") or {}
    fusion = record.get("fusion")
    if tokenizer is None and (fusion is not None or recorded.get("source")):
        if not recorded.get("source"):
            raise ConfigError(f"{path}: this fused generator does not record its tokenizer; pass tokenizer=...")
        tokenizer = recorded["source"]
    tok, source = resolve_tokenizer(tokenizer)
    if tok is not None and check_tokenizer and recorded.get("vq_sha256"):
        from toklip.weights.identity import state_dict_sha256

        if state_dict_sha256(getattr(tok, "vq", tok)) != recorded["vq_sha256"]:
            raise ConfigError(
                f"{path} was trained on the codes of another VQ (weights sha256 {recorded['vq_sha256'][:12]}...) than "
                f"this tokenizer's: its samples would decode to noise. Pass the tokenizer it was trained with, or "
                "check_tokenizer=False if you know better")
    name = record.get("generator") or "gpt-b"
    encoder = _caption_encoder_for(path, record.get("caption_encoder"), caption_encoder)  # loaded before the meta
    with torch.device("meta"):  # device context below, which would otherwise hold its weights too
        gen = build_generator(name, tokenizer=tok, fusion=fusion, feature_layer=record.get("feature_layer"),
                              caption_encoder=encoder, **cfg.to_dict())
    state = read_checkpoint(path / WEIGHTS_FILE)
    load_state_dict_strict(gen, state, source=str(path / WEIGHTS_FILE), assign=True)
    if not materialize_missing(gen):  # pragma: no cover
        raise CheckpointError(f"could not materialise the generator of {path}")
    gen.to(device=device, dtype=dtype)
    if tok is not None and source is not None:
        gen.toklip_meta["tokenizer"]["source"] = source
    return gen.eval()


def _check_sizes(gen: nn.Module, tok: Any, where: str) -> None:
    for key, value in tokenizer_sizes(tok).items():
        have = getattr(gen.config, key)
        if have != value:
            raise ConfigError(f"{where}: the generator's {key} is {have}, the tokenizer's {value}: they do not belong "
                              "together")
