import importlib.metadata

import pytest
import torch

import toklip
from toklip.testing.conformance import check_vq_tokenizer

NAME = "{{ cookiecutter.component_name }}"


def test_components_are_registered():
    assert toklip.list_components("vq", NAME + "*") == [NAME, NAME + "-test"]


def test_conformance():
    """Shapes, dtypes, determinism, state-dict round trip, clear errors, and use inside a TokLIP model."""
    check_vq_tokenizer(NAME + "-test")


def test_builds_into_a_toklip_model():
    model = toklip.build(vq=NAME + "-test", encoder="siglip2-test")
    images = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    with torch.no_grad():
        out = model.tokenize(images)
    assert out.pooled.shape[0] == 2 and torch.isfinite(out.pooled).all()


def test_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    vq = toklip.get_spec("vq", NAME + "-test").create()
    save_file(vq.state_dict(), str(tmp_path / "model.safetensors"))
    again = toklip.get_spec("vq", NAME + "-test").create(checkpoint=str(tmp_path / "model.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(vq.state_dict().values(), again.state_dict().values()))


def test_plugin_is_installed(monkeypatch):
    """After `pip install`, toklip's entry-point discovery finds the plugin (run the tests after installing)."""
    dist = importlib.metadata.distribution("{{ cookiecutter.dist_name }}")
    assert any(ep.group == "toklip" for ep in dist.entry_points)
    from toklip.core.host import PluginHost, use_host

    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", NAME)
    host = PluginHost(autoload=True, strict=True)
    with use_host(host):
        assert NAME + "-test" in toklip.list_components("vq")
    record = next(r for r in host.records() if r.name == NAME)
    assert record.status == "ok" and record.dist == "{{ cookiecutter.dist_name }}"
