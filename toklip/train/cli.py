"""``toklip train CONFIG [section.key=value ...] [--resume latest]`` (also ``python -m toklip.train.cli``).

Under torchrun every process runs the same command:
``torchrun --nproc-per-node 8 -m toklip.train.cli cfg.yaml data.batch_size=32``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config value (repeatable)")
@click.option("--resume", default=None, metavar="latest|DIR",
              help="continue from the newest checkpoint in train.out_dir ('latest') or from a checkpoint folder")
@click.option("--out", "out_dir", default=None, help="output folder (train.out_dir)")
@click.option("--steps", type=int, default=None, help="total optimizer steps (train.steps)")
@click.option("--print-config", is_flag=True, help="print the resolved config and exit")
def train_command(config: str | None, overrides: tuple[str, ...], sets: tuple[str, ...], resume: str | None,
                  out_dir: str | None, steps: int | None, print_config: bool) -> None:
    """Train TokLIP from a YAML/JSON CONFIG plus section.key=value OVERRIDES.

    \b
    Example:
      toklip train run.yaml data.path='shards/{00000..00099}.tar' train.steps=10000 --resume latest
    Every run writes OUT/config.resolved.yaml, OUT/metrics.jsonl and OUT/checkpoints/step_*/.
    """
    from toklip.train.config import TrainConfig

    if config is not None and "=" in config and not Path(config).is_file():
        overrides, config = (config, *overrides), None  # no file, only overrides
    items = list(overrides) + list(sets)
    if out_dir:
        items.append(f"train.out_dir={out_dir}")
    if steps is not None:
        items.append(f"train.steps={steps}")
    cfg = TrainConfig.load(config, items)
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    from toklip.train.trainer import Trainer

    trainer = Trainer(cfg, echo=click.echo)
    result = trainer.fit(resume=resume)
    if trainer.info.is_main:
        click.echo(f"done: {result.step} steps in {result.seconds:.1f} s; checkpoint {result.checkpoint}; "
                   f"{result.skipped_samples} unreadable sample(s) skipped")


def main() -> None:
    from toklip.cli import main as toklip_main

    import sys

    toklip_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
