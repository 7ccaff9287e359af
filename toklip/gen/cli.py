"""``toklip generate``: sample images from a generator (a training run, a saved folder or a LlamaGen release file)
into a PNG grid, and optionally each image as its own PNG: ``--class`` for class-conditional (c2i) generators,
``--prompt`` for text-conditional (t2i) ones (encoded by the caption encoder the generator records)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command("generate")
@click.argument("generator")
@click.option("--class", "classes", type=int, multiple=True,
              help="class label to generate, c2i (repeatable: --class 207 --class 360); --n images of each")
@click.option("--prompt", "prompts", multiple=True,
              help='text prompt, t2i (repeatable: --prompt "a red fox" --prompt "a blue car"); --n images of each')
@click.option("--n", "per_class", type=int, default=4, show_default=True, help="images per class or prompt")
@click.option("--cfg", type=float, default=1.0, show_default=True, help="classifier-free guidance scale (1 = off)")
@click.option("--cfg-interval", type=int, default=None, help="guide only the first K decode steps (LlamaGen's -1: all)")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="1 = off")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=None, help="images sampled at once (default: all)")
@click.option("--tokenizer", default=None, help="the tokenizer that decodes (default: the one the generator records)")
@click.option("--caption-encoder", default=None,
              help="t2i: the T5 encoder folder or hub id (default: the one the generator records)")
@click.option("--config", default=None, help="for a LlamaGen release file: a size (gpt-b) or config.json")
@click.option("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False), default="samples.png", show_default=True,
              help="the PNG grid (one row per class or prompt)")
@click.option("--each", "each_dir", type=click.Path(file_okay=False), default=None,
              help="also write every image as its own PNG into this folder")
def generate_command(generator: str, classes: tuple[int, ...], prompts: tuple[str, ...], per_class: int, cfg: float,
                     cfg_interval: int | None, top_k: int, top_p: float, temperature: float, seed: int,
                     batch_size: int | None, tokenizer: str | None, caption_encoder: str | None, config: str | None,
                     device: str | None, out_path: str, each_dir: str | None) -> None:
    """Sample --n images of each --class (c2i) or --prompt (t2i) from GENERATOR (run folder, generator folder or
    release file)."""
    from toklip.data.preprocess import image_grid, to_pil
    from toklip.gen.generator import load_generator
    from toklip.model.loading import resolve_device

    if per_class < 1:
        raise click.BadParameter("must be >= 1", param_hint="--n")
    if bool(classes) == bool(prompts):
        raise click.UsageError("give --class N (class-conditional generators) or --prompt TEXT (text-conditional "
                               "ones), not both" if classes else "give --class N (class-conditional generators) or "
                               "--prompt TEXT (text-conditional ones)")
    dev = resolve_device(device or "auto")
    gen = load_generator(generator, config=config, tokenizer=tokenizer, device=dev,
                         caption_encoder=caption_encoder if prompts else (caption_encoder or False))
    if prompts and gen.model_type != "t2i":
        raise click.UsageError(f"{generator} is class-conditional (c2i): give --class N, not --prompt")
    if classes and gen.model_type != "c2i":
        raise click.UsageError(f"{generator} is text-conditional (t2i): give --prompt TEXT, not --class")
    conditions: list = [c for c in (classes or prompts) for _ in range(per_class)]
    condition = {"labels": conditions} if classes else {"prompts": conditions}
    t0 = time.perf_counter()
    images = gen.generate(**condition, cfg=cfg, cfg_interval=cfg_interval, top_k=top_k, top_p=top_p,
                          temperature=temperature, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, per_class).save(out)
    if each_dir:
        folder = Path(each_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(to_pil(images)):
            tag = f"class{conditions[k]}" if classes else f"prompt{k // per_class}"
            image.save(folder / f"{k:05d}_{tag}.png")
    click.echo(json.dumps({"images": len(conditions), "grid": str(out), "each": each_dir, "seconds": round(seconds, 2),
                           "images_per_s": round(len(conditions) / max(seconds, 1e-9), 2), "seed": seed, "cfg": cfg}))
