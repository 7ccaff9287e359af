"""In-process registration (``toklip.register``, timm's ``@register_model``) and ``toklip plugins --check``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import toklip
from toklip.builtin.fusions import SumFusion
from toklip.cli import cli
from toklip.core.errors import InvalidComponentSpecError, UnknownComponentError
from toklip.core.host import PluginHost, use_host
from toklip.testing.plugin_check import check_plugins
from tests.test_plugins import THIRD_PARTY_MODEL, THIRD_PARTY_VQ, _install, site  # noqa: F401 - site: fixture


def test_decorator_registers_a_class_and_returns_it_unchanged():
    @toklip.register("fusion", "half-sum", aliases=("hsum",), summary="a notebook experiment")
    class HalfSum(SumFusion):
        pass

    assert isinstance(HalfSum, type) and issubclass(HalfSum, SumFusion)
    spec = toklip.get_spec("fusion", "hsum")
    assert spec.name == "half-sum" and spec.factory is HalfSum and spec.provider.describe() == "runtime"
    model = toklip.build("toklip-test", fusion="half-sum", device="meta")
    assert isinstance(model.fusion, HalfSum)


def test_call_form_and_listing_with_provider_runtime():
    spec = toklip.register("projector", "my-mlp", "toklip.builtin.projectors:MLPProjector", defaults={"hidden": 8})
    assert spec.create(code_dim=4, vocab_size=16, width=8).hidden == 8
    result = CliRunner().invoke(cli, ["list", "projector", "my-*", "--json"], catch_exceptions=False)
    assert json.loads(result.output) == [{
        "kind": "projector", "name": "my-mlp", "aliases": [], "provider": "runtime", "status": "ok", "summary": "",
        "pretrained": [],
    }]


def test_same_validation_as_plugins():
    with pytest.raises(InvalidComponentSpecError, match="invalid fusion name 'Bad Name'"):
        toklip.register("fusion", "Bad Name", SumFusion)
    with pytest.raises(InvalidComponentSpecError, match="'concat' is reserved by toklip's builtins"):
        toklip.register("fusion", "concat", SumFusion)
    with pytest.raises(InvalidComponentSpecError, match="'add' is reserved"):  # aliases too
        toklip.register("fusion", "fresh", SumFusion, aliases=("add",))
    with pytest.raises(InvalidComponentSpecError, match="did you mean 'fusion'"):
        toklip.register("fusions", "fresh", SumFusion)
    with pytest.raises(InvalidComponentSpecError, match="aliases must be a tuple"):
        toklip.register("fusion", "fresh", SumFusion, aliases="fr")


def test_a_name_an_installed_plugin_provides_is_refused(site):
    _install(site, "toklip-plugin-pixel", "tp_rt", THIRD_PARTY_VQ.format(module="tp_rt"), entry_name="pixel",
             extra_modules={"tp_rt_model": THIRD_PARTY_MODEL})
    with use_host(PluginHost(autoload=True, strict=False)):
        with pytest.raises(InvalidComponentSpecError) as e:
            toklip.register("vq", "mine", SumFusion, aliases=("pvq",))
    assert "toklip-plugin-pixel 0.1.0" in str(e.value) and "TOKLIP_DISABLE_PLUGINS=pixel" in str(e.value)


def test_registering_again_replaces_and_unregister_removes():
    toklip.register("fusion", "cell", SumFusion, aliases=("cell-alias",))
    toklip.register("fusion", "cell", SumFusion, summary="re-run of the notebook cell")
    assert toklip.get_spec("fusion", "cell").summary == "re-run of the notebook cell"
    assert "cell-alias" not in toklip.get_host().registry("fusion")
    assert toklip.unregister("fusion", "cell").name == "cell"
    assert "cell" not in toklip.list_components("fusion")
    with pytest.raises(UnknownComponentError):
        toklip.unregister("fusion", "cell")
    with pytest.raises(InvalidComponentSpecError, match="only in-process registrations"):
        toklip.unregister("fusion", "concat")


def test_registrations_belong_to_the_current_host():
    toklip.register("fusion", "host-local", SumFusion)
    with use_host(PluginHost(autoload=False)):
        assert "host-local" not in toklip.list_components("fusion")
    assert "host-local" in toklip.list_components("fusion")


BAD_VQ_MODEL = THIRD_PARTY_MODEL.replace("idx = digits[:, 0]", "idx = 1.0 * digits[:, 0]")  # float indices


def test_plugins_check_imports_factories_and_runs_conformance(site, monkeypatch):
    _install(site, "toklip-plugin-good", "tp_good", THIRD_PARTY_VQ.format(module="tp_good"), entry_name="good",
             extra_modules={"tp_good_model": THIRD_PARTY_MODEL})
    _install(site, "toklip-plugin-bad", "tp_bad", THIRD_PARTY_VQ.replace("pixelvq", "badvq").replace("pvq", "bvq").format(module="tp_bad"),
             entry_name="bad", extra_modules={"tp_bad_model": BAD_VQ_MODEL})
    src = ("import toklip\n@toklip.hookimpl\ndef register_fusions(register):\n"
           "    register('typo-fusion', 'tp_typo_pkg.modle:build')\n")
    _install(site, "toklip-plugin-typo", "tp_typo_pkg.__init__", src, entry_name="typo")
    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", "good,bad,typo")  # the machine's own plugins are not under test
    host = PluginHost(autoload=True, strict=False)
    with use_host(host):
        rows = {(r.plugin, r.name, r.check): r for r in check_plugins(host) if r.result != "skipped"}
        assert rows[("good", "pixelvq", "import")].result == "ok"
        assert rows[("good", "pixelvq-test", "conformance")].result == "ok"
        assert ("good", "pixelvq", "conformance") not in rows  # full-size names are imported, not run
        bad = rows[("bad", "badvq-test", "conformance")]
        assert bad.result == "FAIL" and "int64" in bad.detail
        typo = rows[("typo", "typo-fusion", "import")]
        assert typo.result == "FAIL" and "bug in the plugin" in typo.detail
        result = CliRunner().invoke(cli, ["plugins", "--check"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "badvq-test" in result.output and "FAIL" in result.output


def test_plugins_check_passes_when_everything_conforms(site, monkeypatch):
    _install(site, "toklip-plugin-good", "tp_good2", THIRD_PARTY_VQ.format(module="tp_good2"), entry_name="good2",
             extra_modules={"tp_good2_model": THIRD_PARTY_MODEL})
    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", "good2")
    with use_host(PluginHost(autoload=True, strict=True)):
        result = CliRunner().invoke(cli, ["plugins", "--check", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.output) if r["plugin"] == "good2"]
    assert {r["result"] for r in rows} == {"ok"} and len(rows) == 4  # load, 2 imports, 1 conformance
