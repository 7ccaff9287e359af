"""Moved to ``toklip.cli.demo``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.cli.demo", warn=True)
