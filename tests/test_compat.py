"""Issue 14: the module paths the plugin docs named before 0.2 keep working, warn, and are the new modules."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

MOVED = [
    ("toklip.vq_base", "toklip.layers.vq", "VQTokenizerBase"),
    ("toklip.protocols", "toklip.core.protocols", "VQEncoding"),
    ("toklip.io", "toklip.core.io", "atomic_write"),
    ("toklip.hub", "toklip.weights.hub", "resolve_component_weights"),
    ("toklip.client", "toklip.serve.client", "Client"),
    ("toklip.errors", "toklip.core.errors", "ConfigError"),
    ("toklip.registry", "toklip.core.registry", "ComponentSpec"),
    ("toklip.plugins", "toklip.core.host", "PluginHost"),
    ("toklip.hookspecs", "toklip.core.hookspecs", "hookimpl"),
    ("toklip.hookdocs", "toklip.core.hookdocs", "render"),
    ("toklip.known_plugins", "toklip.core.known_plugins", None),
    ("toklip._lazy", "toklip.core.lazy", "lazy_getattr"),
    ("toklip.factory", "toklip.model.factory", "build"),
    ("toklip.config", "toklip.model.config", "TokLIPConfig"),
    ("toklip.loading", "toklip.model.loading", "load"),
    ("toklip.official_config", "toklip.model.official_config", None),
    ("toklip.attention", "toklip.layers.attention", "BackendAttention"),
    ("toklip.model.attention", "toklip.layers.attention", "BackendAttention"),
    ("toklip.model.token_encoder", "toklip.layers.token_encoder", "TokenEncoder"),
    ("toklip.pretrained", "toklip.weights.saved", None),
    ("toklip.preprocess", "toklip.data.preprocess", "load_image"),
    ("toklip.cli_builtin", "toklip.cli.builtin", None),
    ("toklip.demo", "toklip.cli.demo", None),
]
SHIMS = {old for old, _, _ in MOVED} | {"toklip.checkpoints"}
ROOT = Path(__file__).resolve().parents[1]


def test_every_old_path_warns_and_is_the_new_module():
    # one fresh interpreter: each warning fires on the module's first import only
    code = ("import importlib, json, sys, warnings\n"
            f"moved = {[(o, n) for o, n, _ in MOVED]!r}\nout = {{}}\n"
            "for old, new in moved:\n"
            "    with warnings.catch_warnings(record=True) as seen:\n"
            "        warnings.simplefilter('always')\n"
            "        importlib.import_module(old)\n"
            "    out[old] = [str(w.message) for w in seen if w.category is DeprecationWarning and new in str(w.message)]\n"
            "print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    warned = json.loads(res.stdout.strip().splitlines()[-1])
    assert [old for old, msgs in warned.items() if not msgs] == [], res.stderr
    for old, new, name in MOVED:
        module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert name is None or hasattr(module, name), (old, name)


def test_no_shipped_code_imports_an_old_path():
    """toklip, the kernels and the plugins use the new homes, so a user never sees our own deprecation warnings."""
    pattern = re.compile(r"^\s*(?:from|import)\s+(" + "|".join(re.escape(m) for m in SHIMS) + r")(?:\s|$)", re.M)
    roots = [ROOT / "toklip", ROOT / "kernels" / "src", *(ROOT / "plugins").glob("toklip-plugin-*/src")]
    offenders = []
    for root in roots:
        for path in root.rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.removesuffix(".py").replace("/", ".") in SHIMS:
                continue
            offenders += [f"{rel}: {m.group(0).strip()}" for m in pattern.finditer(path.read_text())]
    assert offenders == []


def test_checkpoints_path_keeps_its_names():
    with pytest.warns(DeprecationWarning, match="toklip.weights"):
        sys.modules.pop("toklip.checkpoints", None)
        checkpoints = importlib.import_module("toklip.checkpoints")
    from toklip import weights
    from toklip.model import loading

    assert checkpoints.read_checkpoint is weights.read_checkpoint
    assert checkpoints.load_state_dict_strict is weights.load_state_dict_strict
    assert checkpoints.unwrap_state_dict is weights.unwrap_state_dict
    assert checkpoints.load_official is loading.load_official


def test_hookimpl_and_testing_kit_stay_where_the_docs_say():
    import toklip
    import toklip.testing

    assert toklip.hookimpl is importlib.import_module("toklip.core.hookspecs").hookimpl
    assert hasattr(toklip.testing, "plugin_host")


def test_data_is_a_lazy_attribute_of_toklip():
    code = ("import sys, toklip; assert 'torch' not in sys.modules; "
            "print(toklip.data.TokenDataset.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "TokenDataset", out.stderr


def test_every_public_layer_name_is_what_it_says_after_its_submodules_load():
    """A submodule named like a lazy export would replace it on import (``toklip.layers.timm_vit`` once did)."""
    import pkgutil

    import toklip.layers as layers

    for info in pkgutil.iter_modules(layers.__path__):
        importlib.import_module(f"toklip.layers.{info.name}")
    for name in layers.__all__:
        value = getattr(layers, name)
        assert not isinstance(value, type(layers)), f"toklip.layers.{name} is a module, not the building block"
