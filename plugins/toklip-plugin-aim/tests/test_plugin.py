"""The plugin registers, conforms to the encoder contract, and composes into a (text-less) TokLIP."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import toklip
# The contract every component meets, from toklip's kit (the kind's conformance check on each *-test name,
# a meta-device build of every name, full size included): the same tests toklip runs on its builtins.
from toklip.testing.contract import test_builds_on_meta, test_conforms  # noqa: F401


def test_components_are_listed_with_their_weights():
    names = toklip.list_components("encoder", "aimv2*")
    assert "aimv2-large-patch14-224" in names and "aimv2-3b-patch14-448" in names and "aimv2-test" in names
    spec = toklip.get_spec("encoder", "aimv2-large")
    assert spec.name == "aimv2-large-patch14-224"
    assert spec.pretrained["apple_pt"].hf_hub_id == "apple/aimv2-large-patch14-224"


def test_composed_model_has_no_text_side():
    model = toklip.build(vq="llamagen-test", encoder="aimv2-test")
    assert model.image_size == 64 and model.text is None
    assert model.teacher_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    with torch.no_grad():
        out = model.tokenize(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert out.pooled.shape == (1, 64)
    with pytest.raises(toklip.ConfigError, match="no text tower"):
        model.encode_text(["a cat"])


def test_full_size_architecture_on_meta():
    model = toklip.build(vq="llamagen", encoder="aimv2-large-patch14-224", device="meta")
    assert model.grid == (16, 16) and model.image_size == 256  # 224 / 14 = 16 patches -> 16 x 16 VQ-16 tokens
    n_blocks = len(model.token_encoder.blocks)
    assert n_blocks == 24 and model.token_encoder.width == 1024


def test_plugin_module_is_import_light():
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys, toklip_plugin_aim.plugin; assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)


def test_unknown_model():
    from toklip_plugin_aim.encoder import AIMv2Encoder

    with pytest.raises(toklip.ConfigError, match="unknown AIMv2 model"):
        AIMv2Encoder("vit_base_patch16_224")


def test_installed_entry_point_if_installed():
    try:
        dist = importlib.metadata.distribution("toklip-plugin-aim")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("toklip-plugin-aim is not installed (tests run from the source tree)")
    eps = [e for e in dist.entry_points if e.group == "toklip"]
    assert [e.value for e in eps] == ["toklip_plugin_aim.plugin"]
