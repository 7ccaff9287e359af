"""``toklip eval zeroshot`` and ``toklip eval retrieval``: JSON results, progress bars."""

from __future__ import annotations

import json

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
    """Evaluate a TokLIP model: zero-shot classification or image-text retrieval."""


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
