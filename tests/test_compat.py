"""Issue 14: the module paths the plugin docs named before 0.2 keep working, warn, and are the new modules."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MOVED = [
    ("toklip.vq_base", "toklip.layers.vq", "VQTokenizerBase"),
    ("toklip.protocols", "toklip.core.protocols", "VQEncoding"),
    ("toklip.io", "toklip.core.io", "atomic_write"),
    ("toklip.hub", "toklip.weights.hub", "resolve_component_weights"),
    ("toklip.client", "toklip.serve.client", "Client"),
]


@pytest.mark.parametrize("old,new,name", MOVED)
def test_old_path_warns_and_is_the_new_module(old, new, name):
    # a fresh interpreter: the warning fires on first import only
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('warned', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("warned") and new in out.stdout, out.stdout + out.stderr
    module = importlib.import_module(old)
    assert module is importlib.import_module(new) and hasattr(module, name)


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
