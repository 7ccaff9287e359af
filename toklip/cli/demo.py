"""``toklip demo``: the whole image path on an embedded default, explained as it runs."""

from __future__ import annotations

import importlib.resources
import time
from pathlib import Path

import click


def bundled_image() -> Path:
    return Path(str(importlib.resources.files("toklip").joinpath("data/demo.png")))


@click.command("demo")
@click.option("--preset", default="toklip-test", show_default=True, help="preset or config.json to build")
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="image to tokenize (default: a bundled picture)")
@click.option("--weights", default=None, help="TokLIP checkpoint or save_pretrained folder to load")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="write the input, the reconstruction and the token map as PNGs here")
@click.option("--seed", default=0, show_default=True, help="seed for the random initialisation")
def demo(preset: str, image_path: str | None, weights: str | None, out_dir: str | None, seed: int) -> None:
    """Build a model, tokenize an image, decode the tokens, and print what happened at each step."""
    import torch

    import toklip
    from toklip.data.preprocess import load_image, to_pil
    from toklip.metrics.image import mean_psnr

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if weights and Path(weights).is_dir():
        model = toklip.load(weights)
    else:  # the preset's architecture, random unless --weights names a checkpoint
        model = toklip.load(preset, weights=weights, random_weights=not weights)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    click.echo(f"built {cfg.name or preset} in {time.perf_counter() - t0:.2f} s  ({n_params / 1e6:.2f} M parameters)")
    click.echo(f"  vq         {cfg.vq.name}: {model.vq.downsample}x down, {model.vq.vocab_size} codes of dim "
               f"{model.vq.code_dim} (frozen)")
    click.echo(f"  projector  {cfg.projector.name}: code vector ({model.vq.code_dim}) -> width "
               f"{model.token_encoder.width}")
    click.echo(f"  encoder    {cfg.encoder.name}: {len(model.token_encoder.blocks)} blocks, width "
               f"{model.token_encoder.width}, {model.attention_mode.name} attention, pool "
               f"{model.token_encoder.pool_type}")
    if not weights:
        click.echo("  weights    random (pretrained=False): the pipeline runs, the numbers carry no meaning yet")

    src = Path(image_path) if image_path else bundled_image()
    pil = load_image(src)
    images = model.preprocess(pil).unsqueeze(0)
    click.echo(f"\nimage      {src.name} {pil.size[0]}x{pil.size[1]} -> preprocess (resize shorter side, centre "
               f"crop, [-1, 1]) -> {list(images.shape)}")

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.tokenize(images)
        t_tok = time.perf_counter() - t0
        recon = model.decode(out.indices)
        text = ["a photo of a house", "a photo of a cat", "a diagram"]
        sims = None
        if model.tokenizer is not None and model.text is not None:
            sims = (model.encode_image(images, normalize=True) @ model.encode_text(text, normalize=True).T)[0]

    idx = out.indices[0]
    gh, gw = out.grid
    click.echo(f"tokenize   {t_tok * 1000:.1f} ms")
    click.echo(f"  indices  {list(out.indices.shape)} {out.indices.dtype} on a {gh}x{gw} grid, "
               f"{idx.unique().numel()} distinct codes of {model.vq.vocab_size}")
    click.echo("  first row of code ids: " + " ".join(str(int(i)) for i in idx[:gw]))
    click.echo(f"  codes    {list(out.codes.shape)} (l2-normalised code vectors)")
    click.echo(f"  features {list(out.features.shape)} per-token semantic features ({model.attention_mode.name})")
    click.echo(f"  pooled   {list(out.pooled.shape)} image embedding, norm {out.pooled.norm(dim=-1).item():.3f}")
    click.echo(f"decode     {list(recon.shape)}, PSNR vs input {mean_psnr(recon, images):.2f} dB")
    if sims is not None:
        click.echo("text       cosine similarity of the image to:")
        for t, s in zip(text, sims.tolist()):
            click.echo(f"  {s:+.3f}  {t!r}")
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        to_pil(images)[0].save(out / "demo_input.png")
        to_pil(recon)[0].save(out / "demo_reconstruction.png")
        _token_map(idx.reshape(gh, gw), model.vq.vocab_size).save(out / "demo_tokens.png")
        click.echo(f"\nwrote {out}/demo_input.png, demo_reconstruction.png, demo_tokens.png")


def _token_map(grid, vocab: int):  # type: ignore[no-untyped-def]
    """Code ids as a heat map, upscaled to be visible."""
    import numpy as np
    from PIL import Image

    g = grid.cpu().numpy().astype(np.float64) / max(vocab - 1, 1)
    rgb = np.stack([g, 1 - np.abs(2 * g - 1), 1 - g], axis=-1)
    img = Image.fromarray((rgb * 255).astype(np.uint8))
    return img.resize((img.width * 16, img.height * 16), Image.NEAREST)
