"""toklip: TokLIP-style visual tokenizers — discrete VQ tokens and CLIP-level semantic features.

`import toklip` is cheap: torch and the model code load on first use of `build` and friends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toklip.core.lazy import lazy_getattr
from toklip._version import PLUGIN_API, __version__
from toklip.core.errors import (
    AmbiguousComponentError,
    CheckpointError,
    ConfigError,
    InputError,
    InvalidComponentSpecError,
    MissingDependencyError,
    PluginLoadError,
    TokLIPError,
    UnknownComponentError,
    WeightsNotFoundError,
)
from toklip.core.hookspecs import hookimpl
from toklip.core.host import get_host, get_spec, list_components, temp_plugin, use_host
from toklip.core.runtime import register, unregister

_LAZY = {
    "data": "toklip.data",  # toklip.data.TokenDataset after a plain `import toklip`
    "build": "toklip.model.factory:build",
    "list_presets": "toklip.model.factory:list_presets",
    "load": "toklip.model.loading:load",
    "load_official": "toklip.model.loading:load_official",
    "from_pretrained": "toklip.model.loading:from_pretrained",
    "TokLIP": "toklip.model.toklip:TokLIP",
    "TokLIPConfig": "toklip.model.config:TokLIPConfig",
    "TokenizeOutput": "toklip.model.toklip:TokenizeOutput",
    "attention_backend": "toklip.layers.attention:attention_backend",
    "build_generator": "toklip.gen.generator:build_generator",
    "load_generator": "toklip.gen.generator:load_generator",
    "build_vlm": "toklip.vlm.model:build_vlm",
    "load_vlm": "toklip.vlm.saving:load_vlm",
    "VLM": "toklip.vlm.model:VLM",
}

__all__ = [
    "PLUGIN_API",
    "AmbiguousComponentError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "InvalidComponentSpecError",
    "MissingDependencyError",
    "PluginLoadError",
    "TokLIPError",
    "UnknownComponentError",
    "WeightsNotFoundError",
    "__version__",
    "get_host",
    "get_spec",
    "hookimpl",
    "list_components",
    "register",
    "temp_plugin",
    "unregister",
    "use_host",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from toklip.gen.generator import build_generator, load_generator
    from toklip.vlm.model import VLM, build_vlm
    from toklip.vlm.saving import load_vlm
    from toklip.layers.attention import attention_backend
    from toklip.model.factory import build, list_presets
    from toklip.model.loading import from_pretrained, load, load_official
    from toklip.model.config import TokLIPConfig
    from toklip.model.toklip import TokenizeOutput, TokLIP
