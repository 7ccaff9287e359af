"""``toklip tokenize`` vs a LlamaGen-style extraction loop, on the same images and the same VQ, in the same run.

- ``llamagen-loop``: what ``extract_codes_c2i.py`` does: ADM centre crop, batch 1, fp32, one int64 ``.npy`` per
  image (the views of one image in one file).
- ``toklip-fp32`` / ``toklip-winograd`` / ``toklip-bf16``: ``tokenize_dataset`` (batched, loader workers,
  uint16 shards). winograd: fp32 with NNPACK's Winograd 3x3 convolutions (the CPU mode for CPUs without native
  bf16); bf16: the encoder under bf16 autocast (channels_last) with fp32 codebook distances. Beside every mode:
  the share of indices equal to the fp32 batch-1 loop's.
- ``bf16-distances`` (reference point, not a toklip mode; measured when bf16 is among the modes): the whole VQ
  under bf16 autocast, distances included.

Reports images/s, bytes on disk per image, and the ratios the issue sets goals for (>= 3x images/s on CPU, >= 10x
on GPU, >= 4x fewer bytes).

    python benchmarks/bench_tokenize.py --vq llamagen-test --image-size 64 --n 64
    python benchmarks/bench_tokenize.py --vq llamagen --image-size 256 --n 96 --modes fp32,winograd   # full size
    python benchmarks/bench_tokenize.py --vq llamagen --image-size 256 --n 8 --modes bf16 --tag bf16
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import device_slug, environment  # noqa: E402


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs of 320x288 with smooth structure (random noise would be unlike real images for a VQ)."""
    rng = np.random.default_rng(seed)
    d = root / "images"
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:288, 0:320] / 64.0
    for i in range(n):
        f = rng.uniform(0.5, 3, size=(3, 2))
        arr = np.stack([np.sin(xx * f[c, 0] + yy * f[c, 1] + rng.uniform(0, 6)) for c in range(3)], -1)
        img = Image.fromarray(((arr + 1) * 127.5).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        (d / f"{i:05d}.jpg").write_bytes(buf.getvalue())
    return d


def split_rounds(images: Path, rounds: int) -> list[Path]:
    """Move the images into ``rounds`` sub-folders of (nearly) equal size, in order."""
    paths = sorted(images.iterdir())
    rounds = max(1, min(rounds, len(paths)))
    parts = []
    for r in range(rounds):
        d = images.parent / f"round-{r}"
        d.mkdir()
        for p in paths[r * len(paths) // rounds : (r + 1) * len(paths) // rounds]:
            p.rename(d / p.name)
        parts.append(d)
    return parts


def all_images(parts: list[Path]) -> list[Path]:
    return [p for d in parts for p in sorted(d.iterdir())]


def llamagen_loop(images: Path, out: Path, tok, augment: str) -> tuple[float, int, np.ndarray]:
    """Batch 1, fp32, one int64 .npy per image: the baseline."""
    from toklip.tokenize.augment import make_views, to_model_range

    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(images.iterdir())
    all_indices = []
    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            x = to_model_range(make_views(p, tok.image_size, augment))
            idx = tok.vq.encode(x.to(tok.device)).indices.reshape(x.shape[0], -1).cpu().numpy().astype(np.int64)
            np.save(out / f"{p.stem}.npy", idx[None])
            all_indices.append(idx)
    seconds = time.perf_counter() - start
    return seconds, sum(f.stat().st_size for f in out.iterdir()), np.stack(all_indices)


def bf16_everywhere(images: list[Path], tok, augment: str, batch: int) -> np.ndarray:
    """The whole VQ (distances included) under bf16 autocast: what "just use bf16" gives."""
    from toklip.tokenize.augment import make_views, to_model_range

    x = torch.stack([make_views(p, tok.image_size, augment) for p in images])
    a = x.shape[1]
    flat = to_model_range(x.reshape(-1, *x.shape[2:]))
    out = []
    tok.vq.to(memory_format=torch.channels_last)  # NCHW bf16 convolutions are very slow in oneDNN
    with torch.inference_mode(), torch.autocast(tok.device.type, dtype=torch.bfloat16):
        for s in range(0, len(flat), batch * a):
            chunk = flat[s : s + batch * a].to(tok.device).contiguous(memory_format=torch.channels_last)
            out.append(tok.vq.encode(chunk).indices.reshape(-1, tok.grid[0] ** 2))
    tok.vq.to(memory_format=torch.contiguous_format)
    return torch.cat(out).cpu().numpy().reshape(len(x), a, -1)


# Dense bf16 tensor-core peaks (vendor datasheets, no sparsity), for the roofline fraction on a GPU.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4, "H20": 148.0,
                    "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0, "GH200": 989.4, "B200": 2250.0}


def encoder_flop(tok) -> float:
    """FLOP of the VQ encoder (latent and codebook search) for one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, tok.image_size, tok.image_size, device=tok.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        tok.vq.encode(x)
    return float(counter.get_total_flops())


def roofline(tok, images_per_s: float) -> dict | None:
    """The share of the GPU's dense bf16 peak that ``images_per_s`` of encoding does (None off a known GPU)."""
    if tok.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(tok.device)
    key = next((k for k in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True) if k in name.replace("-", " ")), None)
    flop = encoder_flop(tok)
    out = {"device": name, "encoder_gflop_per_image": flop / 1e9, "achieved_tflops": flop * images_per_s / 1e12}
    if key is not None:
        out.update(peak_bf16_tflops=BF16_PEAK_TFLOPS[key],
                   fraction_of_bf16_peak=out["achieved_tflops"] / BF16_PEAK_TFLOPS[key])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", default="llamagen-test")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=64, help="images")
    ap.add_argument("--augment", default="center", choices=["center", "flip", "ten-crop"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="loader workers (they share the CPUs with the encoder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="fp32,winograd,bf16", help="toklip modes: fp32, winograd (CPU), bf16")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--rounds", type=int, default=4, help="slices of the images every method runs in turn")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<device>)")
    args = ap.parse_args()

    from toklip.tokenize.encode import TokenizerSpec, build_tokenizer
    from toklip.tokenize.runner import TokenizeOptions, tokenize_dataset

    spec = TokenizerSpec("vq", args.vq, None, {}, 0, random_weights=True)
    modes = args.modes.split(",")
    seconds = {m: 0.0 for m in ["llamagen-loop", *modes]}
    nbytes = {m: 0 for m in seconds}
    indices: dict[str, list[np.ndarray]] = {m: [] for m in seconds}
    precision: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = make_images(root, args.n)
        rounds = split_rounds(images, args.rounds)
        tok = build_tokenizer(spec, device=args.device, image_size=args.image_size, precision="fp32")
        # Rounds: every method runs on each slice of the images in turn, so a change in the machine's load (other
        # jobs on a shared CPU) hits all of them alike instead of whichever ran when it changed.
        for r, part in enumerate(rounds):
            t, b, idx = llamagen_loop(part, root / f"llamagen-{r}", tok, args.augment)
            seconds["llamagen-loop"] += t
            nbytes["llamagen-loop"] += b
            indices["llamagen-loop"].append(idx)
            for mode in modes:
                out = root / f"toklip-{mode}-{r}"
                opts = TokenizeOptions(augment=args.augment, batch_size=args.batch_size, workers=args.workers)
                summary = tokenize_dataset(part, out, spec, options=opts, image_size=args.image_size,
                                           precision=mode, device=args.device, progress=False, echo=lambda m: None)
                m = json.loads((out / "manifest.json").read_text())
                seconds[mode] += summary.seconds
                nbytes[mode] += sum((out / sh["tokens_file"]).stat().st_size for sh in m["shards"])
                indices[mode].append(np.concatenate([np.load(out / sh["tokens_file"]) for sh in m["shards"]]))
                precision[mode] = m["precision"]
            done = (r + 1) * len(list(part.iterdir()))
            print(f"round {r + 1}/{len(rounds)}: " + ", ".join(f"{k} {done / v:.2f} img/s" for k, v in seconds.items()),
                  flush=True)
        base_idx = np.concatenate(indices["llamagen-loop"])
        rows = []
        for mode in seconds:
            idx = np.concatenate(indices[mode]).astype(np.int64)
            row = {"mode": mode if mode == "llamagen-loop" else f"toklip-{mode}", "images_per_s": args.n / seconds[mode],
                   "seconds": seconds[mode], "bytes_per_image": nbytes[mode] / args.n,
                   "index_match": float((idx == base_idx).mean())}
            if mode in precision:
                row["precision"] = precision[mode]
                row["speedup_vs_loop"] = seconds["llamagen-loop"] / seconds[mode]
            rows.append(row)
            print(f"{row['mode']:<16} {row['images_per_s']:8.3f} img/s  {row['bytes_per_image']:9.0f} B/img  "
                  f"indices equal to fp32: {row['index_match']:.2%}", flush=True)
        if "bf16" in modes:
            ref = bf16_everywhere(all_images(rounds), tok, args.augment, args.batch_size)
            rows.append({"mode": "bf16-distances (reference)", "index_match": float((ref == base_idx).mean())})
            print(f"bf16 distances too: indices equal to fp32: {rows[-1]['index_match']:.2%}")
    base = rows[0]
    best = max((r for r in rows if r["mode"].startswith("toklip")), key=lambda r: r["images_per_s"])
    ratios = {"images_per_s_best_vs_loop": best["images_per_s"] / base["images_per_s"], "best_mode": best["mode"],
              "bytes_loop_vs_toklip": base["bytes_per_image"] / best["bytes_per_image"]}
    print(f"best {best['mode']}: {ratios['images_per_s_best_vs_loop']:.2f}x the images/s of the batch-1 fp32 loop, "
          f"{ratios['bytes_loop_vs_toklip']:.2f}x fewer bytes")
    target = 10.0 if tok.device.type == "cuda" else 3.0
    print(f"goal images/s vs the batch-1 fp32 loop: {ratios['images_per_s_best_vs_loop']:.2f}x (target >= {target}x); "
          f"goal bytes: {ratios['bytes_loop_vs_toklip']:.2f}x fewer (target >= 4x)")
    bf16 = next((r for r in rows if r["mode"] == "toklip-bf16"), None)
    if bf16 is not None and (line := roofline(tok, bf16["images_per_s"])) is not None:
        ratios["bf16_roofline"] = line
        share = line.get("fraction_of_bf16_peak")
        print(f"bf16 encode: {line['achieved_tflops']:.1f} TFLOP/s"
              + (f" = {share:.1%} of the {line['peak_bf16_tflops']} TFLOP/s bf16 peak" if share is not None else ""))
    out_dir = args.out or Path(__file__).resolve().parent / "results" / device_slug()
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    path = out_dir / f"bench_tokenize_{args.vq}_{args.image_size}_{args.augment}{tag}.json"
    from toklip.tokenize.encode import cpu_has_native_bf16
    from toklip.tokenize.fastconv import nnpack_works

    cpu = {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
           "nnpack": nnpack_works(), "threads": torch.get_num_threads()}
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "ratios": ratios,
                                "command": " ".join(sys.argv), "cpu": cpu, "environment": environment()},
                               indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
