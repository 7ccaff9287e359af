"""The identity of a model's weights, whatever file (or random seed) they came from: what token manifests and
generator configs record, so tokens are never decoded (or read) by a different VQ without a loud error."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name): the identity of the weights,
    whatever file (or random seed) they came from."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
