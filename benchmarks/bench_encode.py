"""End-to-end image path of TokLIP-L-384 (VQ encoder + projector + token encoder + pool; random weights):
images/s of toklip's fast paths vs the same network run the way the official code runs it.

Variants (same weights):
- ``official``: fp32 weights under fp16 autocast, SDPA with an explicit float causal mask rebuilt every call
  (TokLIP's timm fork; it rules out the flash kernel), per-token eager MLP projector, NCHW VQ encoder.
- ``toklip-sdpa``: bf16 weights, SDPA with ``is_causal=True``, channels-last bf16 VQ encoder (distances to the
  codebook in fp32, so near ties resolve as in fp32), eager projector.
- ``toklip-triton``: as toklip-sdpa, plus the Triton attention and the ``mlp-fused`` projector (cached table).
- ``toklip-triton-compile``: as toklip-triton, with the VQ encoder under ``torch.compile``.
Each variant reports images/s for the whole path and the time of each stage; correctness: the share of VQ
indices equal to the official variant's, and the cosine similarity of pooled embeddings computed from the
same indices (must be >= 0.99).

    python benchmarks/bench_encode.py [--batch 64,128]
    TRITON_INTERPRET=1 python benchmarks/bench_encode.py --smoke --out /tmp/b

Goal (H100, same run): toklip's best images/s >= 2x the official-style path.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import toklip  # noqa: E402

VARIANTS = ("official", "toklip-sdpa", "toklip-triton", "toklip-triton-compile")


class OfficialMaskBackend:
    """SDPA with a float triu(-inf) mask materialised on every call, as TokLIP's timm fork does."""

    name = "official-mask"

    def supports(self, q, *, causal, has_mask):  # type: ignore[no-untyped-def]
        return None

    def __call__(self, q, k, v, *, causal, attn_mask=None, scale=None):  # type: ignore[no-untyped-def]
        if causal:
            n = q.shape[-2]
            attn_mask = torch.full((n, n), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class _OfficialPlugin:
    @toklip.hookimpl
    def register_attn_backends(self, register):  # type: ignore[no-untyped-def]
        register("official-mask", OfficialMaskBackend, summary="benchmark baseline")


def fp32_codebook_lookup(vq: nn.Module) -> None:
    """Keep the codebook lookup in fp32 inside a bf16 VQ (bf16 distances flip near-tie indices)."""
    quantize = vq.quantize.float()
    inner = quantize.forward

    def forward(latent: torch.Tensor):  # type: ignore[no-untyped-def]
        with torch.autocast(latent.device.type, enabled=False):
            return inner(latent.float())

    quantize.forward = forward


def build_variant(name: str, preset: str, state: dict, device: torch.device, smoke: bool) -> tuple[nn.Module, dict]:
    """(model, how to run it): dtype, autocast and input memory format."""
    fast = name != "official"
    kwargs = dict(attn_backend={"official": "official-mask", "toklip-sdpa": "sdpa"}.get(name, "triton"),
                  projector="mlp-fused" if "triton" in name else "mlp")
    if smoke:
        kwargs["projector"] = {"name": kwargs["projector"], "hidden": 256}
    with torch.device(device):
        model = toklip.build(preset, **kwargs)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    run = {"autocast": None, "channels_last": False}
    if not fast:
        run["autocast"] = torch.float16 if device.type == "cuda" else None
        return model, run
    if device.type == "cuda":
        model.to(torch.bfloat16)
        fp32_codebook_lookup(model.vq)
        model.vq.encoder.to(memory_format=torch.channels_last)
        run["channels_last"] = True
    if name.endswith("-compile"):
        model.vq.encoder = torch.compile(model.vq.encoder)
    return model, run


def _ctx(run: dict, device: torch.device):
    if run["autocast"] is not None:
        return torch.autocast(device.type, dtype=run["autocast"])
    return contextlib.nullcontext()


def _images(model: nn.Module, images: torch.Tensor, run: dict) -> torch.Tensor:
    x = images.to(model.dtype if run["autocast"] is None else images.dtype)
    return x.contiguous(memory_format=torch.channels_last) if run["channels_last"] else x


def stage_times(model, images, run, device, reps, warmup) -> dict[str, float]:
    """Median ms of each stage on its own inputs, and of the whole tokenize()."""
    x = _images(model, images, run)
    out: dict[str, float] = {}
    with torch.no_grad(), _ctx(run, device):
        enc = model.vq.encode(x)
        b = x.shape[0]
        idx = enc.indices.reshape(b, -1)
        codes = enc.codes.reshape(b, idx.shape[1], -1).to(model.dtype)
        tokens = model.projector(codes, idx, model.vq.code_table).to(model.dtype)
        feats = model.token_encoder.forward_features(tokens, causal=model.causal)
        stages = {
            "vq_encoder": lambda: model.vq.encode(x),
            "projector": lambda: model.projector(codes, idx, model.vq.code_table),
            "token_encoder": lambda: model.token_encoder.forward_features(tokens, causal=model.causal),
            "pool": lambda: model.token_encoder.pool(feats),
            "total": lambda: model.tokenize(x),
        }
        for stage, fn in stages.items():
            out[stage] = H.summarize(H.Row("encode", "", stage, {}), H.time_ms(fn, reps=reps, warmup=warmup)).ms
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="64,128")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    H.add_run_args(ap, reps=20, warmup=3, dtype=False)
    args = ap.parse_args(argv)
    run = H.run_setup(ap, args, smoke_reps=(1, 1))
    device = run.device
    preset = "toklip-test" if args.smoke else "toklip-l-384"
    batches = [2] if args.smoke else [int(b) for b in args.batch.split(",")]
    variants = [v for v in args.variants.split(",") if not (args.smoke and v.endswith("-compile"))]
    reps, warmup = run.reps, run.warmup
    torch.manual_seed(0)
    rows: list[H.Row] = []
    with toklip.temp_plugin(_OfficialPlugin(), name="bench-official"):
        with torch.device(device):
            base = toklip.build(preset, projector={"name": "mlp", "hidden": 256} if args.smoke else "mlp")
        state = copy.deepcopy(base.state_dict())
        image_size = base.image_size
        del base
        for b in batches:
            images = torch.rand(b, 3, image_size, image_size, device=device) * 2 - 1
            ref_idx = ref_pooled = None
            for name in variants:
                row = H.Row("encode", name, "infer", {"B": b, "image_size": image_size, "preset": preset})

                def body(name=name, row=row, images=images, b=b) -> H.Row:
                    nonlocal ref_idx, ref_pooled
                    model, run = build_variant(name, preset, state, device, args.smoke)
                    x = _images(model, images, run)
                    with torch.no_grad(), _ctx(run, device):
                        idx = model.tokenize(x).indices
                        pooled = model.tokenize_indices(ref_idx if ref_idx is not None else idx).pooled.float()
                    if ref_idx is None:
                        ref_idx, ref_pooled = idx, pooled
                    agree = (idx == ref_idx).float().mean().item()
                    cos = F.cosine_similarity(pooled, ref_pooled, dim=-1).min().item()
                    row.extra.update(index_agreement=agree, min_pooled_cosine=cos)
                    row.ok = cos >= 0.99
                    row.error = None if row.ok else f"pooled embeddings differ from official (cosine {cos:.4f})"
                    times = stage_times(model, images, run, device, reps, warmup)
                    row.ms = times["total"]
                    row.extra.update(stage_ms=times, images_per_s=b / times["total"] * 1e3)
                    return row

                rows.append(H.run_guarded(row, body))
                r = rows[-1]
                if r.ms is not None:
                    stages = ", ".join(f"{k} {v:.2f}" for k, v in r.extra["stage_ms"].items())
                    print(f"B={b} {name:22s} {r.extra['images_per_s']:9.1f} img/s  ({stages} ms)  index agreement "
                          f"{r.extra['index_agreement']:.4f}, pooled cosine {r.extra['min_pooled_cosine']:.5f}"
                          f"{'' if r.ok else '  FAILED: ' + str(r.error)}", flush=True)
                else:
                    print(f"B={b} {name:22s} FAILED: {r.error}", flush=True)
    print()
    H.print_ratio_table(rows, "toklip-triton", shape_cols=["B"])
    goals = []
    for b in batches:
        key = ("infer", *sorted({"B": b, "image_size": image_size, "preset": preset}.items()))
        official = H.best(rows, ["official"], key)
        mine = H.best(rows, [v for v in variants if v != "official"], key)
        print(f"\ngoal at B={b} (best: {mine.provider if mine else 'none'}):")
        goals.append(H.goal(f"images/s vs official-style path, B={b}",
                            official.ms / mine.ms if official and mine else None, 2.0))
    path = H.write_results("bench_encode", rows, meta={"goals": goals, "args": vars(args) | {"out": str(args.out)}},
                           out_dir=args.out)
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
