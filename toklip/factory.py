"""Moved to ``toklip.model.factory``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.model.factory", warn=True)
