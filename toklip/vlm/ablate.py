"""``toklip ablate comprehension``: the paper's Table 1 (TokLIP features vs the plain VQ tokens, each read by an
LLM through the same projector) at toy scale, on the quickstart's digits.

The quickstart's TokLIP (reused from ``--out`` when ``toklip quickstart`` made it with the same seed; trained here
with the quickstart's own stages otherwise) reads every scan once; its per-token features and its VQ code vectors
are cached. A small random-init Llama with a word-level tokenizer trained here is then trained twice, with the
same seed, steps, batches and initial weights: once reading TokLIP features, once reading the VQ code vectors
(``features="vq"``), both through ``mlp2x_gelu``, projector and LLM trained together (the LLM starts from
nothing). Questions come from the captions: the digit, the ink colour, the paper colour, and the whole
description. Answers are generated greedily on the held-out scans and scored by exact match, per question.
Every count is fixed and seeded: a slower machine takes longer and gets the same table.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

QUESTIONS: dict[str, str] = {
    "digit": "what digit is this ?",
    "ink": "what colour is the ink ?",
    "paper": "what colour is the paper ?",
    "describe": "describe the image .",
}
VARIANTS = {"toklip": "TokLIP features", "vq": "VQ code vectors"}
LLM_SIZE = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128}
BATCH, LR, WARMUP = 32, 1e-3, 20
STEPS = 1000  # optimizer steps of each reader (about 45 s each on one core)


@dataclass(frozen=True)
class Digits:
    features: dict[str, torch.Tensor]  # variant -> [n, N, D]
    answers: dict[str, list[str]]  # question -> one answer per image


def answers_of(data: Any) -> dict[str, list[str]]:
    """The answer to every question for every scan, from its label and colours."""
    from toklip.train.digits import WORDS

    words = [WORDS[int(d)] for d in data.labels]
    return {
        "digit": words,
        "ink": list(data.inks),
        "paper": list(data.papers),
        "describe": [f"a {i} handwritten {w} on {p} paper" for w, i, p in zip(words, data.inks, data.papers)],
    }


# ---------------------------------------------------------------------------------------------- the TokLIP
def quickstart_toklip(out: Path, *, seed: int, progress: bool, echo: Callable[[str], None],
                      scale: float = 1.0) -> Any:
    """The quickstart's trained TokLIP from ``out`` (made with this seed), or trained now with its stages (their
    step counts times ``scale``) and saved there for the next run."""
    import toklip
    from toklip.train import digits as D
    from toklip.train import quickstart as Q

    saved, stamp = out / "toklip", out / Q.COMPONENTS_STAMP
    made = _read_json(stamp)
    if (saved / "config.json").is_file() and made and made.get("seed") == seed:
        echo(f"reusing the quickstart's TokLIP in {saved} (seed {seed})")
        return toklip.load(saved)
    echo(f"no quickstart TokLIP with seed {seed} in {out}: training one with the quickstart's stages "
         "(`toklip quickstart --out` makes it once)")
    steps = Q.Steps.scaled(scale)
    train, _ = D.load_digits(Q.IMAGE_SIZE, seed=seed)
    Q.train_components(out, train, steps, seed=seed, progress=progress, echo=echo)
    model = Q.build_toklip(out, seed=seed)
    Q.train_toklip(model, train, out / "run", steps=steps.toklip, seed=seed, progress=progress, echo=lambda s: None)
    model.eval().save_pretrained(saved)
    return model


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@torch.no_grad()
def read_digits(model: Any, data: Any) -> Digits:
    """Every scan through the frozen TokLIP once: its features and its VQ code vectors."""
    from toklip.train.digits import to_tensor
    from toklip.vlm.features import ImageFeatures

    x = to_tensor(data.images)
    feats = {}
    for variant in VARIANTS:
        reader = ImageFeatures(model, features=variant)  # type: ignore[arg-type]
        feats[variant] = torch.cat([reader(x[i:i + 256]) for i in range(0, len(x), 256)])
    return Digits(feats, answers_of(data))


# ---------------------------------------------------------------------------------------------- one VLM
def train_vlm(vlm: Any, train: Digits, variant: str, *, steps: int, seed: int,
              echo: Callable[[str], None] = print) -> list[float]:
    """Projector + LLM on (image, question) pairs drawn by a seeded generator: the same pairs for every variant."""
    from toklip.train.optim import lr_at
    from toklip.vlm.conversation import encode_conversation, pad_batch

    vlm.set_stage(2).train()
    params = [p for p in vlm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    names = list(QUESTIONS)
    cache: dict[tuple[str, str], Any] = {}
    n = len(train.answers["digit"])
    feats = train.features[variant]
    losses = []
    for step in range(steps):
        idx = rng.integers(n, size=BATCH)
        qs = rng.integers(len(names), size=BATCH)
        encoded = []
        for i, q in zip(idx, qs):
            key = (names[q], train.answers[names[q]][i])
            if key not in cache:
                conv = [{"role": "user", "content": f"<image>\n{QUESTIONS[key[0]]}"},
                        {"role": "assistant", "content": key[1]}]
                cache[key] = encode_conversation(vlm.tokenizer, conv, num_image_tokens=vlm.num_image_tokens)
            encoded.append(cache[key])
        batch = pad_batch(encoded, pad_id=int(vlm.tokenizer.pad_token_id))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base_lr=LR, warmup=WARMUP, total=steps)
        loss = vlm(batch["input_ids"], batch["attention_mask"], batch["labels"],
                   image_features=feats[torch.from_numpy(idx)])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0:
            echo(f"  {variant}: step {step + 1}/{steps}, loss {np.mean(losses[-20:]):.3f}")
    vlm.eval()
    return losses


@torch.no_grad()
def evaluate(vlm: Any, test: Digits, variant: str, *, chunk: int = 120) -> dict[str, float]:
    """Greedy answers to every question on every held-out scan; exact-match accuracy per question."""
    from toklip.vlm.conversation import encode_conversation

    scores = {}
    feats = test.features[variant]
    for name, question in QUESTIONS.items():
        prompt = encode_conversation(vlm.tokenizer, [{"role": "user", "content": f"<image>\n{question}"}],
                                     num_image_tokens=vlm.num_image_tokens, add_generation_prompt=True)
        right = 0
        truth = test.answers[name]
        longest = max(len(vlm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in set(truth)) + 1
        for start in range(0, len(truth), chunk):
            part = feats[start:start + chunk]
            ids = prompt.input_ids[None].repeat(len(part), 1)
            embeds = vlm.embed(ids, image_features=part)
            out = vlm.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=longest, pad_token_id=int(vlm.tokenizer.pad_token_id),
                                   eos_token_id=vlm.tokenizer.eos_token_id)
            replies = vlm.tokenizer.batch_decode(out, skip_special_tokens=True)
            right += sum(r.strip() == t for r, t in zip(replies, truth[start:start + chunk]))
        scores[name] = right / len(truth)
    scores["mean"] = float(np.mean([scores[q] for q in QUESTIONS]))
    return scores


def majority(train: Digits, test: Digits) -> dict[str, float]:
    """What answering the training set's most frequent answer scores: the floor an LLM that ignores images reaches."""
    out = {}
    for q in QUESTIONS:
        values, counts = np.unique(train.answers[q], return_counts=True)
        top = values[int(np.argmax(counts))]
        out[q] = float(np.mean([a == top for a in test.answers[q]]))
    out["mean"] = float(np.mean([out[q] for q in QUESTIONS]))
    return out


# ---------------------------------------------------------------------------------------------- the table
def run_comprehension_ablation(out_dir: str | Path = "toklip-quickstart", *, steps: int = STEPS, seed: int = 0,
                               progress: bool = False, echo: Callable[[str], None] = print,
                               toklip_scale: float = 1.0) -> dict[str, Any]:
    """Train and evaluate the two readers; -> {rows, chance, verdict, ...}, also written to comprehension.json."""
    if not isinstance(steps, int) or steps <= 0:
        raise click.BadParameter(f"steps must be a positive integer, got {steps!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is many times faster than several on a busy machine
    try:
        return _run(out_dir, steps=steps, seed=seed, progress=progress, echo=echo, toklip_scale=toklip_scale)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: str | Path, *, steps: int, seed: int, progress: bool, echo: Callable[[str], None],
         toklip_scale: float) -> dict[str, Any]:
    from toklip.train import digits as D
    from toklip.train import quickstart as Q
    from toklip.vlm.model import build_vlm
    from toklip.vlm.tiny import make_tiny_llm

    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model = quickstart_toklip(out, seed=seed, progress=progress, echo=echo, scale=toklip_scale)
    train_split, test_split = D.load_digits(Q.IMAGE_SIZE, seed=seed)
    train, test = read_digits(model, train_split), read_digits(model, test_split)
    texts = [*QUESTIONS.values(), *{a for q in QUESTIONS for a in train.answers[q] + test.answers[q]}]
    llm = make_tiny_llm(out / "comprehension" / "llm", texts, seed=seed, **LLM_SIZE)
    echo(f"data: {len(train_split)} training and {len(test_split)} held-out scans x {len(QUESTIONS)} questions; "
         f"LLM: random-init Llama {LLM_SIZE}; {steps} steps of {BATCH} (fixed, seed {seed})")
    rows = []
    for variant, what in VARIANTS.items():
        t = time.perf_counter()
        torch.manual_seed(seed)  # the same projector and LLM initialisation for both readers
        vlm = build_vlm(tokenizer=model, llm=llm, features=variant, projector="mlp2x_gelu")
        losses = train_vlm(vlm, train, variant, steps=steps, seed=seed, echo=echo)
        scores = evaluate(vlm, test, variant)
        rows.append({"features": variant, "what": what, "feature_dim": vlm.features.dim, **scores,
                     "final_loss": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - t, 1)})
    chance = majority(train, test)
    tk, vq = rows
    wins = {q: tk[q] > vq[q] for q in (*QUESTIONS, "mean")}
    result = {"steps": steps, "seed": seed, "batch_size": BATCH, "llm": LLM_SIZE, "rows": rows, "chance": chance,
              "toklip_beats_vq": wins, "verdict": verdict(tk, vq), "seconds": round(time.perf_counter() - t0, 1)}
    from toklip.core.io import atomic_write_text

    atomic_write_text(out / "comprehension.json", json.dumps(result, indent=2) + "\n")
    return result


def verdict(tk: dict[str, float], vq: dict[str, float]) -> str:
    """One honest sentence: where TokLIP features beat the VQ tokens, where they tie, where they lose."""
    better = [q for q in QUESTIONS if tk[q] > vq[q] + 1e-9]
    worse = [q for q in QUESTIONS if tk[q] < vq[q] - 1e-9]
    even = [q for q in QUESTIONS if q not in better and q not in worse]
    parts = []
    if better:
        parts.append("TokLIP features beat the VQ tokens on " + ", ".join(better))
    if even:
        parts.append("tie on " + ", ".join(even))
    if worse:
        parts.append("lose on " + ", ".join(worse))
    head = "; ".join(parts)
    mean = (f"mean {tk['mean']:.1%} vs {vq['mean']:.1%}: "
            + ("TokLIP ahead, as in the paper's Table 1" if tk["mean"] > vq["mean"] else
               "TokLIP NOT ahead, unlike the paper's Table 1"))
    return f"{head} ({mean})"


def format_table(result: dict[str, Any]) -> str:
    head = ("reader", *QUESTIONS, "mean", "final loss", "time")
    body = [(r["what"], *(f"{r[q]:.1%}" for q in (*QUESTIONS, "mean")), f"{r['final_loss']:.3f}",
             f"{r['seconds']:.0f} s") for r in result["rows"]]
    chance = result["chance"]
    body.append(("majority answer (no image)", *(f"{chance[q]:.1%}" for q in (*QUESTIONS, "mean")), "-", "-"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*b) for b in body)]
    return "\n".join(lines + ["", result["verdict"]])


@click.command("comprehension", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", default="toklip-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="the quickstart's folder (its TokLIP is reused when made with the same seed; trained otherwise)")
@click.option("--steps", default=STEPS, show_default=True, type=click.IntRange(1, 1_000_000),
              help="optimizer steps of each reader (fixed, never cut short by time)")
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bars")
def comprehension_command(out_dir: str, steps: int, seed: int, quiet: bool) -> None:
    """Paper Table 1 at toy scale: an LLM reading TokLIP features vs one reading the VQ tokens, on the digits."""
    result = run_comprehension_ablation(out_dir, steps=steps, seed=seed, progress=not quiet, echo=click.echo)
    click.echo("")
    click.echo(format_table(result))
    click.echo(f"\nrows in {Path(out_dir) / 'comprehension.json'} ({result['seconds']:.0f} s)")
    if not math.isfinite(result["rows"][0]["final_loss"]):
        raise SystemExit(1)
