"""``toklip ablate``: the paper's Table 5/6-style variants, trained and evaluated on the quickstart's data.

Every variant changes one thing against the TokLIP default (teacher-initialised token encoder, MLP projector,
contrastive + distillation, causal attention) and is trained with the same fixed steps, seed and data, on the
same frozen VQ tokenizer and teacher (the quickstart's, reused from ``--out`` when made with the same seed and
steps, else trained once). No stage stops at a time: a busy machine gives the same table, later.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click


@dataclass(frozen=True)
class Variant:
    name: str
    what: str  # the paper's question this row answers
    init: str = "teacher"
    projector: str = "mlp"
    attention: str = "causal"
    distill: bool = True


VARIANTS = (
    Variant("toklip", "default: teacher init, MLP, contrastive + distill, causal"),
    Variant("random-init", "token encoder from random init (Table 5: init)", init="random"),
    Variant("codebook", "codebook projector instead of the MLP (Table 5: projector)", projector="codebook"),
    Variant("contrastive-only", "no distillation loss (Table 6: losses)", distill=False),
    Variant("bidirectional", "bidirectional attention instead of causal (Table B2)", attention="bidirectional"),
)
COLUMNS = ("zero_shot_top1", "image_to_text_R@1", "text_to_image_R@1", "retrieval_mean")


def run_ablation(out: str | Path = "toklip-quickstart", *, scale: float = 1.0, seed: int = 0,
                 only: tuple[str, ...] = (), progress: bool = True,
                 echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate each variant; rows of {variant, what, metrics..., seconds}. Writes ablation.json."""
    from toklip.train import digits as D
    from toklip.train import quickstart as Q

    unknown = set(only) - {v.name for v in VARIANTS}
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {sorted(unknown)}; choose from {[v.name for v in VARIANTS]}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    steps = Q.Steps.scaled(scale)
    train, test = D.load_digits(Q.IMAGE_SIZE, seed=seed)
    folder, captions = Q.write_eval_split(test, out / "data", seed)
    Q.train_components(out, train, steps, seed=seed, progress=progress, echo=echo)
    rows = []
    for v in VARIANTS:
        if only and v.name not in only:
            continue
        t0 = time.perf_counter()
        echo(f"--- {v.name}: {v.what}")
        model = Q.build_toklip(out, init=v.init, projector=v.projector, attention=v.attention, seed=seed)
        result = Q.train_toklip(model, train, out / "ablation" / v.name, steps=steps.toklip, seed=seed,
                                distill=v.distill, progress=progress, echo=lambda s: None)
        model.eval()
        metrics = Q.evaluate(model, folder, captions)
        rows.append({"variant": v.name, "what": v.what, **metrics, "steps": result.step,
                     "seconds": round(time.perf_counter() - t0, 1)})
    from toklip.core.io import atomic_write_text

    atomic_write_text(out / "ablation.json", json.dumps(rows, indent=2) + "\n")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("variant", "zero-shot top-1", "I->T R@1", "T->I R@1", "retrieval mean", "time")
    body = [(r["variant"], *(f"{r[c]:.1%}" for c in COLUMNS), f"{r['seconds']:.0f} s") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


@click.group("ablate", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", default="toklip-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="the quickstart's folder (its VQ and teacher are reused when made with the same seed and "
                   "--scale; trained here otherwise)")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.01, 100),
              help="multiply every step count (VQ, teacher and each variant's; fixed, never cut short by time)")
@click.option("--seed", default=0, show_default=True)
@click.option("--only", multiple=True, help="run only these variants (repeatable): " + ", ".join(v.name for v in VARIANTS))
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.pass_context
def ablate_command(ctx: click.Context, out_dir: str, scale: float, seed: int, only: tuple[str, ...],
                   quiet: bool) -> None:
    """Train the quickstart's TokLIP in Table 5/6-style variants and print a comparison table.

    Subcommands run the downstream ablations: ``toklip ablate fusion`` (generator inputs, Table 7)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = run_ablation(out_dir, scale=scale, seed=seed, only=only, progress=not quiet, echo=click.echo)
    click.echo("")
    click.echo(format_table(rows))
    click.echo(f"\nrows in {Path(out_dir) / 'ablation.json'}")


@ablate_command.command("fusion")
@click.option("--out", "out_dir", default="toklip-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="the quickstart's folder: its trained TokLIP is the frozen tokenizer (the quickstart runs first "
                   "when it has none)")
@click.option("--steps", default=None, type=click.IntRange(1, 100_000),
              help="generator training steps per variant (default: the quickstart's; fixed, never cut short by time)")
@click.option("--seed", default=0, show_default=True)
@click.option("--only", multiple=True, help="run only these fusions (repeatable): none, sum, weighted_sum, concat")
@click.option("--quiet", is_flag=True, help="no progress bars")
def ablate_fusion_command(out_dir: str, steps: int | None, seed: int, only: tuple[str, ...], quiet: bool) -> None:
    """Paper Table 7 on the digits: a class-conditional generator per fusion of its inputs (none = plain VQ
    codes; sum, weighted_sum, concat with the frozen causal TokLIP), same seed and steps; class accuracy of the
    samples (the TokLIP's zero-shot classifier) and FID in the TokLIP's embedding space against held-out scans."""
    from toklip.gen import digits as G

    try:
        rows = G.run_fusion_ablation(out_dir, steps=steps or G.GEN_STEPS, seed=seed, only=only, progress=not quiet,
                                     echo=click.echo)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--only") from e
    click.echo("")
    click.echo(G.format_fusion_table(rows))
    click.echo(f"\nrows in {Path(out_dir) / 'fusion_ablation.json'}; sample grids in {Path(out_dir) / 'fusion_ablation'}")


def _add_downstream_ablations() -> None:
    from toklip.vlm.ablate import comprehension_command

    ablate_command.add_command(comprehension_command)


_add_downstream_ablations()
