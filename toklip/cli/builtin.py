"""toklip's own subcommands: list, plugins, doctor, convert, demo (+ lazily imported heavy ones)."""

from __future__ import annotations

import fnmatch
import json
import sys
from typing import Any

import click

from toklip.core.kinds import KINDS

# Heavy commands live in their own modules and are imported only when run.
LAZY_COMMANDS = {
    "demo": ("toklip.cli.demo:demo", "Build toklip-test, tokenize a bundled image, decode it, print what happened."),
    "quickstart": ("toklip.train.quickstart:quickstart_command", "Train a tiny TokLIP end to end on bundled data (CPU)."),
    "train": ("toklip.train.cli:train_command", "Train from a config: TokLIP, a generator or a VLM (task.name)."),
    "eval": ("toklip.eval.cli:eval_command", "Evaluate: zero-shot, retrieval, reconstruction, generator FID / IS."),
    "ablate": ("toklip.train.ablate:ablate_command", "The paper's ablations on the quickstart data (tokenizer variants; fusion, comprehension)."),
    "serve": ("toklip.serve.cli:serve_command", "Serve tokenize/embed/decode over HTTP."),
    "tokenize": ("toklip.tokenize.cli:tokenize_command", "Pre-tokenize an image dataset into token shards."),
    "generate": ("toklip.gen.cli:generate_command", "Sample images from a trained generator into a PNG grid."),
    "chat": ("toklip.vlm.chat_cli:chat_command", "Chat with a trained VLM about an image (the reply streams)."),
}


def add_builtin_commands(cli: Any) -> None:
    for cmd in (list_command, plugins_command, doctor_command, convert_command):
        cli.add_command(cmd)
    for name, (target, help_text) in LAZY_COMMANDS.items():
        cli.add_lazy_command(name, target, help_text)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _matches(name: str, pattern: str, exclude: tuple[str, ...]) -> bool:
    return fnmatch.fnmatchcase(name, pattern) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)


@click.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False, default="*")
@click.option("--exclude", multiple=True, help="fnmatch pattern(s) to leave out")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_command(kind: str | None, pattern: str, exclude: tuple[str, ...], as_json: bool) -> None:
    """List registered components (KIND: one of the component kinds, PATTERN: an fnmatch pattern)."""
    from toklip.core.host import get_host

    host = get_host()
    if kind is not None and kind not in KINDS:
        raise click.BadParameter(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}", param_hint="KIND")
    kinds = [kind] if kind else list(KINDS)
    items = []
    for k in kinds:
        reg = host.registry(k)
        for spec in reg:
            if not _matches(spec.name, pattern, exclude):
                continue
            items.append({
                "kind": k, "name": spec.name, "aliases": reg.usable_aliases(spec),
                "provider": spec.describe_provider(),
                "status": spec.status(), "summary": spec.summary,
                "pretrained": list(spec.pretrained),
            })
        for name, specs in reg.conflicts().items():
            if not _matches(name, pattern, exclude):
                continue
            items.append({
                "kind": k, "name": name, "aliases": [], "status": "conflict",
                "provider": " + ".join(s.describe_provider() for s in specs),
                "summary": f"registered by {len(specs)} providers: unusable until all but one are disabled "
                           "(toklip plugins)",
                "pretrained": [],
            })
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [[i["kind"], i["name"], ",".join(i["aliases"]), i["provider"], i["status"]] for i in items]
    click.echo(_table(rows, ["KIND", "NAME", "ALIASES", "PROVIDER", "STATUS"]))


list_command.help = (
    "List registered components. KIND is one of " + ", ".join(KINDS) + "; PATTERN is an fnmatch pattern "
    "(e.g. 'siglip2-*'). STATUS is ok, missing: <what to install>, broken: <module missing inside its package> "
    "or conflict (two providers claim the name)."
)


@click.command("plugins")
@click.option("--all", "show_all", is_flag=True, help="include toklip's builtins")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--strict", is_flag=True, help="exit 1 if any plugin is not ok")
@click.option("--check", "run_check", is_flag=True,
              help="import every plugin factory and run the conformance checks on the plugins' *-test components; "
                   "exit 1 if anything fails")
def plugins_command(show_all: bool, as_json: bool, strict: bool, run_check: bool) -> None:
    """List installed plugin distributions and their status (ok, broken, blocked, incompatible, duplicate,
    conflict)."""
    from toklip.core.host import get_host

    if run_check:
        _check_plugins(as_json)
        return
    records = get_host().records(include_builtins=show_all)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
    elif not records:
        click.echo("no plugins installed (toklip plugins --all shows the builtins)")
    else:
        rows = [[r.name, r.dist or "", r.version or "", r.status, r.error or ", ".join(r.hooks)] for r in records]
        click.echo(_table(rows, ["NAME", "DIST", "VERSION", "STATUS", "DETAILS"]))
    if strict and any(r.status not in {"ok", "builtin"} for r in records):
        sys.exit(1)


def _check_plugins(as_json: bool) -> None:
    from toklip.testing.plugin_check import check_plugins

    results = check_plugins(echo=None if as_json else lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    elif not results:
        click.echo("no plugins installed: nothing to check")
    else:
        rows = [[r.plugin, r.kind, r.name, r.check, r.result, r.detail] for r in results]
        click.echo(_table(rows, ["PLUGIN", "KIND", "NAME", "CHECK", "RESULT", "DETAILS"]))
        failed = sum(r.result == "FAIL" for r in results)
        click.echo(f"\n{len(results)} checks: {failed} failed, "
                   f"{sum(r.result == 'skipped' for r in results)} skipped")
    if any(r.result == "FAIL" for r in results):
        sys.exit(1)


@click.command("doctor")
def doctor_command() -> None:
    """Versions, devices and which attention backends can run here (and why not)."""
    import importlib.metadata as md
    import platform

    click.echo(f"python      {platform.python_version()} ({sys.executable})")
    for dist in ("toklip", "torch", "triton", "open_clip_torch", "timm", "transformers", "huggingface_hub",
                 "pluggy", "safetensors", "flash-attn", "xformers", "toklip-kernels"):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            version = "not installed"
        click.echo(f"{dist:<20}{version}")
    import torch

    cuda = torch.cuda.is_available()
    click.echo(f"cuda        {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available'}")
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        click.echo(f"capability  sm_{major}{minor}; CUDA {torch.version.cuda}")
    from toklip.layers.attention import AUTO_PRIORITY, backend_instance
    from toklip.core.host import get_host

    click.echo("\nattention backends (auto priority: " + " > ".join(AUTO_PRIORITY) + "):")
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    q = torch.zeros(1, 16, 8, 72, device=device, dtype=dtype)
    for spec in get_host().registry("attn_backend"):
        status = spec.status()
        if status == "ok":
            try:
                reason = backend_instance(spec.name).supports(q, causal=True, has_mask=False)
            except Exception as e:  # noqa: BLE001 - doctor reports, never crashes
                reason = f"{type(e).__name__}: {e}"
            status = "usable" if reason is None else f"installed, not usable here: {reason}"
        click.echo(f"  {spec.name:<12}{status}")
    records = [r for r in get_host().records() if r.status != "ok"]
    if records:
        click.echo("\nplugins with problems:")
        for r in records:
            click.echo(f"  {r.name} ({r.dist}): {r.status}: {r.error}")


@click.command("convert")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--config", default=None, help="preset name or config.json (default: inferred from the checkpoint)")
def convert_command(checkpoint: str, out_dir: str, config: str | None) -> None:
    """Convert an official TokLIP checkpoint to OUT_DIR/model.safetensors + config.json (optimizer dropped)."""
    from toklip.model.loading import convert_official

    out = convert_official(checkpoint, out_dir, config=config)
    click.echo(f"wrote {out}/model.safetensors and {out}/config.json")
    click.echo(f"load it with: toklip.from_pretrained({str(out)!r})")

