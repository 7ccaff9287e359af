"""Registry semantics, the exact error messages users see, and the config JSON format."""

from __future__ import annotations

import json

import pytest

import toklip
from toklip.model.config import TokLIPConfig
from toklip.core.errors import (
    ConfigError,
    InvalidComponentSpecError,
    MissingDependencyError,
    UnknownComponentError,
)
from toklip.core.registry import ComponentSpec, Provider, Registry, make_spec

BUILTIN = Provider("builtin", "toklip", "0")


def spec(name, **kw):
    return make_spec("vq", name, "x.y:z", BUILTIN, **kw)


def test_registry_add_alias_listing_and_override():
    reg = Registry("vq")
    reg.add(spec("alpha-2", aliases=("a2",)))
    reg.add(spec("alpha-10"))
    reg.add(spec("beta"))
    assert reg.names() == ["alpha-2", "alpha-10", "beta"]  # natural sort
    assert reg.names("alpha*") == ["alpha-2", "alpha-10"]
    assert reg.names("*", exclude=("beta",)) == ["alpha-2", "alpha-10"]
    assert reg.find("a2").name == "alpha-2"
    assert "a2" in reg and "nope" not in reg
    with reg.override(spec("beta", summary="patched")):
        assert reg.find("beta").summary == "patched"
    assert reg.find("beta").summary == ""


def test_duplicates_are_conflicts_not_last_wins():
    reg = Registry("vq")
    reg.add(spec("same"))
    reg.add(make_spec("vq", "same", "other:thing", Provider("p", "toklip-plugin-p", "1.0")))
    with pytest.raises(toklip.AmbiguousComponentError, match="toklip-plugin-p 1.0"):
        reg.find("same")


@pytest.mark.parametrize("bad", ["Upper", "has space", "", "-lead", "semi;colon"])
def test_invalid_names_are_refused(bad):
    with pytest.raises(InvalidComponentSpecError, match="invalid VQ tokenizer name"):
        spec(bad)


def test_factory_strings_must_name_an_attribute():
    with pytest.raises(InvalidComponentSpecError, match="package.module:attr"):
        make_spec("vq", "x", "no_colon_here", BUILTIN)
    with pytest.raises(InvalidComponentSpecError, match="unknown keyword"):
        make_spec("vq", "x", "a:b", BUILTIN, colour="red")


def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownComponentError) as e:
        toklip.get_spec("vq", "llamagn")
    text = str(e.value)
    assert text.startswith("unknown VQ tokenizer 'llamagn'. Did you mean 'llamagen'")
    assert "available vq: llamagen" in text and "(toklip list vq)" in text
    assert isinstance(e.value, KeyError)


def test_wrong_kind_names_the_right_kind():
    with pytest.raises(UnknownComponentError) as e:
        toklip.build(vq="siglip2", encoder="siglip2-test")
    assert str(e.value).startswith("'siglip2' is an encoder, not a VQ tokenizer. Did you mean encoder='siglip2'?")


def test_first_party_plugin_install_hint():
    with pytest.raises(UnknownComponentError) as e:
        toklip.build(vq="magvit2", encoder="siglip2-test")
    text = str(e.value)
    assert "first-party plugin toklip-plugin-magvit2, which is not installed" in text
    assert "pip install toklip-plugin-magvit2" in text


def test_missing_dependency_names_the_pip_package_and_extra():
    s = toklip.get_spec("attn_backend", "flash_attn")
    assert s.status().startswith("missing: flash-attn>=2.6")
    with pytest.raises(MissingDependencyError) as e:
        toklip.build("toklip-test", attn_backend="flash_attn")
    assert 'pip install "toklip[flash]"' in str(e.value)
    assert isinstance(e.value, ImportError)


def test_config_json_round_trip(tmp_path):
    model = toklip.build("toklip-test")
    path = tmp_path / "config.json"
    model.config.to_json(path)
    again = TokLIPConfig.from_json(path)
    assert again.to_dict() == model.config.to_dict()
    assert json.loads(path.read_text())["schema_version"] == 1


def test_config_errors_are_specific():
    with pytest.raises(ConfigError, match="'vqq' \\(did you mean 'vq'\\?\\)"):
        TokLIPConfig.from_dict({"vqq": "llamagen", "encoder": "siglip2"})
    with pytest.raises(ConfigError, match="missing 'vq'"):
        TokLIPConfig.from_dict({"encoder": "siglip2"})
    with pytest.raises(ConfigError, match="newer than this toklip"):
        TokLIPConfig.from_dict({"vq": "llamagen", "encoder": "siglip2", "schema_version": 99})
    with pytest.raises(ConfigError, match="image_size must be a positive integer"):
        TokLIPConfig.from_dict({"vq": "llamagen", "encoder": "siglip2", "image_size": "big"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        TokLIPConfig.from_json("{not json")


def test_preset_overrides_merge_component_kwargs():
    model = toklip.build("toklip-test", projector={"hidden": 48}, attention="bidirectional")
    assert model.projector.hidden == 48
    assert model.config.projector.to_json() == {"name": "mlp", "hidden": 48}
    assert model.attention_mode.name == "bidirectional"


def test_image_size_needs_a_multiple_of_the_downsample():
    with pytest.raises(ConfigError, match="multiple of the VQ downsample factor 8"):
        toklip.build("toklip-test", image_size=60)


def test_image_size_change_resizes_position_embeddings():
    model = toklip.build("toklip-test", image_size=96)
    assert model.grid == (12, 12) and model.token_encoder.pos_embed.shape == (1, 144, 64)


def test_image_size_too_far_from_the_encoder_grid_is_refused():
    with pytest.raises(ConfigError, match="too far from the encoder's patch grid"):
        toklip.build("toklip-test", image_size=8 * 80)


def test_list_components_all_kinds():
    everything = toklip.list_components()
    assert set(everything) == {"vq", "encoder", "projector", "attention", "attn_backend", "fusion", "generator", "vlm_projector", "preset"}
    assert {"toklip-s-256", "toklip-l-384", "toklip-test"} <= set(everything["preset"])
    assert isinstance(toklip.get_spec("vq", "llamagen"), ComponentSpec)
