"""First-party plugins that may not be installed, so an unknown name can come with an install hint."""

from __future__ import annotations

import fnmatch

# (kind, name pattern) -> (distribution, where to install it from in this repository)
KNOWN: dict[tuple[str, str], str] = {
    ("vq", "magvit2*"): "toklip-plugin-magvit2",
    ("vq", "open-magvit2*"): "toklip-plugin-magvit2",
    ("vq", "cosmos*"): "toklip-plugin-cosmos",
    ("encoder", "aimv2*"): "toklip-plugin-aim",
    ("encoder", "aim*"): "toklip-plugin-aim",
    ("attn_backend", "triton*"): "toklip-kernels",
    ("projector", "mlp-triton*"): "toklip-kernels",
    ("projector", "fused*"): "toklip-kernels",
}

LOCAL_PATHS = {
    "toklip-plugin-magvit2": "plugins/toklip-plugin-magvit2",
    "toklip-plugin-cosmos": "plugins/toklip-plugin-cosmos",
    "toklip-plugin-aim": "plugins/toklip-plugin-aim",
    "toklip-kernels": "kernels",
}


def provider_of(kind: str, name: str) -> str | None:
    for (k, pattern), dist in KNOWN.items():
        if k == kind and fnmatch.fnmatchcase(name, pattern):
            return dist
    return None


def install_hint(dist: str) -> str:
    local = LOCAL_PATHS.get(dist)
    tail = f"   (from a toklip checkout: pip install -e {local})" if local else ""
    return f"pip install {dist}{tail}"
