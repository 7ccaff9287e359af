"""The plugin as toklip sees it: registration, the conformance contract, composition, install hints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import toklip
from toklip import UnknownComponentError
# The contract every component meets, from toklip's kit (the kind's conformance check on each *-test name,
# a meta-device build of every name, full size included): the same tests toklip runs on its builtins.
from toklip.testing.contract import test_builds_on_meta, test_conforms  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cosmos-di8x8", "cosmos-di8x8-360p", "cosmos-di16x16", "cosmos-di16x16-360p", "cosmos-test"]


def test_components_are_registered_with_weights_and_aliases():
    assert toklip.list_components("vq", "cosmos*") == NAMES
    assert toklip.get_spec("vq", "cosmos").name == "cosmos-di16x16"
    weights = toklip.get_spec("vq", "cosmos-di8x8").pretrained["cosmos-0.1"]
    assert (weights.hf_hub_id, weights.file) == ("nvidia/Cosmos-0.1-Tokenizer-DI8x8", "autoencoder.jit")
    for name in NAMES[:-1]:
        assert toklip.get_spec("vq", name).pretrained, f"{name} must name its published weights"


@pytest.mark.parametrize(
    "name, down, encoder_m, decoder_m",
    [
        ("cosmos-di8x8", 8, 32.26, 46.74),
        ("cosmos-di16x16", 16, 34.62, 49.10),
        ("cosmos-di8x8-360p", 8, 34.58, 49.02),
        ("cosmos-di16x16-360p", 16, 36.94, 49.61),
    ],
)
def test_full_size_variants_have_the_official_parameter_counts(name, down, encoder_m, decoder_m):
    with torch.device("meta"):
        vq = toklip.get_spec("vq", name).create()
    count = lambda *mods: round(sum(p.numel() for m in mods for p in m.parameters()) / 1e6, 2)  # noqa: E731
    assert (vq.code_dim, vq.vocab_size, vq.downsample) == (6, 64000, down)
    assert count(vq.encoder, vq.quant_conv) == encoder_m
    assert count(vq.post_quant_conv, vq.decoder) == decoder_m


def test_builds_with_the_siglip2_test_encoder():
    model = toklip.build(vq="cosmos-test", encoder="siglip2-test")
    images = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    with torch.no_grad():
        out = model.tokenize(images)
        recon = model.decode(out.indices)
    assert out.codes.shape[-1] == 6 and out.codes.dtype == torch.float32
    assert out.pooled.shape[0] == 2 and torch.isfinite(out.pooled).all()
    assert recon.shape == images.shape


def test_pretrained_without_published_weights():
    with pytest.raises(toklip.WeightsNotFoundError, match="no published weights"):
        toklip.get_spec("vq", "cosmos-test").create(pretrained=True)


def test_without_the_plugin_the_error_is_an_install_hint():
    from toklip.core.host import PluginHost, use_host

    with use_host(PluginHost(autoload=False, strict=True)):
        with pytest.raises(UnknownComponentError) as err:
            toklip.build(vq="cosmos", encoder="siglip2-test")
    assert "pip install toklip-plugin-cosmos" in str(err.value)


def test_plugin_module_is_import_light():
    code = "import sys, toklip_plugin_cosmos.plugin; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_entry_point_is_declared():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the backport, from the test extra
        import tomli as tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["toklip"] == {"cosmos": "toklip_plugin_cosmos.plugin"}


def test_installed_distribution_is_discovered(monkeypatch):
    import importlib.metadata

    try:
        importlib.metadata.distribution("toklip-plugin-cosmos")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("toklip-plugin-cosmos is not installed (pip install -e plugins/toklip-plugin-cosmos)")
    from toklip.core.host import PluginHost, use_host

    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", "cosmos")
    host = PluginHost(autoload=True, strict=True)
    with use_host(host):
        assert "cosmos-test" in toklip.list_components("vq")
        record = next(r for r in host.records() if r.name == "cosmos")
    assert record.status == "ok" and record.dist == "toklip-plugin-cosmos"
