"""The ``toklip`` command line: the root group in :mod:`toklip.cli.main`, toklip's own commands in
:mod:`toklip.cli.builtin` and :mod:`toklip.cli.demo`; workflows add theirs through the ``register_commands`` hook."""

from toklip.cli.main import LazyGroup, cli, main

__all__ = ["LazyGroup", "cli", "main"]
