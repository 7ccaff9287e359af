"""``toklip chat RUN --image cat.jpg``: talk to a trained VLM in the terminal, the reply streamed as it is generated.

RUN is a VLM folder (``VLM.save_pretrained``) or a training run (its newest checkpoint). ``--prompt`` answers once
and exits; otherwise each line read is a user turn of one conversation (``/image PATH`` switches the image and
starts over, ``/reset`` starts over, an empty line or end of input quits).
"""

from __future__ import annotations

from typing import Any

import click


@click.command("chat", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--image", "image", default=None, type=click.Path(exists=True, dir_okay=False),
              help="the image to talk about (none: text only)")
@click.option("--prompt", default=None, help="answer this one prompt and exit")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1, 32768))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0, 2),
              help="0: greedy; above 0: sampling")
@click.option("--llm", default=None, help="the base language model, when it moved since training")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on CUDA), fp32, bf16 or fp16")
def chat_command(run: str, image: str | None, prompt: str | None, max_new_tokens: int, temperature: float,
                 llm: str | None, device: str, dtype: str) -> None:
    """Chat with a trained VLM about an image; replies stream token by token."""
    from toklip.model.loading import resolve_device, resolve_dtype
    from toklip.vlm.saving import load_vlm

    dev = resolve_device(device)
    vlm = load_vlm(run, llm=llm, device=dev, dtype=resolve_dtype(dtype, dev))
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    options.update({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False})
    if prompt is not None:
        _reply(vlm, [_user(vlm, prompt, image is not None)], [image] if image else [], options)
        return
    turns: list[dict[str, str]] = []
    click.echo(f"{vlm.describe()}\nimage: {image or 'none'}; /image PATH, /reset, empty line to quit", err=True)
    while True:
        try:
            line = click.prompt("you", default="", show_default=False, prompt_suffix="> ", err=True)
        except (EOFError, click.Abort):
            break
        line = line.strip()
        if not line:
            break
        if line == "/reset":
            turns = []
            continue
        if line.startswith("/image "):
            image, turns = line[len("/image "):].strip(), []
            continue
        turns.append(_user(vlm, line, bool(image) and not turns))
        turns.append({"role": "assistant", "content": _reply(vlm, turns, [image] if image else [], options)})


def _user(vlm: Any, text: str, with_image: bool) -> dict[str, str]:
    tag = vlm.config.image_token
    return {"role": "user", "content": f"{tag}\n{text}" if with_image and tag not in text else text}


def _reply(vlm: Any, turns: list[dict[str, str]], images: list[Any], options: dict[str, Any]) -> str:
    pieces = []
    for piece in vlm.stream([turns], [images], **options):
        pieces.append(piece)
        click.echo(piece, nl=False)
    click.echo("")
    return "".join(pieces).strip()
