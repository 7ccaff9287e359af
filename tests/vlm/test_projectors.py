"""The vlm_projector kind: builtins with LLaVA's layout, the conformance check, and a plugin's projector in a VLM."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import toklip
from toklip.vlm.model import build_vlm
from toklip.vlm.projectors import build_vlm_projector, check_vlm_projector, list_vlm_projectors


def test_builtins_follow_llava():
    assert {"linear", "mlp2x_gelu", "mlp3x_gelu"} <= set(list_vlm_projectors())
    mlp = build_vlm_projector("mlp2x_gelu", 8, 16)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear"]
    assert set(mlp.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # LLaVA's mm_projector keys
    assert isinstance(build_vlm_projector("linear", 8, 16), nn.Linear)
    assert len(build_vlm_projector("mlp3x_gelu", 8, 16)) == 5
    with pytest.raises(toklip.ConfigError, match="in_dim must be a positive integer"):
        build_vlm_projector("linear", 0, 16)


@pytest.mark.parametrize("name", ["mlp2x_gelu-test", "mlp3x_gelu-test", "linear-test"])
def test_builtins_pass_the_conformance_check(name):
    check_vlm_projector(name)


def test_the_check_catches_a_broken_projector():
    class Frozen(nn.Module):
        def __init__(self, in_dim, out_dim):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(in_dim, out_dim), requires_grad=False)

        def forward(self, x):
            return x @ self.w

    toklip.register("vlm_projector", "frozen-test", Frozen)
    with pytest.raises(AssertionError, match="no trainable parameters"):
        check_vlm_projector("frozen-test")


def test_a_plugin_projector_builds_into_a_vlm(llm_dir):
    class Gated(nn.Module):
        def __init__(self, in_dim, out_dim, scale=1.0):
            super().__init__()
            self.proj, self.gate, self.scale = nn.Linear(in_dim, out_dim), nn.Parameter(torch.zeros(1)), scale

        def forward(self, x):
            return self.proj(x) * torch.sigmoid(self.gate) * self.scale

    toklip.register("vlm_projector", "gated", Gated)
    vlm = build_vlm(tokenizer="toklip-test", llm=llm_dir, projector="gated", projector_kwargs={"scale": 2.0})
    assert isinstance(vlm.projector, Gated) and vlm.projector.scale == 2.0
    assert vlm.config.projector == "gated" and vlm.config.projector_kwargs == {"scale": 2.0}
    with pytest.raises(toklip.ConfigError, match="does not take these options"):
        build_vlm(tokenizer="toklip-test", llm=llm_dir, projector="linear", projector_kwargs={"scale": 2.0})


def test_importing_toklip_vlm_loads_no_torch():
    code = "import sys, toklip.vlm; print('torch' in sys.modules, callable(toklip.vlm.__getattr__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_a_plugin_registers_projectors_through_the_hook(llm_dir):
    class Plugin:
        @toklip.hookimpl
        def register_vlm_projectors(self, register):
            register("wide-mlp", "toklip.vlm.projectors:mlp_gelu", aliases=("wide-mlp-test",), defaults={"depth": 4},
                     summary="four linear layers")

    with toklip.temp_plugin(Plugin(), name="acme-projectors"):
        spec = toklip.get_spec("vlm_projector", "wide-mlp")
        assert spec.provider.plugin == "acme-projectors" and "wide-mlp" in list_vlm_projectors()
        check_vlm_projector("wide-mlp-test")
        vlm = build_vlm(tokenizer="toklip-test", llm=llm_dir, projector="wide-mlp")
        assert len(vlm.projector) == 7  # Linear, then 3 x (GELU, Linear)
    assert "wide-mlp" not in list_vlm_projectors()
