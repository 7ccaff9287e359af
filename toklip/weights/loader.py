"""``--model`` to a loaded model (``toklip serve``, ``toklip eval``): a preset name, a config.json, a save_pretrained
folder, or a checkpoint file.

``--weights FILE`` loads a checkpoint (official TokLIP or toklip safetensors) into the architecture that a
preset or config.json describes; a checkpoint given as ``--model`` has its size inferred (TokLIP-S/L).

The VQ tokenizer stays in float32 whatever ``--dtype`` says: it is small, and its codebook lookup and
decoder are where reduced precision would show in the indices and the reconstructions.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from toklip.core.errors import ConfigError, WeightsNotFoundError

log = logging.getLogger("toklip")
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, tried when no such local path exists

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """'auto' is the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device torch knows (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA, but torch sees no GPU; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    source: str,
    *,
    weights: str | None = None,
    random_weights: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> Any:
    """Build or load the model to serve or evaluate, on ``device`` in ``dtype`` (VQ in float32), in eval mode."""
    import toklip
    from toklip.core.host import get_host

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source).expanduser()
    if path.is_dir():
        if weights:
            raise ConfigError(f"{source} is a save_pretrained folder with its own weights; drop --weights")
        model = toklip.from_pretrained(path)
    elif path.is_file() and path.suffix == ".json":
        model = toklip.build(path, pretrained=weights or False)
    elif path.is_file():
        if weights:
            raise ConfigError(f"--model {source} is already a checkpoint; to load --weights into an architecture, "
                              "pass the architecture (a preset name or config.json) as --model")
        try:
            model = toklip.load_official(path)  # size inferred from the checkpoint
        except ConfigError as e:
            hint = f"describe the model with --model CONFIG.json --weights {source}"
            raise ConfigError(f"{e}\n  {hint}") from e
    elif not path.suffix and HUB_REPO_ID.fullmatch(source):
        if weights:
            raise ConfigError(f"{source} is a hub repo with its own weights; drop --weights")
        try:
            model = toklip.from_pretrained(source)  # a save_pretrained repo on the Hugging Face hub (or its cache)
        except WeightsNotFoundError as e:
            raise ConfigError(f"--model {source!r} does not exist locally, and as a hub repo id: {e}") from e
    elif path.suffix or "/" in source or "\\" in source:
        raise ConfigError(f"--model {source!r} does not exist (expected a preset name, a config.json, "
                          "a save_pretrained folder or hub repo id, or a checkpoint file)")
    else:
        spec = get_host().get("preset", source)  # UnknownComponentError with did-you-mean
        pretrained: bool | str = weights or (bool(spec.pretrained) and not random_weights)
        if not pretrained:
            log.warning("preset %s has random weights (%s)", spec.name,
                        "--random-weights" if random_weights else "it has no released weights")
        model = toklip.build(source, pretrained=pretrained)
    model = model.to(device=dev, dtype=dt)
    model.vq.float()
    return model.eval()

