"""Moved to ``toklip.cli.builtin``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.cli.builtin", warn=True)
