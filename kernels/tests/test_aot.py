"""Every kernel compiles for an H100 (sm_90) with its default launch config, without a GPU: Triton's own
compiler and ptxas run ahead of time. Catches what the interpreter cannot (tl.dot minimum shapes, dtype rules
of the real compiler, shared memory over the limit, register spills)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("ops,head_dims,layout", [("attention", "72,128", "packed"), ("attention", "72", "contiguous"),
                                                 ("lookup_mlp", "72", "packed")])
def test_kernels_compile_for_sm90_without_spills(ops, head_dims, layout):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "toklip_kernels.aot", "--arch", "90", "--json", "--ops", ops, "--head-dims", head_dims,
         "--layout", layout],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.stdout, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert results, "nothing was compiled"
    failed = [f"{r['kernel']} [{r['config']}]: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    spilled = [f"{r['kernel']} [{r['config']}]: {r['spill_bytes']} B" for r in results if r["spill_bytes"]]
    assert not spilled, "default configs must not spill registers:\n" + "\n".join(spilled)
    # d = 72 rows are 144 bytes: without alignment hints Triton falls back to one 2-byte load per element
    scalar = [r["kernel"] for r in results if r["scalar_loads"] and (r["kernel"].startswith("attn")
                                                                     or r["kernel"] == "gather_kernel")]
    assert not scalar, f"unvectorised global loads in {scalar}"
    no_tensor_cores = [r["kernel"] for r in results if r["kernel"] in ("attn_fwd_kernel", "attn_bwd_dkdv_kernel",
                                                                        "attn_bwd_dq_kernel", "mlp_fwd_kernel")
                       and not r["wgmma"]]
    assert not no_tensor_cores, f"no wgmma (Hopper tensor-core) instructions in {no_tensor_cores}"
