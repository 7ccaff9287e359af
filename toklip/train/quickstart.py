"""``toklip quickstart``: TokLIP's whole chain on real data that ships with scikit-learn, on a CPU, in minutes.

Stages, each a real piece of the recipe at toy scale:
1. a LlamaGen VQ tokenizer trained on the digits (saved in LlamaGen's release layout, ``{"model": ...}``);
2. a teacher CLIP with SigLIP2's architecture trained contrastively (saved as an open_clip state dict);
3. TokLIP built with ``toklip.build(vq={... "pretrained": vq}, encoder={... "pretrained": teacher})`` and trained
   by the real trainer (frozen VQ, text tower and teacher; contrastive + distillation);
4. evaluation on held-out scans with ``toklip.eval`` (zero-shot from an ImageNet-layout folder, retrieval from
   a captions JSON), figures, and ``save_pretrained``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from toklip.train import digits as D

IMAGE_SIZE = 16  # the scans are 8x8; 16 px keeps every stroke and keeps the VQ cheap on a CPU
VQ_KWARGS: dict[str, Any] = {  # 2x down: an 8x8 token grid at 16 px
    "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 32,
    "codebook_size": 256, "codebook_embed_dim": 8,
}
ENCODER_KWARGS: dict[str, Any] = {"model": "siglip2-test", "image_size": IMAGE_SIZE, "patch_size": 4}  # 4x4 grid
VQ_BATCH, TEACHER_BATCH, TOKLIP_BATCH = 64, 128, 64  # images per optimizer step of each stage
VQ_FILE, TEACHER_FILE, COMPONENTS_STAMP = "vq.pt", "teacher_open_clip.safetensors", "components.json"


@dataclass(frozen=True)
class Steps:
    """Optimizer steps of each stage. Fixed and seeded, so every machine trains the same model: a slow or busy
    one takes longer, never trains less (``toklip quickstart`` reports the time, it never trades steps for it)."""

    vq: int = 300
    teacher: int = 800
    toklip: int = 600
    generator: int = 400  # toklip.gen.digits.GEN_STEPS

    @classmethod
    def scaled(cls, factor: float) -> Steps:
        """``--scale``: every step count times ``factor`` (at least one step each)."""
        base = cls()
        return cls(*(max(1, round(getattr(base, f.name) * factor)) for f in fields(cls)))


@dataclass(frozen=True)
class Floors:
    """The least each stage reaches at ``--scale 1``, far below a normal run (about 27 dB, 93 % and 91 %) and far
    above a broken one (a VQ that learned nothing is near 10 dB; chance is 10 %)."""

    vq_psnr_db: float = 20.0
    teacher_zero_shot_top1: float = 0.5
    toklip_zero_shot_top1: float = 0.5
    generator_class_accuracy: float = 0.25  # of its samples, by TokLIP's zero-shot classifier (chance 10%)


FLOORS = Floors()
@dataclass
class QuickstartReport:
    out_dir: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    vq: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    toklip: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- stage 1 + 2
def _augment(seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return lambda x: D.random_affine(x, generator=g)


def train_components(out: Path, train: D.Digits, steps: Steps, *, seed: int = 0, progress: bool = True,
                     echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or reuse from ``out``) the VQ tokenizer and the teacher CLIP; return what was measured.

    Files in ``out`` are reused only when made with the same seed, sizes and step counts, so a reused pair is
    exactly the pair this call would train."""
    from toklip.core.host import get_spec
    from toklip.train.clip_pretrain import OpenCLIPLayout, train_clip
    from toklip.train.vq_train import train_vq

    images = D.to_tensor(train.images)
    vq_path, teacher_path, stamp = out / VQ_FILE, out / TEACHER_FILE, out / COMPONENTS_STAMP
    made_for = {"seed": seed, "image_size": IMAGE_SIZE, "vq": VQ_KWARGS, "encoder": ENCODER_KWARGS,
                "steps": {"vq": steps.vq, "teacher": steps.teacher},
                "batch_size": {"vq": VQ_BATCH, "teacher": TEACHER_BATCH}}
    if vq_path.is_file() and teacher_path.is_file() and _read_json(stamp) == made_for:
        echo(f"reusing the VQ tokenizer and teacher in {out} (made with the same seed and steps; delete them to "
             "train again)")
        return {"vq": {"steps": steps.vq, "reused": True}, "teacher": {"steps": steps.teacher, "reused": True}}
    torch.manual_seed(seed)
    vq = get_spec("vq", "llamagen-test").create(**VQ_KWARGS)
    r = train_vq(vq, images, steps=steps.vq, batch_size=VQ_BATCH, seed=seed, progress=progress,
                 desc="1/3 VQ tokenizer")
    _save_torch({"model": vq.state_dict()}, vq_path)
    info: dict[str, Any] = {
        "vq": {"steps": r.steps, "seconds": round(r.seconds, 1), "final_recon_mse": r.history[-1]["recon"]}}

    torch.manual_seed(seed)
    encoder = get_spec("encoder", "siglip2-test").create(**ENCODER_KWARGS)
    clip = OpenCLIPLayout(encoder)
    captions = caption_sampler(train, seed)
    r2 = train_clip(clip, images, captions, steps=steps.teacher, batch_size=TEACHER_BATCH, seed=seed,
                    progress=progress, augment=_augment(seed), desc="2/3 teacher CLIP")
    from safetensors.torch import save_file

    from toklip.core.io import atomic_write, atomic_write_text

    state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    atomic_write(teacher_path, lambda p: save_file(state, str(p)))
    atomic_write_text(stamp, json.dumps(made_for))  # last: the pair is complete and made for these settings
    info["teacher"] = {"steps": r2.steps, "seconds": round(r2.seconds, 1), "final_loss": r2.history[-1]["loss"]}
    return info


def _save_torch(obj: Any, path: Path) -> None:
    from toklip.core.io import atomic_write

    atomic_write(path, lambda p: torch.save(obj, p))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def caption_sampler(data: D.Digits, seed: int) -> Callable[[int], str]:
    """i -> a caption of image i in a template drawn at random (seeded) from the training templates."""
    rng = np.random.default_rng(seed)
    return lambda i: data.caption(i, D.TRAIN_TEMPLATES[int(rng.integers(len(D.TRAIN_TEMPLATES)))])


# ---------------------------------------------------------------------------------------------- stage 3
def build_toklip(out: Path, *, init: str = "teacher", projector: str = "mlp", attention: str = "causal",
                 seed: int = 0) -> Any:
    """TokLIP on the trained components: ``init="random"`` re-initialises the token encoder (Table 5 ablation).

    Seeded, so the projector (always freshly initialised) starts the same in the quickstart and the ablations."""
    import toklip

    torch.manual_seed(seed)
    vq = {"name": "llamagen-test", **VQ_KWARGS, "pretrained": str(out / VQ_FILE)}
    encoder = {"name": "siglip2-test", **ENCODER_KWARGS, "pretrained": str(out / TEACHER_FILE)}
    proj: dict[str, Any] = {"name": projector}
    if projector == "mlp":
        proj["hidden"] = 256
    model = toklip.build("toklip-test", vq=vq, encoder=encoder, projector=proj, attention=attention,
                         image_size=IMAGE_SIZE)
    if init == "random":
        plain = toklip.build("toklip-test", vq={"name": "llamagen-test", **VQ_KWARGS},
                             encoder={"name": "siglip2-test", **ENCODER_KWARGS}, projector=proj,
                             attention=attention, image_size=IMAGE_SIZE)
        model.token_encoder.load_state_dict(plain.token_encoder.state_dict())
    elif init != "teacher":
        raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
    return model


def digits_source(data: D.Digits, seed: int) -> Any:
    """The training split as a data source of in-memory images with varied captions."""
    from toklip.data.sources import ListSource, RawSample

    caption = caption_sampler(data, seed)
    samples = [RawSample(key=f"digits:{i}", image=data.images[i], caption=caption(i)) for i in range(len(data))]
    return ListSource(samples, "scikit-learn digits (train split)")


def train_toklip(model: Any, train: D.Digits, out_dir: Path, *, steps: int, seed: int = 0, distill: bool = True,
                 progress: bool = True, echo: Callable[[str], None] = print) -> Any:
    """Run the real trainer (``toklip.train.Trainer``) with quickstart-sized hyperparameters."""
    from toklip.train.config import TrainConfig
    from toklip.train.trainer import Trainer

    cfg = TrainConfig.from_dict({
        "data": {"batch_size": TOKLIP_BATCH, "workers": 0},
        "optim": {"lr": 1e-3, "warmup": max(1, steps // 10), "weight_decay": 0.1, "min_lr": 1e-5},
        "loss": {"distill_weight": 1000.0 if distill else 0.0},
        "train": {"steps": steps, "seed": seed, "out_dir": str(out_dir), "log_every": 25,
                  "ckpt_every": steps, "keep_last": 1, "progress": progress, "device": "cpu"},
    })
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)  # a folder this command owns: each run trains afresh
    g = torch.Generator().manual_seed(seed + 1)
    trainer = Trainer(cfg, model=model, source=digits_source(train, seed),
                      transform=lambda x: D.random_affine(x[None], generator=g)[0], echo=echo)
    return trainer.fit()


# ---------------------------------------------------------------------------------------------- stage 4
def write_eval_split(test: D.Digits, root: Path, seed: int) -> tuple[Path, Path]:
    """The held-out scans as an ImageNet-layout folder and a retrieval captions JSON (what ``toklip eval`` reads).

    Rewritten whenever the split (seed, size) differs from the one on disk, so no training scan is ever evaluated."""
    import shutil

    from PIL import Image

    from toklip.core.io import atomic_write_text

    folder, captions, stamp = root / "test", root / "test_captions.json", root / "split.json"
    made_for = {"seed": seed, "image_size": IMAGE_SIZE, "test_images": len(test)}
    if captions.is_file() and _read_json(stamp) == made_for:
        return folder, captions
    shutil.rmtree(folder, ignore_errors=True)
    entries = []
    for i in range(len(test)):
        rel = Path(f"{int(test.labels[i])}_{D.WORDS[int(test.labels[i])]}") / f"{i:04d}.png"
        (folder / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i]).save(folder / rel)
        entries.append({"image": str(Path("test") / rel), "caption": [test.caption(i)]})
    atomic_write_text(root / "classnames.json", json.dumps(class_names()))
    atomic_write_text(captions, json.dumps(entries))
    atomic_write_text(stamp, json.dumps(made_for))  # last: the split on disk is complete
    return folder, captions


def class_names() -> dict[str, str]:
    return {f"{d}_{w}": w for d, w in enumerate(D.WORDS)}


def evaluate(model: Any, folder: Path, captions: Path, *, progress: bool = False) -> dict[str, Any]:
    from toklip.eval.retrieval import retrieval
    from toklip.eval.zeroshot import zero_shot

    zs = zero_shot(model, folder, classnames=class_names(), templates=list(D.ZERO_SHOT_TEMPLATES), workers=0,
                   progress=progress)
    rt = retrieval(model, captions, workers=0, progress=progress)
    return {"zero_shot_top1": zs["top1"], "zero_shot_top5": zs["top5"],
            **{k: v for k, v in rt.items() if "R@" in k}, "retrieval_mean": rt["mean"]}


class TeacherAsModel:
    """The teacher CLIP behind the evaluation interface of a TokLIP model (encode_image/encode_text)."""

    def __init__(self, student: Any) -> None:
        from toklip.train.step import build_teacher

        self.teacher = build_teacher(student)
        self.student = student
        self.device, self.image_size, self.config = student.device, student.image_size, student.config
        self.text, self.tokenizer = student.text, student.tokenizer

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled, _ = self.teacher(images)
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, texts: Any, normalize: bool = False) -> torch.Tensor:
        return self.student.encode_text(texts, normalize=normalize)


# ---------------------------------------------------------------------------------------------- figures
def figure_reconstructions(model: Any, test: D.Digits, path: Path, n: int = 16) -> Path:
    """Originals (top) over VQ reconstructions (bottom), with the PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toklip.metrics.image import mean_psnr
    from toklip.train.vq_train import reconstruct

    x = D.to_tensor(test.images[:n])
    rec = reconstruct(model.vq, x)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.8, 2.0))
    for i in range(n):
        for row, img in enumerate((x[i], rec[i])):
            axes[row, i].imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
            axes[row, i].axis("off")
    fig.suptitle(f"VQ tokenizer: originals (top) and reconstructions from 8x8 codes (bottom), "
                 f"PSNR {mean_psnr(rec, x):.1f} dB", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def figure_features(model: Any, teacher: TeacherAsModel, test: D.Digits, path: Path, seed: int = 0) -> dict[str, float]:
    """Paper Fig. 3 in spirit: t-SNE of teacher and TokLIP image embeddings, and their per-image cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    x = D.to_tensor(test.images)
    student = torch.cat([model.encode_image(x[i:i + 128], normalize=True) for i in range(0, len(x), 128)])
    ref = torch.cat([teacher.encode_image(x[i:i + 128], normalize=True) for i in range(0, len(x), 128)])
    paired = (student * ref).sum(-1)
    shuffled = (student * ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))]).sum(-1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, feats, title in ((axes[0], ref, "teacher CLIP (pixels)"), (axes[1], student, "TokLIP (VQ tokens)")):
        emb = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(feats.numpy())
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=test.labels, cmap="tab10", s=6)
        ax.set_title(f"t-SNE of {title}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[:2], ticks=range(10), label="digit")
    axes[2].hist(paired.numpy(), bins=30, alpha=0.7, label="same image")
    axes[2].hist(shuffled.numpy(), bins=30, alpha=0.7, label="random pair")
    axes[2].set_title("cosine(TokLIP, teacher) per image", fontsize=9)
    axes[2].legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"cosine_same_image": float(paired.mean()), "cosine_random_pair": float(shuffled.mean())}


# ---------------------------------------------------------------------------------------------- the command
def run_quickstart(out: str | Path = "toklip-quickstart", *, scale: float = 1.0, seed: int = 0, progress: bool = True,
                   echo: Callable[[str], None] = print, steps: Steps | None = None, check: bool | None = None,
                   floors: Floors | None = None) -> QuickstartReport:
    """Python API of ``toklip quickstart``; ``scale`` multiplies every step count.

    ``report.quality`` holds the floors, whether they were checked (``check``; by default at ``scale >= 1``,
    since shorter runs are smoke runs) and the stages that missed them; the report is written either way."""
    from toklip.metrics.image import mean_psnr
    from toklip.train.vq_train import reconstruct

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    steps = steps or Steps.scaled(scale)
    report = QuickstartReport(out_dir=str(out))

    t = time.perf_counter()
    train, test = D.load_digits(IMAGE_SIZE, seed=seed)
    folder, captions = write_eval_split(test, out / "data", seed)
    echo(f"data: scikit-learn digits, {len(train)} training images (each scan in 2 random colourings), "
         f"{len(test)} held-out scans; eval data in {out / 'data'}")
    echo(f"steps (fixed, seed {seed}): VQ {steps.vq}, teacher {steps.teacher}, TokLIP {steps.toklip}; a slower or "
         "busier machine takes longer and trains the same models")
    report.seconds["data"] = time.perf_counter() - t
    groups = len({test.caption(i) for i in range(len(test))})
    # several held-out scans share a caption (same digit, ink and paper): text->image R@1 cannot exceed this
    report.data = {"train_images": len(train), "test_images": len(test), "distinct_test_captions": groups,
                   "text_to_image_R@1_ceiling": round(groups / len(test), 3)}

    t = time.perf_counter()
    info = train_components(out, train, steps, seed=seed, progress=progress, echo=echo)
    report.seconds["vq_and_teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    model = build_toklip(out, seed=seed)
    result = train_toklip(model, train, out / "run", steps=steps.toklip, seed=seed, progress=progress,
                          echo=echo)
    report.seconds["toklip"] = time.perf_counter() - t

    t = time.perf_counter()
    model.eval()
    teacher = TeacherAsModel(model)
    x = D.to_tensor(test.images)
    rec = reconstruct(model.vq, x)
    codes = model.vq.encode(x).indices
    report.vq = {**info["vq"], "batch_size": VQ_BATCH, "psnr_db": round(mean_psnr(rec, x), 2),
                 "codes_used": int(codes.unique().numel()), "codebook_size": VQ_KWARGS["codebook_size"]}
    report.teacher = {**info["teacher"], "batch_size": TEACHER_BATCH, **evaluate(teacher, folder, captions)}
    last = result.history[-1]
    report.toklip = {"steps": result.step, "batch_size": TOKLIP_BATCH, "seconds": round(result.seconds, 1),
                     "final_loss": last["loss"], "final_contrastive": last.get("contrastive_loss"),
                     "final_distill": last.get("distill_loss"), **evaluate(model, folder, captions)}
    report.figures = [str(figure_reconstructions(model, test, out / "vq_reconstructions.png"))]
    cos = figure_features(model, teacher, test, out / "features_tsne_cosine.png", seed=seed)
    report.toklip.update(cos)
    report.figures.append(str(out / "features_tsne_cosine.png"))
    model.save_pretrained(out / "toklip")
    report.seconds["eval_and_figures"] = time.perf_counter() - t

    t = time.perf_counter()
    report.generator, grid = generator_stage(model, train, test, out, steps=steps.generator, seed=seed,
                                             progress=progress, echo=echo)
    report.figures.append(str(grid))
    report.seconds["generator"] = time.perf_counter() - t
    report.seconds["total"] = time.perf_counter() - t0
    report.seconds = {k: round(v, 1) for k, v in report.seconds.items()}
    floors = floors or FLOORS
    report.quality = {"checked": scale >= 1 if check is None else check, "floors": asdict(floors),
                      "failures": quality_failures(report, floors)}
    from toklip.core.io import atomic_write_text

    atomic_write_text(out / "report.json", json.dumps(asdict(report), indent=2) + "\n")
    return report


def generator_stage(model: Any, train: D.Digits, test: D.Digits, out: Path, *, steps: int, seed: int,
                    progress: bool, echo: Callable[[str], None]) -> tuple[dict[str, Any], Path]:
    """Stage 5: a class-conditional GPT over the digits' tokens with concat fusion of the trained (frozen, causal)
    TokLIP's features, samples per class, and their class accuracy (toklip.gen.digits)."""
    from toklip.gen import digits as G

    echo(f"stage 5/5, a generator: LlamaGen GPT ({G.GEN_OVERRIDES['n_layer']} layers x {G.GEN_OVERRIDES['dim']}) "
         f"with concat(E[x_i], TokLIP s_i) inputs, {steps} steps")
    gen, result = G.train_generator(model, train, out / "generator_run", fusion="concat", steps=steps, seed=seed,
                                    progress=progress, echo=lambda s: None)
    metrics, samples = G.evaluate_generator(gen, model, test, seed=seed)
    from toklip.gen.generator import save_generator

    save_generator(gen, out / "generator")
    grid = G.sample_grid(samples, out / "generator_samples.png")
    return {**metrics, "steps": result.step, "batch_size": G.GEN_BATCH, "fusion": "concat",
            "final_loss": result.history[-1]["ce"], "seconds": round(result.seconds, 1)}, grid


def quality_failures(report: QuickstartReport, floors: Floors = FLOORS) -> list[str]:
    """One line per stage whose result is below its floor (none when all are good), naming what it reached."""
    checks = (
        ("stage 1/5, the VQ tokenizer", "held-out PSNR", report.vq.get("psnr_db"), floors.vq_psnr_db, "{:.1f} dB"),
        ("stage 2/5, the teacher CLIP", "zero-shot top-1", report.teacher.get("zero_shot_top1"),
         floors.teacher_zero_shot_top1, "{:.1%}"),
        ("stage 3/5, TokLIP", "zero-shot top-1", report.toklip.get("zero_shot_top1"), floors.toklip_zero_shot_top1,
         "{:.1%}"),
        ("stage 5/5, the generator", "class accuracy of its samples", report.generator.get("class_accuracy"),
         floors.generator_class_accuracy, "{:.1%}"),
    )
    failures = []
    for stage, metric, value, floor, fmt in checks:
        if value is None or not math.isfinite(value) or value < floor:
            reached = "nothing" if value is None else fmt.format(value)
            failures.append(f"{stage}: {metric} {reached}, below its floor of {fmt.format(floor)}")
    return failures


def format_report(r: QuickstartReport) -> str:
    t, s = r.teacher, r.toklip
    rows = [
        ("", "teacher CLIP", "TokLIP"),
        ("input", f"pixels ({IMAGE_SIZE}x{IMAGE_SIZE})", "64 VQ tokens"),
        ("zero-shot top-1 (chance 10%)", f"{t['zero_shot_top1']:.1%}", f"{s['zero_shot_top1']:.1%}"),
        ("zero-shot top-5", f"{t['zero_shot_top5']:.1%}", f"{s['zero_shot_top5']:.1%}"),
        ("image->text R@1 / R@5", f"{t['image_to_text_R@1']:.1%} / {t['image_to_text_R@5']:.1%}",
         f"{s['image_to_text_R@1']:.1%} / {s['image_to_text_R@5']:.1%}"),
        ("text->image R@1 / R@5", f"{t['text_to_image_R@1']:.1%} / {t['text_to_image_R@5']:.1%}",
         f"{s['text_to_image_R@1']:.1%} / {s['text_to_image_R@5']:.1%}"),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [f"  {a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    ceiling = r.data.get("text_to_image_R@1_ceiling")
    if ceiling is not None:
        lines.append(f"  (text->image R@1 is capped at {ceiling:.0%}: {r.data['distinct_test_captions']} distinct captions "
                     f"for {r.data['test_images']} scans)")
    v = r.vq
    out = Path(r.out_dir)
    return "\n".join([
        f"VQ tokenizer: {v['psnr_db']:.1f} dB PSNR on held-out scans, {v['codes_used']}/{v['codebook_size']} codes used",
        *lines,
        f"  cosine(TokLIP, teacher) same image {s['cosine_same_image']:.2f} vs random pair {s['cosine_random_pair']:.2f}",
        _generator_line(r),
        f"steps: VQ {v['steps']} x {v['batch_size']}, teacher {t['steps']} x {t['batch_size']}, "
        f"TokLIP {s['steps']} x {s['batch_size']} images (fixed, whatever the time)",
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items()),
        _quality_line(r),
        f"saved: {out / 'toklip'} (toklip.from_pretrained), {out / 'report.json'}",
        "figures: " + ", ".join(r.figures),
        f"next: toklip eval zeroshot {out / 'data' / 'test'} --model {out / 'toklip'} "
        f"--classnames {out / 'data' / 'classnames.json'} --template 'a handwritten {{}}.'",
    ])


def _generator_line(r: QuickstartReport) -> str:
    g = r.generator
    if not g:
        return "generator: not run"
    return (f"generator (concat fusion, {g['steps']} x {g['batch_size']}): {g['class_accuracy']:.1%} of its samples are "
            f"classified as the class asked for (real scans: {g['real_class_accuracy']:.1%}; chance 10%), "
            f"TokLIP-space FID {g['fid_toklip']:.4g}")


def _quality_line(r: QuickstartReport) -> str:
    q = r.quality
    if not q.get("checked"):
        return "quality floors: not checked (a smoke run: --scale below 1; --check enforces them)"
    if q.get("failures"):
        return f"quality floors: {len(q['failures'])} stage(s) below their floor (see below)"
    f = q["floors"]
    return (f"quality floors: passed (VQ PSNR >= {f['vq_psnr_db']:g} dB, teacher zero-shot >= "
            f"{f['teacher_zero_shot_top1']:.0%}, TokLIP zero-shot >= {f['toklip_zero_shot_top1']:.0%}, generator "
            f"class accuracy >= {f['generator_class_accuracy']:.0%})")


def failure_banner(r: QuickstartReport) -> str:
    """The loud message for a run whose stages missed their floors."""
    bar = "!" * 100
    return "\n".join([
        bar, "toklip quickstart FAILED its quality check:",
        *(f"  - {line}" for line in r.quality["failures"]),
        "The step counts are fixed, so this is not a slow machine: something is broken (a changed dependency, a "
        "numerical problem).",
        f"Everything was still written (report: {Path(r.out_dir) / 'report.json'}); please report it with that file.",
        bar,
    ])


@click.command("quickstart", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", default="toklip-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="folder for the trained VQ, teacher, TokLIP, figures and report.json")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.01, 100),
              help="multiply every step count (0.1 for a smoke run, 4 for better numbers)")
@click.option("--seed", default=0, show_default=True)
@click.option("--check/--no-check", default=None,
              help=f"exit 1 when a stage misses its quality floor (VQ PSNR {FLOORS.vq_psnr_db:g} dB, teacher zero-shot "
                   f"{FLOORS.teacher_zero_shot_top1:.0%}, TokLIP zero-shot {FLOORS.toklip_zero_shot_top1:.0%}); "
                   "default: checked at --scale 1 and above, not for shorter smoke runs")
@click.option("--quiet", is_flag=True, help="no progress bars")
def quickstart_command(out_dir: str, scale: float, seed: int, check: bool | None, quiet: bool) -> None:
    """Train a tiny TokLIP end to end on scikit-learn's digits (CPU, a few minutes) and evaluate it.

    Trains a VQ tokenizer and a teacher CLIP on the digits, then TokLIP (contrastive + distillation) with the
    real trainer; reports zero-shot accuracy and retrieval on held-out scans and writes PNG figures."""
    report = run_quickstart(out_dir, scale=scale, seed=seed, progress=not quiet, echo=click.echo, check=check)
    click.echo("")
    click.echo(format_report(report))
    if report.quality["checked"] and report.quality["failures"]:
        click.echo(failure_banner(report), err=True)
        raise SystemExit(1)
