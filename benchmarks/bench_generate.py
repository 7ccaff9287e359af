"""Autoregressive sampling speed: images/s and tokens/s of toklip's GPT sampler, CFG on and off.

Providers, same weights and conditions: (a) ``toklip``: plain VQ GPT sampling (static KV cache, one token per
step); (b) ``fused-step``: fused inputs ``concat(E[x_i], s_i)`` with the incremental TokLIP (``TokLIP.stream``:
each token's feature computed once); (c) ``fused-reencode``: the same model re-encoding the whole prefix every
step (N(N+1)/2 token passes, what a model without the step API must do); ``toklip-stream``: the TokLIP stream
alone (N steps). Ratios: (b) vs (c) (goal >= 20x on GPU at N = 256), and (b) / ((a) + stream) (goal <= 1.15).

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

CONFIGS: dict[str, dict[str, Any]] = {  # "toklip": the preset and image size whose grid is the GPT's
    "tiny": {"name": "gpt-test", "overrides": {}, "dtype": torch.float32, "batch": [8], "cuda_only": False,
             "toklip": ("toklip-test", 32)},
    "tiny-256": {"name": "gpt-test", "overrides": {"block_size": 256}, "dtype": torch.float32, "batch": [8],
                 "cuda_only": False, "toklip": ("toklip-test", 128)},
    "gpt-b": {"name": "gpt-b", "overrides": {}, "dtype": torch.bfloat16, "batch": [32, 128], "cuda_only": True,
              "toklip": ("toklip-s-256", 256)},
}
CFG_SCALES = {"cfg-off": 1.0, "cfg-on": 2.0}


def build_model(config: dict[str, Any], device: torch.device) -> Any:
    """Random weights with a non-zero head (LlamaGen zero-initialises it, which makes every draw uniform)."""
    from toklip.gen import build_gpt

    torch.manual_seed(0)
    model = build_gpt(config["name"], **config["overrides"])
    with torch.no_grad():
        torch.nn.init.normal_(model.output.weight, std=0.02)
    return model.to(device=device, dtype=config["dtype"]).eval()


def build_fused(config: dict[str, Any], model: Any, device: torch.device) -> Any:
    """(b)'s generator: the same GPT weights plus concat fusion over a random-weight TokLIP of the same grid."""
    import toklip

    preset, size = config["toklip"]
    torch.manual_seed(0)
    tok = toklip.build(preset, image_size=size).to(device=device, dtype=config["dtype"]).eval()
    fused = toklip.build_generator(config["name"], tokenizer=tok, fusion="concat", **config["overrides"],
                                   vocab_size=tok.vq.vocab_size)
    state = {k: v for k, v in model.state_dict().items() if k not in ("tok_embeddings.weight", "output.weight")}
    fused.load_state_dict(state, strict=False)
    with torch.no_grad():
        torch.nn.init.normal_(fused.output.weight, std=0.02)
    return fused.to(device=device, dtype=config["dtype"]).eval(), tok


class Reencoding:
    """(c): the prefix re-encoded from token 0 at every step (a fresh stream over the whole prefix)."""

    def __init__(self, tok: Any, batch: int) -> None:
        self.tok, self.prefix = tok, torch.empty(batch, 0, dtype=torch.long, device=tok.device)

    def step(self, codes: torch.Tensor) -> torch.Tensor:
        self.prefix = torch.cat([self.prefix, codes.reshape(codes.shape[0], -1)], dim=1)
        n = codes.reshape(codes.shape[0], -1).shape[1]
        return self.tok.stream(self.prefix.shape[0]).step(self.prefix)[:, -n:]


def stream_alone(tok: Any, batch: int, n: int) -> Any:
    codes = torch.randint(0, tok.vq.vocab_size, (batch, n), generator=torch.Generator().manual_seed(4)).to(tok.device)

    def run() -> Any:
        s = tok.stream(batch)
        for i in range(n):
            s.step(codes[:, i])

    return run


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
    fused, tok = build_fused(config, model, run.device)
    theirs = official_model(official[0], model) if official else None
    rows: list[H.Row] = []
    for batch in [int(b) for b in args.batch.split(",")] if args.batch else config["batch"]:
        cond = conditions(model, batch, run.device)
        shape = {"config": cname, "batch": batch, "tokens": model.num_tokens}
        alone = H.Row("bench_generate", "toklip-stream", "-", shape)
        rows.append(H.run_guarded(alone, lambda row=alone, fn=stream_alone(tok, batch, model.num_tokens):
                                  timed(row, fn, run, args)))
        for mode, cfg in CFG_SCALES.items():
            shape = {"config": cname, "batch": batch, "tokens": model.num_tokens}

            def ours(cond: torch.Tensor = cond, cfg: float = cfg) -> Any:
                return sample(model, cond, cfg=cfg, seed=0)

            def gate(cond: torch.Tensor = cond, cfg: float = cfg) -> str | None:
                return check(model, cond, cfg)

            row = H.Row("bench_generate", "toklip", mode, shape)
            rows.append(H.run_guarded(row, lambda row=row, fn=ours, gate=gate: timed(row, fn, run, args, gate)))
            rows += fused_rows(fused, tok, cond, cfg, mode, shape, run, args)
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
    return rows


def fused_rows(fused: Any, tok: Any, cond: torch.Tensor, cfg: float, mode: str, shape: dict[str, Any],
               run: H.Run, args: argparse.Namespace) -> list[H.Row]:
    """(b) and (c) on the same weights; the gate: both draw the same greedy sequence (same features)."""
    from toklip.gen import sample

    inputs = fused.image_inputs
    start = inputs.start

    def reencode_start(batch: int) -> Any:
        return Reencoding(tok, batch)

    def step() -> Any:
        return sample(fused, cond, cfg=cfg, seed=0)

    def reencode() -> Any:
        inputs.start = reencode_start
        try:
            return sample(fused, cond, cfg=cfg, seed=0)
        finally:
            inputs.start = start

    def gate() -> str | None:
        a = sample(fused, cond[:2], cfg=cfg, greedy=True)
        inputs.start = reencode_start
        try:
            b = sample(fused, cond[:2], cfg=cfg, greedy=True)
        finally:
            inputs.start = start
        return None if torch.equal(a, b) else "the step API and re-encoding give different greedy sequences"

    rows = []
    for provider, fn in (("fused-step", step), ("fused-reencode", reencode)):
        row = H.Row("bench_generate", provider, mode, dict(shape))
        rows.append(H.run_guarded(row, lambda row=row, fn=fn: timed(row, fn, run, args,
                                                                       gate if provider == "fused-step" else None)))
    return rows


def measure(run: H.Run, args: argparse.Namespace) -> list[H.Row]:
    default = ["gpt-b"] if run.device.type == "cuda" else ["tiny", "tiny-256"]
    official = official_generate(args.official) if args.official else None
    rows: list[H.Row] = []
    for cname in args.configs.split(",") if args.configs else default:
        rows += measure_config(cname, run, args, official)
        H.free_memory()
    return rows


def fused_ratios(rows: list[H.Row]) -> list[dict[str, Any]]:
    """(b) vs (c), and (b) against its two parts measured alone, per config, batch and CFG mode."""
    ms = {(r.provider, r.mode, r.shape["config"], r.shape["batch"]): r.ms for r in rows if r.ms}
    out = []
    for (provider, mode, config, batch), step_ms in ms.items():
        if provider != "fused-step":
            continue
        reenc, plain = ms.get(("fused-reencode", mode, config, batch)), ms.get(("toklip", mode, config, batch))
        stream = ms.get(("toklip-stream", "-", config, batch))
        if reenc and plain and stream:
            out.append({"config": config, "batch": batch, "mode": mode, "step_vs_reencode": reenc / step_ms,
                        "step_vs_parts": step_ms / (plain + stream)})
    return out


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
    ratios = fused_ratios(rows)
    for r in ratios:
        print(f"{r['config']} batch {r['batch']} {r['mode']}: fused-step is {r['step_vs_reencode']:.1f}x faster than "
              f"re-encoding; fused-step / (plain + TokLIP stream) = {r['step_vs_parts']:.2f}")
    meta = {"ratios": ratios, "goals": {"step_vs_reencode": ">= 20 on GPU at N = 256", "step_vs_parts": "<= 1.15"}}
    print("wrote", H.write_results("bench_generate", rows, meta=meta, out_dir=args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
