"""The plugin host: discovery through real entry points (fake installed distributions), isolation of broken
plugins, duplicates, strict mode, environment switches, and a third-party VQ tokenizer used by build()."""

from __future__ import annotations

import importlib
import json
import sys
import warnings

import pytest
import torch

import toklip
from toklip.core.errors import (
    AmbiguousComponentError,
    InvalidComponentSpecError,
    MissingDependencyError,
    PluginLoadError,
    UnknownComponentError,
)
from toklip.core.host import PluginHost, use_host
from toklip.core.plugin_warnings import PluginWarning
from toklip.testing import fake_distribution

THIRD_PARTY_VQ = '''
import toklip

@toklip.hookimpl
def register_vq_tokenizers(register):
    register("pixelvq", "{module}_model:build", aliases=("pvq",), summary="a third-party tokenizer")
    register("pixelvq-test", "{module}_model:build", defaults={{"grid_ds": 4}})
'''

THIRD_PARTY_MODEL = '''
import torch
from torch import nn
from toklip.core.protocols import VQEncoding
from toklip.layers.vq import VQTokenizerBase

class PixelVQ(VQTokenizerBase):
    """Average-pool to a grid, quantise each pooled RGB value to 4 levels per channel (64 codes)."""
    def __init__(self, grid_ds=8):
        super().__init__()
        self.code_dim, self.vocab_size, self.downsample = 3, 64, grid_ds
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
    def _encode(self, images):
        pooled = torch.nn.functional.avg_pool2d(images, self.downsample)
        digits = ((pooled.clamp(-1, 1) + 1) / 2 * 3).round().long()
        idx = digits[:, 0] + 4 * digits[:, 1] + 16 * digits[:, 2]
        return VQEncoding(indices=idx, codes=self.indices_to_codes(idx), latent=pooled)
    def indices_to_codes(self, indices):
        d = torch.stack([indices % 4, indices // 4 % 4, indices // 16], -1).float()
        return d / 3 * 2 - 1
    def _decode_codes(self, codes_bchw):
        return torch.nn.functional.interpolate(codes_bchw * self.scale, scale_factor=self.downsample)

def build(grid_ds=8):
    return PixelVQ(grid_ds)
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.startswith("tp_")]:
        del sys.modules[name]


def _install(site, dist, module, source, *, entry_name=None, requires=(), extra_modules=None):
    modules = {module: source, **(extra_modules or {})}
    fake_distribution(site, dist, entry_points={"toklip": {entry_name or dist: module}}, requires=requires,
                      modules=modules)
    importlib.invalidate_caches()


def _host(**kw):
    host = PluginHost(autoload=True, **kw)
    return host


def test_third_party_vq_is_discovered_and_used_by_build(site):
    _install(site, "toklip-plugin-pixel", "tp_pixel", THIRD_PARTY_VQ.format(module="tp_pixel"),
             entry_name="pixel", extra_modules={"tp_pixel_model": THIRD_PARTY_MODEL})
    host = _host(strict=True)
    with use_host(host):
        assert "pixelvq" in toklip.list_components("vq")
        spec = toklip.get_spec("vq", "pvq")
        assert spec.name == "pixelvq"
        assert spec.provider.dist == "toklip-plugin-pixel" and spec.provider.version == "0.1.0"
        model = toklip.build(vq="pixelvq-test", encoder="siglip2-test", projector="mlp-test")
        assert model.image_size == 8 * 4  # siglip2-test grid (8) x the plugin's downsample (4)
        images = torch.rand(2, 3, 32, 32) * 2 - 1
        out = model.tokenize(images)
        assert out.indices.shape == (2, 64) and out.codes.shape == (2, 64, 3)
        assert model.decode(out.indices).shape == (2, 3, 32, 32)
        record = next(r for r in host.records() if r.name == "pixel")
        assert record.status == "ok" and record.hooks == ("register_vq_tokenizers",)


def test_broken_plugin_warns_once_and_everything_else_works(site):
    _install(site, "toklip-plugin-broken", "tp_broken", "import does_not_exist_anywhere\n", entry_name="broken")
    host = _host(strict=False)
    with use_host(host), pytest.warns(RuntimeWarning, match="broken.*ModuleNotFoundError"):
        names = toklip.list_components("vq")
    assert "llamagen" in names
    record = next(r for r in host.records() if r.name == "broken")
    assert record.status == "broken" and "does_not_exist_anywhere" in record.error
    with use_host(host):
        with pytest.raises(UnknownComponentError, match="broken"):
            toklip.get_spec("vq", "whatever-it-provided")


def test_strict_mode_raises(site, monkeypatch):
    _install(site, "toklip-plugin-broken", "tp_broken2", "raise RuntimeError('boom')\n", entry_name="broken2")
    monkeypatch.setenv("TOKLIP_STRICT_PLUGINS", "1")
    host = _host()
    with pytest.raises(PluginLoadError, match="boom") as e:
        host.load_plugins()
    text = str(e.value)
    assert "TOKLIP_STRICT_PLUGINS is set" in text and "unset it" in text
    assert "set TOKLIP_STRICT_PLUGINS=1" not in text  # never suggest setting what is already set


def test_plugin_warnings_show_once_per_process(site):
    _install(site, "toklip-plugin-broken", "tp_once", "import does_not_exist_anywhere\n", entry_name="once")
    src = ("import toklip\n@toklip.hookimpl\ndef register_vq_tokenizers(register):\n"
           "    register('llamagen', 'x.y:z')\n")
    _install(site, "toklip-plugin-squat2", "tp_squat2", src, entry_name="squat2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # a second host in the same process (what a CLI command may do) warns no more
            host = _host(strict=False)
            for _ in range(3):
                host.records()
                host._registries = None  # every rebuild re-runs the hooks: still one warning
    texts = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert sum("'once'" in t for t in texts) == 1 and sum("'squat2'" in t for t in texts) == 1, texts


def test_cli_prints_plugin_warnings_once_without_source_lines(site):
    import os
    import subprocess

    _install(site, "toklip-plugin-broken", "tp_cli", "import does_not_exist_anywhere\n", entry_name="clibroken")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "TOKLIP_LOAD_PLUGINS": "clibroken"}
    env.pop("TOKLIP_STRICT_PLUGINS", None)
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-m", "toklip", "plugins"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("toklip: warning: plugin 'clibroken'"), out.stderr
    assert "host.py" not in out.stderr and "self." not in out.stderr
    assert "clibroken" in out.stdout and "broken" in out.stdout


def test_misspelled_hook_is_caught_with_did_you_mean(site):
    source = "import toklip\n@toklip.hookimpl\ndef register_vq_tokenisers(register):\n    pass\n"
    _install(site, "toklip-plugin-typo", "tp_typo", source, entry_name="typo")
    host = _host(strict=False)
    with pytest.warns(RuntimeWarning, match="register_vq_tokenisers"):
        host.load_plugins()
    record = next(r for r in host.records() if r.name == "typo")
    assert record.status == "broken"
    assert "did you mean 'register_vq_tokenizers'?" in record.error and "<module" not in record.error


def test_hook_argument_with_a_default_is_explained_not_called_with_none():
    class DefaultArg:
        @toklip.hookimpl
        def register_encoders(self, register=None):
            register("never", "x.y:z")

    host = PluginHost(autoload=False, strict=False)
    with pytest.warns(RuntimeWarning, match="default value"):
        record = host.register_plugin(DefaultArg(), name="defaults")
    assert record.status == "broken"
    assert "def register_encoders(register):" in record.error and "NoneType" not in record.error
    assert "siglip2-test" in host.registry("encoder")  # everything else keeps working
    strict = PluginHost(autoload=False, strict=True)
    with pytest.raises(PluginLoadError, match="pluggy never passes arguments that have defaults"):
        strict.register_plugin(DefaultArg(), name="defaults")


def test_same_entry_point_from_two_distributions_names_both(site):
    src = THIRD_PARTY_VQ.format(module="tp_a")
    _install(site, "toklip-plugin-a", "tp_a", src, entry_name="same",
             extra_modules={"tp_a_model": THIRD_PARTY_MODEL})
    _install(site, "evil-fork", "tp_b", src.replace("tp_a", "tp_b"), entry_name="same",
             extra_modules={"tp_b_model": THIRD_PARTY_MODEL})
    host = _host(strict=False)
    with pytest.warns(RuntimeWarning, match="evil-fork.*toklip-plugin-a|toklip-plugin-a.*evil-fork"):
        host.load_plugins()
    rec = next(r for r in host.records() if r.name == "same")
    assert rec.status == "duplicate" and "evil-fork" in rec.error and "toklip-plugin-a" in rec.error


TWO_OF_THEM = '''
import toklip

@toklip.hookimpl
def register_vq_tokenizers(register):
    register("pixelvq", "{module}_model:build", aliases=("pvq",))
    register("{own}", "{module}_model:build", defaults={{"grid_ds": 4}})
'''


def _two_plugins_claiming_pixelvq(site):
    for dist, mod, own in [("toklip-plugin-a", "tp_c", "only-a-test"), ("toklip-plugin-b", "tp_d", "only-b-test")]:
        _install(site, dist, mod, TWO_OF_THEM.format(module=mod, own=own), entry_name=mod,
                 extra_modules={f"{mod}_model": THIRD_PARTY_MODEL})


def test_same_component_from_two_plugins_is_ambiguous(site):
    _two_plugins_claiming_pixelvq(site)
    with use_host(_host(strict=True)), pytest.warns(PluginWarning, match="conflict"):  # strict: a warning, then
        with pytest.raises(AmbiguousComponentError) as e:  # the contested name raises wherever it is used
            toklip.get_spec("vq", "pixelvq")
    text = str(e.value)
    assert "toklip-plugin-a" in text and "toklip-plugin-b" in text
    assert "entry point 'tp_c'" in text and "TOKLIP_DISABLE_PLUGINS=tp_c" in text
    assert "entry point 'tp_d'" in text and "TOKLIP_DISABLE_PLUGINS=tp_d" in text


def test_conflict_shows_on_both_plugins_and_everything_else_works(site):
    from click.testing import CliRunner

    from toklip.cli import cli

    _two_plugins_claiming_pixelvq(site)
    host = _host(strict=False)
    with use_host(host), pytest.warns(RuntimeWarning, match="conflict"):
        records = {r.name: r for r in host.records()}
    for me, other in (("tp_c", "tp_d"), ("tp_d", "tp_c")):
        assert records[me].status == "conflict", records[me]
        assert f"entry point {other!r}" in records[me].error and "'pixelvq', 'pvq'" in records[me].error
        assert f"TOKLIP_DISABLE_PLUGINS={me}" in records[me].error
        assert f"TOKLIP_DISABLE_PLUGINS={other}" in records[me].error
    with use_host(host):
        for name in ("pixelvq", "pvq"):
            with pytest.raises(AmbiguousComponentError):
                toklip.get_spec("vq", name)
        # each plugin's other names, and toklip's builtins, still list and build
        assert toklip.get_spec("vq", "only-a-test").provider.dist == "toklip-plugin-a"
        toklip.build(vq="only-b-test", encoder="siglip2-test", projector="mlp-test", device="meta")
        result = CliRunner().invoke(cli, ["list", "vq"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        rows = {line.split()[1]: line for line in result.output.splitlines()[1:]}
        assert rows["pixelvq"].split()[-1] == "conflict" and "toklip-plugin-a 0.1.0 + toklip-plugin-b" in rows["pixelvq"]
        assert rows["only-a-test"].split()[-1] == "ok" and "llamagen" in rows
        plugins = CliRunner().invoke(cli, ["plugins", "--json"], catch_exceptions=False)
        statuses = {r["name"]: r["status"] for r in json.loads(plugins.output) if r["name"].startswith("tp_")}
        assert statuses == {"tp_c": "conflict", "tp_d": "conflict"}


def test_disabling_one_party_resolves_the_conflict(site, monkeypatch):
    _two_plugins_claiming_pixelvq(site)
    monkeypatch.setenv("TOKLIP_DISABLE_PLUGINS", "tp_d")
    host = _host(strict=True)
    assert host.get("vq", "pixelvq").provider.dist == "toklip-plugin-a"
    assert {r.name: r.status for r in host.records() if r.name.startswith("tp_")} == {"tp_c": "ok", "tp_d": "blocked"}


def test_conflict_status_is_recomputed_when_the_other_party_goes():
    class First:
        @toklip.hookimpl
        def register_fusions(self, register):
            register("shared-sum", "toklip.builtin.fusions:SumFusion")

    class Second(First):
        pass

    host = PluginHost(autoload=False, strict=False)
    host.register_plugin(First(), name="first")
    with pytest.warns(RuntimeWarning, match="shared-sum"), toklip.temp_plugin(Second(), name="second", host=host):
        assert {r.name: r.status for r in host.records()} == {"first": "conflict", "second": "conflict"}
    assert {r.name: r.status for r in host.records()} == {"first": "ok"}
    assert host.get("fusion", "shared-sum").provider.plugin == "first"


def test_a_typo_in_a_factory_module_is_a_plugin_bug_not_a_missing_package(site):
    src = ("import toklip\n@toklip.hookimpl\ndef register_fusions(register):\n"
           "    register('typo-fusion', 'tp_pkg.modle:build')\n"
           "    register('fine-fusion', 'tp_pkg.heavy:build')\n"
           "    register('absent-fusion', 'tp_not_installed_anywhere.model:build')\n")
    _install(site, "toklip-plugin-pkg", "tp_pkg.__init__", src, entry_name="pkg",
             extra_modules={"tp_pkg.heavy": "raise AssertionError('toklip list must not import factories')\n"})
    host = _host(strict=True)
    reg = host.registry("fusion")
    assert reg.find("typo-fusion").status() == "broken: no module 'tp_pkg.modle' in the installed package 'tp_pkg'"
    assert reg.find("fine-fusion").status() == "ok" and "tp_pkg.heavy" not in sys.modules
    assert reg.find("absent-fusion").status() == "missing: module 'tp_not_installed_anywhere' (not installed)"
    with pytest.raises(InvalidComponentSpecError) as e:
        reg.find("typo-fusion").load()
    text = str(e.value)
    assert "module 'tp_pkg.modle' does not exist inside the installed package 'tp_pkg'" in text
    assert "bug in the plugin" in text and "toklip-plugin-pkg 0.1.0" in text and "pip install" not in text
    with pytest.raises(MissingDependencyError, match="pip install tp_not_installed_anywhere"):
        reg.find("absent-fusion").load()


def test_builtin_names_are_reserved(site):
    src = "import toklip\n@toklip.hookimpl\ndef register_vq_tokenizers(register):\n    register('llamagen', 'x.y:z')\n"
    _install(site, "toklip-plugin-squat", "tp_squat", src, entry_name="squat")
    host = _host(strict=False)
    with use_host(host), pytest.warns(RuntimeWarning, match="reserved"):
        spec = host.registry("vq").find("llamagen")
    assert spec.provider.plugin == "builtin"
    assert next(r for r in host.records() if r.name == "squat").status == "conflict"


def test_incompatible_toklip_requirement(site):
    _install(site, "toklip-plugin-future", "tp_future", "raise AssertionError('must not be imported')\n",
             entry_name="future", requires=["toklip>=99"])
    host = _host(strict=False)
    with pytest.warns(RuntimeWarning, match="requires toklip>=99"):
        host.load_plugins()
    assert next(r for r in host.records() if r.name == "future").status == "incompatible"


def test_environment_switches(site, monkeypatch):
    _install(site, "toklip-plugin-pixel", "tp_env", THIRD_PARTY_VQ.format(module="tp_env"), entry_name="pixel",
             extra_modules={"tp_env_model": THIRD_PARTY_MODEL})
    monkeypatch.setenv("TOKLIP_DISABLE_PLUGINS", "pixel")
    host = _host(strict=True)
    assert "pixelvq" not in host.registry("vq")
    assert next(r for r in host.records() if r.name == "pixel").status == "blocked"
    monkeypatch.delenv("TOKLIP_DISABLE_PLUGINS")
    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", "")
    host = _host(strict=True)
    assert "pixelvq" not in host.registry("vq")
    monkeypatch.setenv("TOKLIP_LOAD_PLUGINS", "pixel")
    assert "pixelvq" in _host(strict=True).registry("vq")


def test_discovery_order_is_deterministic(site):
    for name in ["zeta", "alpha", "mid"]:
        src = (f"import toklip\n@toklip.hookimpl\ndef register_fusions(register):\n"
               f"    register('{name}-fusion', 'toklip.builtin.fusions:SumFusion')\n")
        _install(site, f"toklip-plugin-{name}", f"tp_{name}", src, entry_name=name)
    host = _host(strict=True)
    names = [r.name for r in host.records()]
    assert names == sorted(names)


def test_temp_plugin_registers_and_unregisters():
    class Plugin:
        @toklip.hookimpl
        def register_fusions(self, register):
            register("twice", "toklip.builtin.fusions:SumFusion")

    with toklip.temp_plugin(Plugin(), name="tmp"):
        assert "twice" in toklip.list_components("fusion")
    assert "twice" not in toklip.list_components("fusion")


def test_a_hook_that_raises_marks_only_its_plugin_broken():
    class Bad:
        @toklip.hookimpl
        def register_fusions(self, register):
            register("Bad Name!", "x:y")

    host = PluginHost(autoload=False, strict=False)
    host.register_plugin(Bad(), name="bad")
    with pytest.warns(RuntimeWarning, match="invalid fusion name"):
        names = host.registry("fusion").names()
    assert "concat" in names
    assert next(r for r in host.records() if r.name == "bad").status == "broken"


def test_import_toklip_does_not_import_torch_or_plugins():
    import subprocess

    code = ("import sys, toklip; assert 'torch' not in sys.modules, 'torch imported';"
            "assert toklip.core.host._host is None, 'host created at import'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


class CountingBackend:
    """An attention backend that delegates to sdpa and counts calls."""

    name = "counting"
    calls = 0

    def supports(self, q, *, causal, has_mask):
        return None

    def __call__(self, q, k, v, *, causal, attn_mask=None, scale=None):
        type(self).calls += 1
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


class EveryKindPlugin:
    """One third-party component of every kind, registered through every hook."""

    @toklip.hookimpl
    def register_encoders(self, register):
        register("siglip2-wide-test", "toklip.builtin.siglip2:SigLIP2Encoder",
                 defaults={"model": "siglip2-test", "vision": {"embed_dim": 96, "num_heads": 6}})

    @toklip.hookimpl
    def register_projectors(self, register):
        register("wide-mlp-test", "toklip.builtin.projectors:MLPProjector", defaults={"hidden": 8})

    @toklip.hookimpl
    def register_attention_modes(self, register):
        register("causal-again", "toklip.builtin.attention:causal")

    @toklip.hookimpl
    def register_attn_backends(self, register):
        register("counting", "tests.test_plugins:CountingBackend")

    @toklip.hookimpl
    def register_fusions(self, register):
        register("sum-again", "toklip.builtin.fusions:SumFusion")

    @toklip.hookimpl
    def register_presets(self, register):
        register("tiny-wide", {"vq": "llamagen-test", "encoder": "siglip2-wide-test", "projector": "wide-mlp-test",
                               "attention": "causal-again", "attn_backend": "counting", "fusion": "sum-again"})

    @toklip.hookimpl
    def register_commands(self, cli):
        import click

        @cli.command("hello")
        def hello():
            """Say hello from a plugin."""
            click.echo("hello from a plugin")


def test_a_plugin_can_provide_every_kind():
    from click.testing import CliRunner

    from toklip.cli import LazyGroup

    with toklip.temp_plugin(EveryKindPlugin(), name="every"):
        model = toklip.build("tiny-wide")
        assert model.token_encoder.width == 96 and model.projector.hidden == 8
        before = CountingBackend.calls
        with torch.no_grad():
            out = model.tokenize(torch.rand(1, 3, 64, 64) * 2 - 1)
        assert CountingBackend.calls - before == 2  # one call per transformer block
        assert model.fuse(out).shape == (1, 64, 96)

        @click_group()
        def root():
            pass

        assert isinstance(root, LazyGroup)
        result = CliRunner().invoke(root, ["hello"])
        assert result.output.strip() == "hello from a plugin"


def click_group():
    import click

    from toklip.cli import LazyGroup

    return click.group(cls=LazyGroup)


@pytest.fixture(scope="module")
def module_scoped_host():
    return toklip.get_host()


@pytest.fixture(scope="session")
def session_scoped_host():
    return toklip.get_host()


def test_fixtures_of_every_scope_run_under_an_isolated_host(module_scoped_host, session_scoped_host, toklip_host):
    """The test kit (toklip.testing.pytest_plugin): installed plugins never reach a model a fixture builds once."""
    for host in (module_scoped_host, session_scoped_host, toklip_host):
        assert host.autoload is False and host.strict
        assert [r.status for r in host.records(include_builtins=True)] == ["builtin"]
    assert module_scoped_host is not toklip_host and toklip.get_host() is toklip_host
