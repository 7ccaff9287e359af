"""``toklip tokenize IMAGES OUT`` (also ``torchrun -m toklip.tokenize``), ``toklip tokenize verify OUT`` and
``toklip tokenize stats OUT``."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click
import numpy as np

from toklip.core.errors import ConfigError


class _DefaultRun(click.Group):
    """``toklip tokenize IMAGES OUT ...`` runs ``run``; ``verify`` and ``stats`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("tokenize", cls=_DefaultRun, context_settings={"help_option_names": ["-h", "--help"]})
def tokenize_command() -> None:
    """Pre-tokenize an image dataset into sharded token arrays (``toklip tokenize IMAGES OUT --vq NAME``), check
    a result (``verify OUT``) or measure codebook use (``stats OUT``). See docs/tokenize.md."""


def _vq_args(items: tuple[str, ...]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--vq-arg {item!r} must look like key=value (the value is read as JSON when it can be)")
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
    return args


def tokenizer_spec(vq: str | None, vq_weights: str | None, vq_arg: tuple[str, ...], model: str | None,
                   weights: str | None, random_weights: bool, seed: int) -> Any:
    from toklip.tokenize.encode import TokenizerSpec

    if (vq is None) == (model is None):
        raise ConfigError("give exactly one of --vq NAME (a registered VQ tokenizer) or --model MODEL (a TokLIP model)")
    if vq is not None:
        if weights:
            raise ConfigError("--weights belongs to --model; a VQ's weights are --vq-weights")
        return TokenizerSpec("vq", vq, vq_weights, _vq_args(vq_arg), seed, random_weights)
    if vq_weights or vq_arg:
        raise ConfigError("--vq-weights/--vq-arg belong to --vq; --model loads its own VQ")
    return TokenizerSpec("model", model, weights, {}, seed, random_weights)


def _tokenizer_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--vq", default=None, help="a registered VQ tokenizer (toklip list vq), plugins included"),
        click.option("--vq-weights", default=None, help="the VQ's weights: a release tag (t2i, c2i) or a local file"),
        click.option("--vq-arg", multiple=True, help="key=value passed to the VQ factory (repeatable)"),
        click.option("--model", default=None, help="a TokLIP model: preset, save_pretrained folder, checkpoint file"),
        click.option("--weights", default=None, help="checkpoint for a preset --model"),
        click.option("--random-weights", is_flag=True, help="allow random weights (tests, benchmarks)"),
        click.option("--seed", default=0, show_default=True, help="seed drawn before building random weights"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N"),
    ]):
        f = opt(f)
    return f


@tokenize_command.command("run")
@click.argument("images")
@click.argument("out", type=click.Path(file_okay=False))
@_tokenizer_options
@click.option("--image-size", type=int, default=None, help="pixels (needed with --vq; a --model has its own)")
@click.option("--augment", default="center", show_default=True, type=click.Choice(["center", "flip", "ten-crop"]),
              help="views per image: 1, 2 (mirror) or 10 (LlamaGen's ten-crop)")
@click.option("--crop-range", default=1.1, show_default=True, help="ten-crop: first crop to S x crop-range")
@click.option("--resize", default="adm", show_default=True, type=click.Choice(["adm", "shortest", "squash"]),
              help="first step: ADM centre crop (LlamaGen) or the model's transform")
@click.option("--features", default="none", show_default=True,
              type=click.Choice(["none", "pooled", "tokens", "pooled,tokens"]),
              help="pooled: the TokLIP pooled embedding (fp16) beside the codes; tokens: per-token features "
                   "[views, N, D] fp16, large: the size is printed first and --yes or --max-bytes is required "
                   "(both need --model)")
@click.option("--yes", "confirm_features", is_flag=True, help="write --features tokens whatever their size")
@click.option("--max-bytes", type=int, default=None,
              help="refuse a run whose output would exceed this many bytes (checked as shards are written when "
                   "the input's size is unknown)")
@click.option("--format", "output_format", default="array", show_default=True,
              type=click.Choice(["array", "webdataset"]),
              help="array: memory-mappable .npy shards; webdataset: one tar per shard for streaming")
@click.option("--batch-size", default=64, show_default=True, help="images per encoder batch (x views)")
@click.option("--workers", default=4, show_default=True, help="DataLoader workers decoding images")
@click.option("--shard-size", default=10_000, show_default=True, help="images per output shard (list inputs)")
@click.option("--dtype", "precision", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "bf16", "winograd"]),
              help="bf16: encoder under bf16 autocast, codebook distances in fp32 (fast on GPU and on CPUs with "
                   "native bf16); winograd: CPU, fp32 with Winograd 3x3 convolutions; auto: bf16 on GPU, fp32 on CPU")
@click.option("--input-type", default="auto", show_default=True,
              type=click.Choice(["auto", "webdataset", "csv", "jsonl", "class-folder", "folder", "images"]))
@click.option("--image-key", default=None, help="CSV/JSONL column holding the image path")
@click.option("--caption-key", default=None, help="CSV/JSONL column holding the caption")
@click.option("--resume", is_flag=True, help="continue OUT (a plain rerun does the same; this also insists OUT exists)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def run_command(images: str, out: str, vq: str | None, vq_weights: str | None, vq_arg: tuple[str, ...],
                model: str | None, weights: str | None, random_weights: bool, seed: int, device: str,
                image_size: int | None, augment: str, crop_range: float, resize: str, features: str,
                confirm_features: bool, max_bytes: int | None, output_format: str,
                batch_size: int, workers: int, shard_size: int, precision: str, input_type: str,
                image_key: str | None, caption_key: str | None, resume: bool, quiet: bool) -> None:
    """Tokenize IMAGES (class folders, captioned folder, CSV/TSV/JSONL, WebDataset shards) into OUT."""
    from pathlib import Path

    from toklip.tokenize.manifest import SETTINGS
    from toklip.tokenize.runner import TokenizeOptions, tokenize_dataset

    if resume and not (Path(out) / SETTINGS).is_file():
        raise ConfigError(f"--resume: {out} has no {SETTINGS}, so there is nothing to resume; drop --resume")
    spec = tokenizer_spec(vq, vq_weights, vq_arg, model, weights, random_weights, seed)
    opts = TokenizeOptions(augment=augment, crop_range=crop_range, resize=resize, features=features,
                           batch_size=batch_size, workers=workers, shard_size=shard_size,
                           output_format=output_format, max_bytes=max_bytes, confirm_features=confirm_features)
    s = tokenize_dataset(images, out, spec, options=opts, image_size=image_size, precision=precision, device=device,
                         input_type=input_type, image_key=image_key, caption_key=caption_key, progress=not quiet,
                         command=_command_line(), echo=click.echo)
    click.echo(f"rank {s.rank}/{s.world}: {s.shards_written} shard(s) written, {s.shards_skipped} already "
               f"finished; {s.images} images ({s.skipped} skipped) in {s.seconds:.1f} s "
               f"({s.images_per_second:.1f} img/s)")
    if s.manifest is not None:
        m = json.loads(s.manifest.read_text())
        c = m["counts"]
        size = sum((s.out / v).stat().st_size for sh in m["shards"] for k, v in sh.items() if k.endswith("_file"))
        click.echo(f"manifest: {s.manifest} ({c['images']} images x {m['augment']['variants']} views x "
                   f"{m['tokens_per_image']} tokens, {m['dtype']}, {m['output_format']} format, {c['skipped']} "
                   f"skipped, {c['shards']} shard(s), {size / max(c['images'], 1):.0f} bytes/image on disk)")
    elif s.world > 1:
        click.echo(f"rank {s.rank}/{s.world}: other ranks still running; the last to finish writes the manifest")


@tokenize_command.command("verify")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--n", default=16, show_default=True, help="samples to decode")
@_tokenizer_options
@click.option("--grid", "grid_path", default=None, help="PNG to write (default OUT/verify.png)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify_command(out: str, n: int, vq: str | None, vq_weights: str | None, vq_arg: tuple[str, ...],
                   model: str | None, weights: str | None, random_weights: bool, seed: int, device: str,
                   grid_path: str | None, as_json: bool) -> None:
    """Decode N random samples of OUT next to their originals (a PNG grid); fail when the VQ (the manifest's, or
    --vq/--model) does not have the weights that made the tokens."""
    from toklip.tokenize.check import verify

    spec = None if vq is None and model is None else tokenizer_spec(vq, vq_weights, vq_arg, model, weights,
                                                                     random_weights, seed)
    res = verify(out, n=n, spec=spec, device=device, grid_path=grid_path)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"VQ weights match the manifest (sha256 {res['weights_sha256'][:16]}...)")
    click.echo(f"{res['samples']} samples: re-encoded originals reproduce {res['reencoded_index_match']:.1%} of the "
               f"stored indices; reconstruction PSNR {res['psnr_db']:.2f} dB")
    click.echo(f"grid (original | reconstruction): {res['grid']}")


@tokenize_command.command("stats")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--png", default=None, help="histogram PNG (default OUT/code_usage.png)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def stats_command(out: str, png: str | None, as_json: bool) -> None:
    """Codebook usage, perplexity and entropy over every stored index, and a usage histogram PNG."""
    from toklip.tokenize.check import stats

    res = stats(out, png=png)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"{res['images']} images x {res['views']} views = {res['tokens']:,} tokens")
    click.echo(f"codes used  {res['used']} / {res['vocab_size']} ({res['usage']:.1%})")
    click.echo(f"entropy     {res['entropy_bits']:.2f} bits (max {np.log2(res['vocab_size']):.2f})")
    click.echo(f"perplexity  {res['perplexity']:.1f}")
    click.echo(f"histogram   {res['histogram']}")


def _command_line() -> str:
    """The command that reproduces this run: its arguments and every option not at its default."""
    ctx = click.get_current_context()
    words = ["toklip", "tokenize"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value not in (None, False, ()) and value != param.default:
            flag = param.opts[0]
            if getattr(param, "is_flag", False):
                words.append(flag)
            else:
                for v in value if isinstance(value, tuple) else (value,):
                    words += [flag, str(v)]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m toklip.tokenize`` / ``torchrun -m toklip.tokenize``: errors as one line."""
    from toklip.core.errors import TokLIPError

    try:
        tokenize_command.main(args=argv, prog_name="toklip tokenize", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except TokLIPError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
