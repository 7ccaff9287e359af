"""Moved to ``toklip.core.hookdocs``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.hookdocs", warn=True)
