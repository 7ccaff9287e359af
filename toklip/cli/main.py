"""The ``toklip`` command line. Subcommands come from the ``register_commands`` hook (builtins included),
and heavy subcommands import their code only when run, so ``toklip list`` stays fast."""

from __future__ import annotations

import sys
from typing import Any

import click

from toklip._version import __version__


class LazyGroup(click.Group):
    """A click group whose subcommands may be "module:attr" strings imported on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = {}
        self._hooks_loaded = False

    def add_lazy_command(self, name: str, target: str, help: str = "") -> None:
        self.lazy[name] = (target, help)

    def _load_hooks(self) -> None:
        if not self._hooks_loaded:
            self._hooks_loaded = True
            from toklip.core.host import get_host

            get_host().call_register_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_hooks()
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load_hooks()
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in self.lazy:
            return cmd
        import importlib

        target, _ = self.lazy[name]
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        self.add_command(cmd, name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._load_hooks()
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(80)))
            else:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toklip")
def cli() -> None:
    """toklip: TokLIP visual tokenizers (discrete VQ tokens + CLIP-level semantic features)."""


def main(argv: list[str] | None = None) -> None:
    from toklip.core.errors import TokLIPError
    from toklip.core.plugin_warnings import show_plugin_warnings_plainly

    show_plugin_warnings_plainly()  # "toklip: warning: ..." lines, without Python's file and source line
    try:
        cli.main(args=argv, prog_name="toklip", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except TokLIPError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
