"""Loading Cosmos DI weights: the released TorchScript files (read, never run), or plain state dicts.

Accepted ``checkpoint`` values:

- a release folder (a Hugging Face snapshot): ``encoder.jit`` + ``decoder.jit``, else ``autoencoder.jit``,
  else ``model.safetensors``;
- one file: ``autoencoder.jit`` (everything), a ``.safetensors``/``.pt`` state dict (also wrapped in
  ``{"model": ...}``/``{"state_dict": ...}``), or
- several files whose weights together cover the model, e.g. ``["encoder.jit", "decoder.jit"]``.

The union must cover every weight (strict): ``encoder.*`` and ``quant_conv.*`` come from ``encoder.jit``,
``post_quant_conv.*`` and ``decoder.*`` from ``decoder.jit``. The archives also list non-persistent buffers
(patcher wavelets, FSQ level tables); those are dropped. Released weights are bfloat16 and are cast to the
model's dtype on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from toklip.weights import load_state_dict_strict, read_checkpoint, unwrap_state_dict
from toklip import CheckpointError

from toklip_plugin_cosmos.torchscript import is_torchscript_archive, read_torchscript_state

RELEASE_SETS = (("encoder.jit", "decoder.jit"), ("autoencoder.jit",), ("model.safetensors",))


def _is_buffer_only_key(key: str) -> bool:
    """Keys the TorchScript archives record for upstream's non-persistent buffers (no weights)."""
    parts = key.split(".")
    return parts[0] in {"quantizer", "inv_quant"} or "patcher" in parts or "unpatcher" in parts


def resolve_files(checkpoint: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files a ``checkpoint`` argument names (see module docstring)."""
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            for names in RELEASE_SETS:
                if all((path / n).is_file() for n in names):
                    return [path / n for n in names]
            found = sorted(p.name for p in path.iterdir())[:12]
            raise CheckpointError(
                f"{path} holds no Cosmos weights: expected encoder.jit + decoder.jit, autoencoder.jit or "
                f"model.safetensors (found {found})"
            )
        return [path]
    files = [Path(p).expanduser() for p in checkpoint]
    if not files:
        raise CheckpointError("checkpoint=[] names no file")
    return files


def _plain_state(obj: object) -> dict[str, Tensor]:
    """A state dict, unwrapped from ``{"model"|"state_dict"|"ema": ...}`` and a ``module.``/``network.`` prefix."""
    sd = unwrap_state_dict(obj)
    if all(k.startswith("network.") for k in sd):
        sd = {k[len("network."):]: v for k, v in sd.items()}
    return sd


def read_weights(path: Path) -> dict[str, Tensor]:
    """Weights of one file (TorchScript archive or state dict), non-persistent buffers dropped."""
    if not path.is_file():
        raise CheckpointError(f"Cosmos checkpoint {str(path)!r} does not exist or is not a file")
    if is_torchscript_archive(path):
        state = read_torchscript_state(path)
    else:
        state = _plain_state(read_checkpoint(path))
    return {k: v for k, v in state.items() if not _is_buffer_only_key(k)}


def load_cosmos_weights(module: nn.Module, checkpoint: str | Path | Sequence[str | Path]) -> list[Path]:
    """Load ``checkpoint`` strictly into ``module``; returns the files read."""
    files = resolve_files(checkpoint)
    state: dict[str, Tensor] = {}
    for path in files:
        for key, value in read_weights(path).items():
            if key in state and not torch.equal(state[key].float(), value.float()):
                raise CheckpointError(f"{key} differs between the files {[str(f) for f in files]}")
            state[key] = value
    load_state_dict_strict(module, state, source=" + ".join(str(f) for f in files))
    return files
