"""Moved to ``toklip.model.loading``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.model.loading", warn=True)
