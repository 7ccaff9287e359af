"""Packaging and registration: the entry point, lazy imports, names listed by ``toklip list``, the backend's
``supports`` contract, and the conformance check."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import toklip
from toklip.layers.attention import run_attention
from toklip import InputError
from toklip.core.host import PluginHost
from toklip.testing.conformance import check_attn_backend


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="toklip")
    assert any(ep.name == "kernels" and ep.value == "toklip_kernels.plugin" for ep in eps)


def test_autoloaded_host_loads_the_plugin_cleanly():
    host = PluginHost(autoload=True, strict=False)  # other installed plugins are not this test's business
    record = next(r for r in host.records() if r.name == "kernels")
    assert record.status == "ok", record.error
    assert host.get("attn_backend", "triton").provider.dist == "toklip-kernels"


def test_plugin_import_is_light():
    code = ("import sys, toklip, toklip_kernels, toklip_kernels.plugin; "
            "print(json.dumps([m for m in ('torch', 'triton') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_toklip_list_shows_triton():
    from toklip.cli import cli

    result = CliRunner().invoke(cli, ["list", "attn_backend"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "triton" in result.output
    result = CliRunner().invoke(cli, ["list", "projector"], catch_exceptions=False)
    assert "mlp-fused" in result.output


def test_installed_toklip_command_lists_triton():
    """The real command, with entry-point discovery as a user has it after `pip install toklip-kernels`."""
    out = subprocess.run([sys.executable, "-m", "toklip", "list", "attn_backend"], capture_output=True, text=True,
                         check=True)
    assert any(line.split()[:2] == ["attn_backend", "triton"] for line in out.stdout.splitlines()), out.stdout


def test_names_and_aliases():
    assert toklip.get_spec("attn_backend", "triton-test").name == "triton"
    assert toklip.get_spec("projector", "mlp-triton").name == "mlp-fused"
    assert toklip.get_spec("projector", "fused-mlp").name == "mlp-fused"


@pytest.mark.triton_interpret
def test_attn_backend_conforms(device):
    check_attn_backend("triton-test", device=str(device))
    check_attn_backend("triton-test", device=str(device), dtype=torch.float16, atol=2e-3, rtol=2e-3)


def test_supports_contract(device):
    backend = toklip.get_spec("attn_backend", "triton").create()
    q = torch.randn(1, 2, 8, 72, device=device)
    assert backend.supports(q, causal=True, has_mask=False) is None
    assert "mask" in backend.supports(q, causal=True, has_mask=True)
    assert "head_dim" in backend.supports(torch.randn(1, 1, 4, 300, device=device), causal=False, has_mask=False)
    if device.type == "cpu":
        reason = backend.supports(q.bfloat16(), causal=True, has_mask=False)
        assert reason is not None and "bfloat16" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_auto_never_picks_triton_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    backend = toklip.get_spec("attn_backend", "triton").create()
    q = torch.randn(1, 1, 8, 72)
    assert "CUDA" in backend.supports(q, causal=True, has_mask=False)
    with pytest.raises(InputError, match="triton"):
        run_attention(q, q, q, causal=True, backend="triton")


@pytest.mark.triton_interpret
def test_dispatch_through_toklip(device):
    q, k, v = (torch.randn(1, 2, 19, 72, device=device) for _ in range(3))
    got = run_attention(q, k, v, causal=True, backend="triton")
    want = run_attention(q, k, v, causal=True, backend="eager")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    want = run_attention(q, k, v, causal=False, backend="eager")
    with toklip.attention_backend("triton"):  # the context wins over the configured backend
        got = run_attention(q, k, v, causal=False, backend="eager")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
