"""The plugin as toklip sees it: registration, the conformance contract, composition, install hints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import toklip
from toklip import ConfigError, InputError, UnknownComponentError
# The contract every component meets, from toklip's kit (the kind's conformance check on each *-test name,
# a meta-device build of every name, full size included): the same tests toklip runs on its builtins.
from toklip.testing.contract import test_builds_on_meta, test_conforms  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["magvit2", "magvit2-128", "magvit2-pretrain-16384", "magvit2-pretrain-262144", "magvit2-test"]


def test_components_are_registered_with_weights_and_aliases():
    assert toklip.list_components("vq", "magvit2*") == NAMES
    for alias in ("open-magvit2", "magvit2-256"):
        assert toklip.get_spec("vq", alias).name == "magvit2"
    weights = toklip.get_spec("vq", "magvit2").pretrained["imagenet"]
    assert weights.hf_hub_id == "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution"
    assert weights.file == "imagenet_256_L.ckpt"
    for name in NAMES[:-1]:
        assert toklip.get_spec("vq", name).pretrained, f"{name} must name its published weights"


@pytest.mark.parametrize(
    "name, bits, down", [("magvit2", 18, 16), ("magvit2-128", 18, 8), ("magvit2-pretrain-16384", 14, 16)]
)
def test_full_size_variants_have_the_official_shapes(name, bits, down):
    with torch.device("meta"):
        vq = toklip.get_spec("vq", name).create()
    assert (vq.code_dim, vq.vocab_size, vq.downsample) == (bits, 2**bits, down)
    if name == "magvit2":  # 49.75M + 65.38M parameters, as the official 256_L model
        assert round(sum(p.numel() for p in vq.encoder.parameters()) / 1e6, 2) == 49.75
        assert round(sum(p.numel() for p in vq.decoder.parameters()) / 1e6, 2) == 65.38


def test_builds_with_the_siglip2_test_encoder():
    model = toklip.build(vq="magvit2-test", encoder="siglip2-test")
    images = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    with torch.no_grad():
        out = model.tokenize(images)
    assert out.codes.shape[-1] == 10 and set(out.codes.unique().tolist()) <= {-1.0, 1.0}
    assert out.pooled.shape[0] == 2 and torch.isfinite(out.pooled).all()


def test_codebook_projector_refuses_the_2_18_vocabulary_with_its_memory_cost():
    """Full-size MAGVIT2 (2^18 codes) x SigLIP2 So400M (width 1152), built on the meta device."""
    with pytest.raises(ConfigError) as err:
        toklip.build(vq="magvit2", encoder="siglip2", projector="codebook", device="meta")
    text = str(err.value)
    assert "262,144 x 1152 = 301,989,888 parameters" in text
    assert "1.12 GiB in fp32" in text and "limit is 1.00 GiB" in text
    assert "projector='mlp'" in text and "'max_bytes': 1207959552" in text
    # and the default (mlp) projector takes the 18-bit codes
    model = toklip.build(vq="magvit2", encoder="siglip2", device="meta")
    assert model.projector.fc1.in_features == 18


def test_decoding_a_single_token_grid_is_a_clear_error():
    vq = toklip.get_spec("vq", "magvit2-test").create()
    with pytest.raises(InputError, match="at least 2 tokens"):
        vq.decode(torch.zeros(1, 1, 1, dtype=torch.long))


def test_pretrained_without_published_weights():
    with pytest.raises(toklip.WeightsNotFoundError, match="no published weights"):
        toklip.get_spec("vq", "magvit2-test").create(pretrained=True)


def test_without_the_plugin_the_error_is_an_install_hint():
    from toklip.core.host import PluginHost, use_host

    with use_host(PluginHost(autoload=False, strict=True)):
        with pytest.raises(UnknownComponentError) as err:
            toklip.build(vq="magvit2", encoder="siglip2-test")
    assert "pip install toklip-plugin-magvit2" in str(err.value)


def test_plugin_module_is_import_light():
    code = "import sys, toklip_plugin_magvit2.plugin; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_entry_point_is_declared():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the backport, from the test extra
        import tomli as tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["toklip"] == {"magvit2": "toklip_plugin_magvit2.plugin"}


def test_installed_distribution_is_discovered(monkeypatch):
    """After `pip install plugins/toklip-plugin-magvit2`, toklip's own discovery finds the components."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("toklip-plugin-magvit2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("toklip-plugin-magvit2 is not installed (pip install -e plugins/toklip-plugin-magvit2)")
    from toklip.core.host import PluginHost, use_host

    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", "magvit2")
    host = PluginHost(autoload=True, strict=True)
    with use_host(host):
        assert "magvit2-test" in toklip.list_components("vq")
        record = next(r for r in host.records() if r.name == "magvit2")
    assert record.status == "ok" and record.dist == "toklip-plugin-magvit2"
