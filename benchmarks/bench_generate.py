"""Autoregressive sampling speed: images/s and tokens/s of toklip's GPT sampler, CFG on and off.

Measured now: (a) plain VQ GPT sampling (``toklip.gen.sample``: static KV cache, one token per step).
To come with fused inputs (issue 12 parts 2-3): (b) fused sampling with the incremental TokLIP step API and
(c) fused sampling re-encoding the prefix every step; they are listed as "not implemented" rows until then.

Configs:
- ``tiny``: ``gpt-test`` (2 layers, width 64, 512 codes) on a 4x4 grid, fp32. Runs anywhere.
- ``tiny-256``: the same model on a 16x16 grid (N = 256, the size of the GPU goal), fp32.
- ``gpt-b``: LlamaGen GPT-B (111M, 16384 codes, N = 256) in bf16. CUDA only; skipped on a CPU.

Correctness gate (before timing): the KV-cache logits of the benchmark's own weights equal the full
teacher-forced forward (relative error <= 1e-4 in fp32, <= 3e-2 in bf16), and seeded sampling repeats
itself exactly; the official baseline's greedy sequences must equal toklip's (fp32 configs). A provider that
fails is reported, never ranked.

``--official PATH`` also times LlamaGen's own ``generate()`` from a local checkout of FoundationVision/LlamaGen
(fetched by you, never committed) on the same weights and batch: the issue's goal is (a) at least as fast.

    python benchmarks/bench_generate.py                          # CPU: tiny + tiny-256; GPU: gpt-b
    python benchmarks/bench_generate.py --configs gpt-b --batch 32,128 --official ~/src/LlamaGen

Writes ``benchmarks/results/<device>/bench_generate.json`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"name": "gpt-test", "overrides": {}, "dtype": torch.float32, "batch": [8], "cuda_only": False},
    "tiny-256": {"name": "gpt-test", "overrides": {"block_size": 256}, "dtype": torch.float32, "batch": [8],
                 "cuda_only": False},
    "gpt-b": {"name": "gpt-b", "overrides": {}, "dtype": torch.bfloat16, "batch": [32, 128], "cuda_only": True},
}
CFG_SCALES = {"cfg-off": 1.0, "cfg-on": 2.0}
NOT_YET = ("fused-step", "fused-reencode")  # (b) and (c): need the fused generator and TokLIP's step API


def build_model(config: dict[str, Any], device: torch.device) -> Any:
    """Random weights with a non-zero head (LlamaGen zero-initialises it, which makes every draw uniform)."""
    from toklip.gen import build_gpt

    torch.manual_seed(0)
    model = build_gpt(config["name"], **config["overrides"])
    with torch.no_grad():
        torch.nn.init.normal_(model.output.weight, std=0.02)
    return model.to(device=device, dtype=config["dtype"]).eval()


def conditions(model: Any, batch: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.num_classes, (batch,), generator=gen).to(device)


def check(model: Any, cond: torch.Tensor, cfg: float) -> str | None:
    """None if the sampler is right on these weights, else why not."""
    from toklip.gen import cached_logits, sample

    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, model.config.vocab_size, (2, model.num_tokens), generator=gen).to(cond.device)
    with torch.no_grad():
        full = model(codes, cond[:2])
    cached = cached_logits(model, codes, cond[:2])
    err = H.rel_err(cached, full)
    limit = 1e-4 if model.tok_embeddings.weight.dtype == torch.float32 else 3e-2
    if err > limit:
        return f"KV-cache logits differ from the full forward: relative error {err:.2e} > {limit}"
    if not torch.equal(sample(model, cond[:2], cfg=cfg, seed=3), sample(model, cond[:2], cfg=cfg, seed=3)):
        return "seeded sampling does not repeat itself"
    return None


def official_generate(checkout: Path) -> Any:
    """LlamaGen's ``generate`` and ``Transformer`` from a local checkout (benchmark baseline only)."""
    sys.path.insert(0, str(checkout.expanduser().resolve()))
    gpt = importlib.import_module("autoregressive.models.gpt")
    generate = importlib.import_module("autoregressive.models.generate").generate
    return gpt, generate


def official_model(gpt_module: Any, model: Any) -> Any:
    """The official Transformer with our weights (same keys, so a strict load)."""
    c = model.config
    args = gpt_module.ModelArgs(
        dim=c.dim, n_layer=c.n_layer, n_head=c.n_head, n_kv_head=c.n_kv_head, vocab_size=c.vocab_size,
        block_size=c.block_size, num_classes=c.num_classes, cls_token_num=c.cls_token_num,
        class_dropout_prob=c.class_dropout_prob, model_type=c.model_type, caption_dim=c.caption_dim,
        token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
    )
    official = gpt_module.Transformer(args)
    official.load_state_dict(model.state_dict(), strict=True)
    return official.to(device=model.tok_embeddings.weight.device, dtype=model.tok_embeddings.weight.dtype).eval()


def timed(row: H.Row, fn: Any, run: H.Run, args: argparse.Namespace, gate: Any = None) -> H.Row:
    """Check (``gate`` returns None or a problem), then time ``fn``; images/s and tokens/s go into ``extra``."""
    problem = gate() if gate is not None else None
    if problem:
        row.ok, row.error = False, problem
        return row
    H.summarize(row, H.time_ms(fn, warmup=run.warmup, reps=run.reps, max_seconds=args.max_seconds))
    batch, tokens = row.shape["batch"], row.shape["tokens"]
    row.extra.update(images_per_s=batch / (row.ms * 1e-3), tokens_per_s=batch * tokens / (row.ms * 1e-3))
    return row


def measure_config(cname: str, run: H.Run, args: argparse.Namespace, official: Any) -> list[H.Row]:
    from toklip.gen import sample

    config = CONFIGS[cname]
    if config["cuda_only"] and run.device.type != "cuda":
        return [H.Row("bench_generate", "toklip", "-", {"config": cname}, ok=False, error="needs a CUDA GPU")]
    model = build_model(config, run.device)
    theirs = official_model(official[0], model) if official else None
    rows: list[H.Row] = []
    for batch in [int(b) for b in args.batch.split(",")] if args.batch else config["batch"]:
        cond = conditions(model, batch, run.device)
        for mode, cfg in CFG_SCALES.items():
            shape = {"config": cname, "batch": batch, "tokens": model.num_tokens}

            def ours(cond: torch.Tensor = cond, cfg: float = cfg) -> Any:
                return sample(model, cond, cfg=cfg, seed=0)

            def gate(cond: torch.Tensor = cond, cfg: float = cfg) -> str | None:
                return check(model, cond, cfg)

            row = H.Row("bench_generate", "toklip", mode, shape)
            rows.append(H.run_guarded(row, lambda row=row, fn=ours, gate=gate: timed(row, fn, run, args, gate)))
            if theirs is not None:
                def baseline(cond: torch.Tensor = cond, cfg: float = cfg) -> Any:
                    with torch.no_grad():
                        return official[1](theirs, cond, model.num_tokens, cfg_scale=cfg, temperature=1.0,
                                           top_k=0, top_p=1.0, sample_logits=True)

                def same_greedy(cond: torch.Tensor = cond, cfg: float = cfg) -> str | None:
                    if model.tok_embeddings.weight.dtype != torch.float32:
                        return None  # bf16 logits may tie differently; the fp32 configs check it
                    with torch.no_grad():
                        official_codes = official[1](theirs, cond[:2], model.num_tokens, cfg_scale=cfg,
                                                     sample_logits=False, top_k=0, top_p=1.0, temperature=1.0)
                    if not torch.equal(official_codes.long(), sample(model, cond[:2], cfg=cfg, greedy=True)):
                        return "greedy sequences differ from toklip's on the same weights"
                    return None

                row = H.Row("bench_generate", "llamagen-official", mode, shape)
                rows.append(H.run_guarded(
                    row, lambda row=row, fn=baseline, gate=same_greedy: timed(row, fn, run, args, gate)))
            for provider in NOT_YET:
                rows.append(H.Row("bench_generate", provider, mode, shape, ok=False, error="not implemented yet"))
    return rows


def measure(run: H.Run, args: argparse.Namespace) -> list[H.Row]:
    default = ["gpt-b"] if run.device.type == "cuda" else ["tiny", "tiny-256"]
    official = official_generate(args.official) if args.official else None
    rows: list[H.Row] = []
    for cname in args.configs.split(",") if args.configs else default:
        rows += measure_config(cname, run, args, official)
        H.free_memory()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--batch", help="comma-separated batch sizes (default: per config)")
    ap.add_argument("--official", type=Path, help="a local LlamaGen checkout to time its generate() too")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time cap per measurement")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device>)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # one thread: tiny models gain nothing from more, and a busy machine stalls spinning ones
        torch.set_num_threads(1)
    run = H.Run(device, torch.float32, args.reps, args.warmup)
    rows = measure(run, args)
    for row in rows:
        ips = row.extra.get("images_per_s")
        tps = row.extra.get("tokens_per_s")
        shown = f"{row.ms:9.1f} ms  {ips:9.2f} img/s  {tps:10.0f} tok/s" if row.ms else (row.error or "")
        print(f"{row.provider:18s} {row.mode:8s} {row.shape}  {shown}")
    H.print_ratio_table([r for r in rows if r.ms is not None], "toklip", shape_cols=["config", "batch", "tokens"])
    meta = {"note": "(a) plain VQ GPT sampling only; (b)/(c) fused sampling arrive with issue 12 parts 2-3"}
    print("wrote", H.write_results("bench_generate", rows, meta=meta, out_dir=args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
