"""The generator on the quickstart's digits: the last stage of ``toklip quickstart`` and ``toklip ablate fusion``.

A small class-conditional LlamaGen GPT over the digits' 8x8 VQ tokens is trained with the real trainer (the ``gen``
task), its inputs ``fusion(E_tok[x_i], s_i)`` from the quickstart's frozen causal TokLIP (or plain codes), with
fixed steps and seed. Samples are judged offline by (a) the class the trained TokLIP's zero-shot classifier
assigns them (class consistency: does a "seven" look like a seven) and (b) FID in that TokLIP's embedding space
against the held-out scans (paper Table 7, at toy scale). The TokLIP space, not the teacher's: a reloaded toy
TokLIP rebuilds its teacher at random (the toy teacher's weights are not part of the saved TokLIP), so only the
TokLIP's own space measures the same thing in the quickstart and in ``toklip ablate fusion``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from toklip.train import digits as D

GENERATOR = "gpt-test"
GEN_OVERRIDES: dict[str, Any] = {  # on gpt-test: 2 layers x 96 wide, no dropout (a few hundred steps on a CPU)
    "dim": 96, "n_layer": 2, "n_head": 4, "token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0,
}
GEN_STEPS, GEN_BATCH, GEN_LR = 400, 32, 3e-3
SAMPLES_PER_CLASS, CFG = 10, 2.0
FUSIONS = ("none", "sum", "weighted_sum", "concat")  # paper Table 7


def labelled_codes(tok: Any, data: D.Digits, batch: int = 256) -> Any:
    """The training scans' VQ codes, computed once by the frozen VQ, as labelled samples (what ``toklip tokenize``
    would store; the scans are fixed, so there is nothing to recompute per step)."""
    from toklip.data.readers import LabeledSample
    from toklip.data.sources import ListSource

    images = D.to_tensor(data.images)
    with torch.no_grad():
        codes = torch.cat([tok.vq.encode(images[i:i + batch]).indices.flatten(1) for i in range(0, len(images), batch)])
    samples = [LabeledSample(key=f"digits:{i}", image=codes[i], caption=None, label=int(data.labels[i]))
               for i in range(len(data))]
    return ListSource(samples, "scikit-learn digits (train split, VQ codes)")


def train_generator(tok: Any, train: D.Digits, out_dir: Path, *, fusion: str | None, steps: int = GEN_STEPS,
                    seed: int = 0, progress: bool = True, echo: Callable[[str], None] = print) -> tuple[Any, Any]:
    """(generator, TrainResult): ``fusion`` None is plain VQ inputs."""
    import shutil

    import toklip
    from toklip.train.config import TrainConfig
    from toklip.train.trainer import Trainer

    torch.manual_seed(seed)
    gen = toklip.build_generator(GENERATOR, tokenizer=tok, fusion=fusion, num_classes=len(D.WORDS), **GEN_OVERRIDES)
    cfg = TrainConfig.from_dict({
        "task": {"name": "gen", "generator": GENERATOR, "num_classes": len(D.WORDS)},
        "data": {"batch_size": GEN_BATCH, "workers": 0},
        "optim": {"lr": GEN_LR, "weight_decay": 0.05, "betas": [0.9, 0.95], "grad_clip": 1.0,
                  "warmup": max(1, steps // 10), "schedule": "cosine", "min_lr": GEN_LR / 20},
        "train": {"steps": steps, "seed": seed, "out_dir": str(out_dir), "log_every": 50, "ckpt_every": steps,
                  "keep_last": 1, "progress": progress, "device": "cpu"},
    })
    shutil.rmtree(out_dir, ignore_errors=True)  # a folder this command owns: each run trains afresh
    result = Trainer(cfg, model=gen, source=labelled_codes(tok, train), echo=echo).fit()
    return gen.eval(), result


def evaluate_generator(gen: Any, tok: Any, test: D.Digits, *, seed: int = 0,
                       per_class: int = SAMPLES_PER_CLASS) -> tuple[dict[str, Any], torch.Tensor]:
    """(metrics, samples [10 * per_class, 3, S, S]): class consistency of the samples and of the real held-out
    scans (the classifier's own ceiling), and TokLIP-space FID of the samples against those scans."""
    from toklip.gen.evaluate import class_consistency, feature_fid

    labels = [c for c in range(len(D.WORDS)) for _ in range(per_class)]
    samples = gen.generate(labels=labels, cfg=CFG, seed=seed)
    real = D.to_tensor(test.images)
    templates = list(D.ZERO_SHOT_TEMPLATES)
    fake_acc = class_consistency(samples, labels, model=tok, class_names=D.WORDS, templates=templates)
    real_acc = class_consistency(real, test.labels.tolist(), model=tok, class_names=D.WORDS, templates=templates)
    fid = feature_fid(samples, real, encoder=tok, space="toklip")
    return {"class_accuracy": fake_acc["top1"], "real_class_accuracy": real_acc["top1"], "fid_toklip": fid["fid"],
            "samples": len(labels), "cfg": CFG, "seed": seed}, samples


def sample_grid(samples: torch.Tensor, path: Path, per_class: int = SAMPLES_PER_CLASS) -> Path:
    """One row per class (zero .. nine), ``per_class`` samples each."""
    from toklip.data.preprocess import image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(samples, per_class).resize((per_class * 48, len(D.WORDS) * 48), 0).save(path)  # nearest, 3x
    return path


def run_fusion_ablation(out: str | Path = "toklip-quickstart", *, steps: int = GEN_STEPS, seed: int = 0,
                        only: tuple[str, ...] = (), progress: bool = True,
                        echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Paper Table 7 at toy scale: one generator per fusion (``none`` is plain VQ inputs), same seed, steps and
    data, on the quickstart's frozen TokLIP (``OUT/toklip``; the quickstart runs first when it is missing).
    Rows of {fusion, class_accuracy, fid_toklip, final_loss, seconds}; writes ``fusion_ablation.json``."""
    import json
    import time

    import toklip
    from toklip.core.io import atomic_write_text
    from toklip.train import quickstart as Q

    unknown = set(only) - set(FUSIONS)
    if unknown:
        raise ValueError(f"unknown fusion(s) {sorted(unknown)}; choose from {list(FUSIONS)}")
    out = Path(out).expanduser()
    if not (out / "toklip" / "config.json").is_file():
        echo(f"no trained TokLIP in {out / 'toklip'}: running the quickstart first")
        Q.run_quickstart(out, seed=seed, progress=progress, echo=echo)
    tok = toklip.from_pretrained(out / "toklip").eval()
    train, test = D.load_digits(Q.IMAGE_SIZE, seed=seed)
    rows = []
    for fusion in FUSIONS:
        if only and fusion not in only:
            continue
        t0 = time.perf_counter()
        echo(f"--- fusion {fusion}")
        gen, result = train_generator(tok, train, out / "fusion_ablation" / fusion,
                                      fusion=None if fusion == "none" else fusion, steps=steps, seed=seed,
                                      progress=progress, echo=lambda s: None)
        metrics, samples = evaluate_generator(gen, tok, test, seed=seed)
        sample_grid(samples, out / "fusion_ablation" / f"samples_{fusion}.png")
        rows.append({"fusion": fusion, **metrics, "final_loss": result.history[-1]["ce"], "steps": result.step,
                     "seconds": round(time.perf_counter() - t0, 1)})
    atomic_write_text(out / "fusion_ablation.json", json.dumps(rows, indent=2) + "\n")
    return rows


def paper_ordering(rows: list[dict[str, Any]]) -> str:
    """Whether Table 7's ordering holds here: every fusion beats plain VQ, and concat is best (class accuracy)."""
    by = {r["fusion"]: r for r in rows}
    if "none" not in by or len(by) < 2:
        return "the paper's ordering needs the 'none' row and at least one fusion"
    fused = [r for r in rows if r["fusion"] != "none"]
    beat = [r["fusion"] for r in fused if r["class_accuracy"] > by["none"]["class_accuracy"]]
    best = max(fused, key=lambda r: r["class_accuracy"])["fusion"]
    every = len(beat) == len(fused)
    return (f"every fusion beats plain VQ: {'yes' if every else 'no'} ({', '.join(beat) or 'none'} do); "
            f"best fusion: {best} (the paper's: concat){'' if best == 'concat' else ' - the ordering differs here'}")


def format_fusion_table(rows: list[dict[str, Any]]) -> str:
    head = ("fusion", "class accuracy", "FID (TokLIP space)", "final loss", "time")
    body = [(r["fusion"], f"{r['class_accuracy']:.1%}", f"{r['fid_toklip']:.4g}", f"{r['final_loss']:.3f}",
             f"{r['seconds']:.0f} s") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*b) for b in body)]
    if rows:
        lines.append(f"(real held-out scans: {rows[0]['real_class_accuracy']:.1%} by the same classifier; chance 10%)")
    lines.append(paper_ordering(rows))
    return "\n".join(lines)
