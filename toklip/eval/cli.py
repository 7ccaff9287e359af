"""``toklip eval zeroshot`` and ``toklip eval retrieval``: JSON results, progress bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

MODEL_HELP = ("model to evaluate: a save_pretrained or training-checkpoint folder, a hub repo id, an official "
              "checkpoint file (with --config), or a preset name with --weights")


def _model_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")(f)
    f = click.option("--config", default=None, help="preset or config.json for an official checkpoint")(f)
    f = click.option("--weights", default=None, help="official/TokLIP checkpoint file for a preset --model")(f)
    f = click.option("--model", "model_name", required=True, help=MODEL_HELP)(f)
    f = click.option("--batch-size", default=64, show_default=True)(f)
    f = click.option("--workers", default=2, show_default=True)(f)
    f = click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
                     help="write results JSON here")(f)
    f = click.option("--quiet", is_flag=True, help="no progress bars")(f)
    return f


@click.group("eval", context_settings={"help_option_names": ["-h", "--help"]})
def eval_command() -> None:
    """Evaluate: zero-shot classification, image-text retrieval (TokLIP models), reconstruction (VQ tokenizers),
    FID / IS of generators."""


@eval_command.command("zeroshot")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--classnames", default=None,
              help="file of class names (one per line, JSON list, or JSON {folder: name}); default: OpenAI's "
                   "ImageNet names for 1000 WordNet-id (n01440764, ...) folders, else the folder names")
@click.option("--template", "templates", multiple=True,
              help="prompt template with {} for the class name (repeatable), or a file of them; default: OpenAI's 80")
@_model_options
def zeroshot_command(folder: str, classnames: str | None, templates: tuple[str, ...], model_name: str,
                     weights: str | None, config: str | None, device: str | None, batch_size: int, workers: int,
                     out_path: str | None, quiet: bool) -> None:
    """Zero-shot top-1/top-5 on an ImageNet-layout FOLDER (one sub-folder per class)."""
    from toklip.eval.common import load_model, write_results
    from toklip.eval.zeroshot import resolve_classnames, resolve_templates, scan_folder, zero_shot

    tmpl = None if not templates else (templates[0] if len(templates) == 1 else list(templates))
    resolve_classnames(scan_folder(folder)[0], classnames)  # bad inputs fail before the model loads
    resolve_templates(tmpl)
    model = load_model(model_name, weights=weights, config=config, device=device)
    res = zero_shot(model, folder, classnames=classnames, templates=tmpl, batch_size=batch_size, workers=workers,
                    progress=not quiet)
    res["model"] = model_name
    write_results(out_path, res)
    click.echo(json.dumps(res, indent=2))


@eval_command.command("retrieval")
@click.argument("captions", type=click.Path(exists=True, dir_okay=False))
@click.option("--images", "images_root", type=click.Path(exists=True, file_okay=False), default=None,
              help="folder the image paths in CAPTIONS are relative to (default: the file's folder)")
@click.option("--split", default="test", show_default=True, help="split to use from a Karpathy dataset_*.json")
@_model_options
def retrieval_command(captions: str, images_root: str | None, split: str, model_name: str, weights: str | None,
                      config: str | None, device: str | None, batch_size: int, workers: int, out_path: str | None,
                      quiet: bool) -> None:
    """Image->text and text->image recall@1/5/10 from a CAPTIONS file (COCO 5k layout): an ALBEF-style JSON list,
    the official TokLIP coco_test.json (JSON lines), or Karpathy's dataset_coco.json."""
    from toklip.eval.common import load_model, write_results
    from toklip.eval.retrieval import read_captions, retrieval

    read_captions(captions, split=split)  # a bad file fails before the model loads
    model = load_model(model_name, weights=weights, config=config, device=device)
    res = retrieval(model, captions, images_root, split=split, batch_size=batch_size, workers=workers,
                    progress=not quiet)
    res["model"] = model_name
    write_results(out_path, res)
    click.echo(json.dumps(res, indent=2))


@eval_command.command("recon")
@click.argument("images")
@click.option("--vq", "vqs", multiple=True, help="NAME or NAME=WEIGHTS (a tag such as c2i, or a file); repeatable")
@click.option("--model", "models", multiple=True, help="a TokLIP model whose VQ to evaluate; repeatable")
@click.option("--random-weights", is_flag=True, help="allow random weights (tests)")
@click.option("--seed", default=0, show_default=True, help="seed drawn before building random weights")
@click.option("--image-size", default=256, show_default=True)
@click.option("--limit", type=int, default=None, help="at most this many images")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", "precision", default="fp32", show_default=True, type=click.Choice(["auto", "fp32", "bf16"]))
@click.option("--inception-weights", default=None, help="FID InceptionV3 weights (rFID): torch-fidelity's "
              "weights-inception-2015-12-05-6726825d.pth or pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
@click.option("--lpips-weights", default=None, help="torchvision alexnet state dict file (LPIPS)")
@click.option("--png", default=None, help="example reconstructions side by side (default: none)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="write results JSON here")
def recon_command(images: str, vqs: tuple[str, ...], models: tuple[str, ...], random_weights: bool, seed: int,
                  image_size: int, limit: int | None, batch_size: int, device: str, precision: str,
                  inception_weights: str | None, lpips_weights: str | None, png: str | None,
                  out_path: str | None) -> None:
    """Reconstruction quality of VQ tokenizers on the same IMAGES: PSNR, SSIM, codebook usage and perplexity,
    rFID and LPIPS (with their weight files): a table, JSON (--out) and a PNG (--png)."""
    from toklip.core.errors import ConfigError
    from toklip.eval.common import write_results
    from toklip.eval.recon import format_table, recon_eval
    from toklip.tokenize.encode import TokenizerSpec

    specs = []
    for item in vqs:
        name, _, w = item.partition("=")
        specs.append(TokenizerSpec("vq", name, w or None, {}, seed, random_weights))
    specs += [TokenizerSpec("model", m, None, {}, seed, random_weights) for m in models]
    if not specs:
        raise ConfigError("give at least one --vq NAME[=WEIGHTS] or --model MODEL")
    res = recon_eval(images, specs, image_size=image_size, limit=limit, batch_size=batch_size, device=device,
                     precision=precision, inception_weights=inception_weights, lpips_weights=lpips_weights, png=png)
    write_results(out_path, res)
    click.echo(format_table(res))


@eval_command.command("fid")
@click.argument("generator")
@click.option("--reference", required=True,
              help="reference images: a folder, an .npz (ADM's VIRTUAL_imagenet256_labeled.npz) or a statistics file")
@click.option("--n", "n", type=int, default=50_000, show_default=True, help="samples to generate (class-balanced)")
@click.option("--space", type=click.Choice(["inception", "toklip", "teacher"]), default="inception", show_default=True,
              help="inception: FID + IS with --inception-weights; toklip / teacher: FID in that embedding space "
                   "(offline, compares only with the same model)")
@click.option("--inception-weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="torchmetrics' FID Inception weights file (pt_inception-2015-12-05-6726825d.pth); nothing downloads")
@click.option("--classes", "num_classes", type=int, default=None, help="classes to cycle through (default: all)")
@click.option("--prompts", "prompt_file", default=None, type=click.Path(dir_okay=False),
              help="t2i generators: a text file of captions, one per line (e.g. COCO-30k's), cycled over the samples")
@click.option("--caption-encoder", default=None,
              help="t2i: the T5 encoder folder or hub id (default: the one the generator records)")
@click.option("--cfg", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tokenizer", default=None, help="the tokenizer that decodes (default: the one the generator records)")
@click.option("--config", default=None, help="for a LlamaGen release file: a size (gpt-b) or config.json")
@click.option("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
@click.option("--batch-size", default=50, show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="write results JSON here")
def fid_command(generator: str, reference: str, n: int, space: str, inception_weights: str | None,
                num_classes: int | None, prompt_file: str | None, caption_encoder: str | None, cfg: float,
                top_k: int, top_p: float, temperature: float, seed: int, tokenizer: str | None, config: str | None,
                device: str | None, batch_size: int, out_path: str | None) -> None:
    """FID (and IS) of N samples of GENERATOR against --reference: class-balanced for a c2i generator, one per
    caption of --prompts (cycled) for a t2i one; the result records the evaluator, resize rule, reference, sample
    count and the conditions."""
    from toklip.eval.common import write_results
    from toklip.gen.evaluate import feature_fid, inception_fid_is
    from toklip.gen.generator import load_generator, tokenizer_of
    from toklip.model.loading import resolve_device

    if n < 2:
        raise click.BadParameter("FID needs at least 2 samples", param_hint="--n")
    if space == "inception" and inception_weights is None:
        raise click.UsageError("--space inception needs --inception-weights PATH (torchmetrics' FID Inception file, "
                               "pt_inception-2015-12-05-6726825d.pth); or use --space toklip / teacher offline")
    dev = resolve_device(device or "auto")
    gen = load_generator(generator, config=config, tokenizer=tokenizer, device=dev, caption_encoder=caption_encoder)
    tok = tokenizer_of(gen)  # on the generator's device
    conditions = _fid_conditions(gen, n, num_classes=num_classes, prompt_file=prompt_file)
    key = "prompts" if gen.config.model_type == "t2i" else "labels"
    values = conditions.pop("values")

    def batches():  # drawn lazily: the reference and weights are checked before the first sample
        for k, start in enumerate(range(0, n, batch_size)):
            yield gen.generate(**{key: values[start:start + batch_size]}, cfg=cfg, top_k=top_k, top_p=top_p,
                               temperature=temperature, seed=seed + k)

    if space == "inception":
        res = inception_fid_is(batches(), reference, inception_weights=inception_weights, n=n, batch_size=batch_size,
                               device=str(dev))
    else:
        if tok is None or not hasattr(tok, "encode_image"):
            raise click.UsageError(f"--space {space} measures in a TokLIP's embedding space: give --tokenizer")
        res = feature_fid(batches(), reference, encoder=tok, space=space, n=n, batch_size=batch_size)
    res.update({"generator": generator, "sampling": {"cfg": cfg, "top_k": top_k, "top_p": top_p,
                                                     "temperature": temperature, "seed": seed, **conditions}})
    write_results(out_path, res)
    click.echo(json.dumps(res, indent=2))


def _fid_conditions(gen: Any, n: int, *, num_classes: int | None, prompt_file: str | None) -> dict[str, Any]:
    """The N conditions of an FID run (``values``) and what the result records about them."""
    if gen.config.model_type != "t2i":
        if prompt_file is not None:
            raise click.UsageError("--prompts is for text-conditional (t2i) generators; this one is class-conditional: "
                                   "use --classes")
        classes = num_classes or gen.config.num_classes
        return {"values": [i % classes for i in range(n)], "classes": classes}
    if num_classes is not None:
        raise click.UsageError("--classes is for class-conditional generators; a t2i generator samples --prompts")
    if prompt_file is None:
        raise click.UsageError("a text-conditional (t2i) generator needs --prompts FILE: captions, one per line "
                               "(LlamaGen evaluates on COCO-30k's), cycled over the samples")
    from toklip.gen.captions import read_prompt_file
    from toklip.gen.evaluate import sha256_file

    prompts = read_prompt_file(prompt_file)
    return {"values": [prompts[i % len(prompts)] for i in range(n)], "prompts": str(prompt_file),
            "prompts_sha256": sha256_file(Path(prompt_file)), "num_prompts": len(prompts)}
