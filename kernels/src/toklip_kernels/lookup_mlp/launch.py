"""Host side of the lookup + MLP kernels: launch configs, grids and the split-K reduction of partial sums.

Every function takes tensors already checked and cast (table and weights in the compute dtype, indices
flattened to [T] int64) and returns plain tensors; autograd lives in ``function.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toklip_kernels import _runtime
from toklip_kernels._launch import Tiles, cdiv, choose, dot_precision

# Tiles: block_m = BLOCK_T (tokens; BLOCK_S rows of a segment), block_n = BLOCK_D (output features),
# block_k = BLOCK_H (hidden units; 0 for the table kernels, which have none).
INTERPRETER_TILES = {
    "fwd": Tiles(16, 32, 32), "dw2": Tiles(16, 32, 32), "dw1": Tiles(16, 32, 32),
    "gather": Tiles(16, 32), "scatter": Tiles(16, 32), "segment": Tiles(8, 32),
}
# The first of each list is the default; every default compiles for sm_90 without register spills
# (``python -m toklip_kernels.aot --all`` lists registers, spills and shared memory per config).
GPU_CANDIDATES = {
    "fwd": [Tiles(64, 128, 32, 8, 3), Tiles(128, 128, 32, 8, 3), Tiles(64, 128, 64, 8, 3), Tiles(64, 256, 32, 8, 2),
            Tiles(128, 64, 32, 4, 3)],
    "dw2": [Tiles(64, 128, 64, 8, 3), Tiles(32, 128, 128, 8, 3), Tiles(64, 64, 64, 4, 3), Tiles(128, 64, 64, 8, 2)],
    "dw1": [Tiles(32, 128, 64, 4, 3), Tiles(64, 64, 64, 8, 3), Tiles(64, 64, 32, 4, 3), Tiles(128, 64, 64, 8, 2)],
    "gather": [Tiles(32, 128, 0, 4), Tiles(16, 256, 0, 4), Tiles(64, 128, 0, 8), Tiles(8, 512, 0, 4)],
    "scatter": [Tiles(32, 128, 0, 4), Tiles(16, 256, 0, 4)],
    "segment": [Tiles(16, 128, 0, 4), Tiles(32, 256, 0, 4), Tiles(8, 128, 0, 2)],
}


def _tiles(kind: str, key: tuple, run, on_gpu: bool) -> Tiles:  # type: ignore[no-untyped-def]
    return choose((kind, *key), GPU_CANDIDATES[kind], run, on_gpu=on_gpu, interpreter=INTERPRETER_TILES[kind])


def c_pad(code_dim: int) -> int:
    return max(16, _runtime.next_pow2(code_dim))


def _splits(n_tokens: int, base_programs: int, block_t: int, device: torch.device, on_gpu: bool) -> tuple[int, int]:
    """(splits, tokens per split): enough token splits to fill the GPU twice over; 3 in the interpreter so the
    reduction is always exercised by the tests."""
    blocks = max(1, cdiv(n_tokens, block_t))
    want = cdiv(2 * _runtime.sm_count(device), base_programs) if on_gpu else 3
    splits = max(1, min(blocks, want))
    per_split = cdiv(blocks, splits) * block_t
    return cdiv(max(n_tokens, 1), per_split), per_split


def mlp_forward(idx: Tensor | None, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                pos: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """[T, D] = MLP(table[idx]) (+ pos[t % n_pos]); idx None means every table row (the codebook table)."""
    from toklip_kernels.lookup_mlp.triton_mlp import mlp_fwd_kernel

    n_tok = table.shape[0] if idx is None else idx.numel()
    vocab, code_dim = table.shape
    hidden, width = w1.shape[0], w2.shape[0]
    out = _runtime.empty(n_tok, width, dtype=out_dtype, device=table.device)
    if n_tok == 0:
        return out
    on_gpu = _runtime.gpu_configs(table)

    def run(cfg: Tiles) -> None:
        mlp_fwd_kernel[(cdiv(n_tok, cfg.block_m), cdiv(width, cfg.block_n))](
            idx if idx is not None else table, table, w1, b1, w2, b2, pos if pos is not None else b2, out,
            n_tok, vocab, hidden, width, pos.shape[0] if pos is not None else 1,
            table.stride(0), w1.stride(0), w2.stride(0), pos.stride(0) if pos is not None else 0, out.stride(0),
            C=code_dim, C_PAD=c_pad(code_dim), BLOCK_T=cfg.block_m, BLOCK_D=cfg.block_n, BLOCK_H=cfg.block_k,
            IDENTITY=idx is None, HAS_POS=pos is not None, PRECISION=dot_precision(w1.dtype),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    run(_tiles("fwd", (w1.dtype, code_dim, hidden, width, _runtime.next_pow2(n_tok)), run, on_gpu))
    return out


def mlp_backward(idx: Tensor | None, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, dout: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float32 (dW1 [hidden, c], db1 [hidden], dW2 [D, hidden], db2 [D]) for dOut [T, D] (rows as in forward)."""
    from toklip_kernels.lookup_mlp.triton_mlp import mlp_bwd_dw1_kernel, mlp_bwd_dw2_kernel

    n_tok = table.shape[0] if idx is None else idx.numel()
    vocab, code_dim = table.shape
    hidden, width = w1.shape[0], w2.shape[0]
    cp = c_pad(code_dim)
    dev = table.device
    on_gpu = _runtime.gpu_configs(table)
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    rows = idx if idx is not None else table
    key = (w1.dtype, code_dim, hidden, width, _runtime.next_pow2(max(n_tok, 1)))
    result: dict[str, Tensor] = {}

    def run_dw2(cfg: Tiles) -> None:
        base = cdiv(width, cfg.block_n) * cdiv(hidden, cfg.block_k)
        splits, per_split = _splits(n_tok, base, cfg.block_m, dev, on_gpu)
        pdw2 = _runtime.empty(splits, width, hidden, dtype=torch.float32, device=dev)
        pdb2 = _runtime.empty(splits, width, dtype=torch.float32, device=dev)
        mlp_bwd_dw2_kernel[(cdiv(width, cfg.block_n), cdiv(hidden, cfg.block_k), splits)](
            rows, table, w1, b1, dout, pdw2, pdb2, n_tok, vocab, hidden, width, per_split,
            table.stride(0), w1.stride(0), dout.stride(0),
            C=code_dim, C_PAD=cp, BLOCK_T=cfg.block_m, BLOCK_D=cfg.block_n, BLOCK_H=cfg.block_k, IDENTITY=idx is None,
            PRECISION=dot_precision(w1.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        result["dw2"], result["db2"] = pdw2.sum(0), pdb2.sum(0)

    def run_dw1(cfg: Tiles) -> None:
        base = cdiv(hidden, cfg.block_k)
        splits, per_split = _splits(n_tok, base, cfg.block_m, dev, on_gpu)
        pdw1 = _runtime.empty(splits, hidden, cp, dtype=torch.float32, device=dev)
        pdb1 = _runtime.empty(splits, hidden, dtype=torch.float32, device=dev)
        mlp_bwd_dw1_kernel[(cdiv(hidden, cfg.block_k), splits)](
            rows, table, w1, b1, w2, dout, pdw1, pdb1, n_tok, vocab, hidden, width, per_split,
            table.stride(0), w1.stride(0), w2.stride(0), dout.stride(0),
            C=code_dim, C_PAD=cp, BLOCK_T=cfg.block_m, BLOCK_D=cfg.block_n, BLOCK_H=cfg.block_k, IDENTITY=idx is None,
            PRECISION=dot_precision(w1.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        result["dw1"], result["db1"] = pdw1.sum(0)[:, :code_dim], pdb1.sum(0)

    if n_tok == 0:
        z = lambda *s: torch.zeros(*s, dtype=torch.float32, device=dev)  # noqa: E731
        return z(hidden, code_dim), z(hidden), z(width, hidden), z(width)
    run_dw2(_tiles("dw2", key, run_dw2, on_gpu))
    run_dw1(_tiles("dw1", key, run_dw1, on_gpu))
    return result["dw1"], result["db1"], result["dw2"], result["db2"]


def gather(idx: Tensor, tab: Tensor, pos: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """[T, D] = tab[idx] (+ pos[t % n_pos])."""
    from toklip_kernels.lookup_mlp.triton_table import gather_kernel

    n_tok, (vocab, width) = idx.numel(), tab.shape
    out = _runtime.empty(n_tok, width, dtype=out_dtype, device=tab.device)
    if n_tok == 0:
        return out

    def run(cfg: Tiles) -> None:
        gather_kernel[(cdiv(n_tok, cfg.block_m), cdiv(width, cfg.block_n))](
            idx, tab, pos if pos is not None else tab, out, n_tok, vocab, width,
            pos.shape[0] if pos is not None else 1, tab.stride(0), pos.stride(0) if pos is not None else 0,
            out.stride(0), BLOCK_T=cfg.block_m, BLOCK_D=cfg.block_n, HAS_POS=pos is not None,
            num_warps=cfg.num_warps,
        )

    run(_tiles("gather", (tab.dtype, width, pos is not None), run, _runtime.gpu_configs(tab)))
    return out


def code_grad_sum(idx: Tensor, dout: Tensor, vocab: int, *, deterministic: bool) -> Tensor:
    """[V, D] float32: the sum of dOut rows per code (float32 atomics, or sort + fixed-order segment sums)."""
    from toklip_kernels.lookup_mlp.triton_table import scatter_add_kernel, segment_sum_kernel

    n_tok, width = dout.shape
    dev = dout.device
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    on_gpu = _runtime.gpu_configs(dout)
    if not deterministic:
        dtab = torch.zeros(vocab, width, dtype=torch.float32, device=dev)
        if n_tok == 0:
            return dtab

        def run(cfg: Tiles) -> None:
            dtab.zero_()
            scatter_add_kernel[(cdiv(n_tok, cfg.block_m), cdiv(width, cfg.block_n))](
                idx, dout, dtab, n_tok, vocab, width, dout.stride(0), dtab.stride(0),
                BLOCK_T=cfg.block_m, BLOCK_D=cfg.block_n, num_warps=cfg.num_warps,
            )

        run(_tiles("scatter", (dout.dtype, width), run, on_gpu))
        return dtab

    sorted_idx, order = torch.sort(idx, stable=True)
    offsets = torch.searchsorted(sorted_idx, torch.arange(vocab + 1, device=dev, dtype=sorted_idx.dtype))
    dtab = _runtime.empty(vocab, width, dtype=torch.float32, device=dev)

    def run_seg(cfg: Tiles) -> None:
        segment_sum_kernel[(vocab, cdiv(width, cfg.block_n))](
            order, offsets, dout, dtab, width, dout.stride(0), dtab.stride(0),
            BLOCK_S=cfg.block_m, BLOCK_D=cfg.block_n, num_warps=cfg.num_warps,
        )

    run_seg(_tiles("segment", (dout.dtype, width), run_seg, on_gpu))
    return dtab
