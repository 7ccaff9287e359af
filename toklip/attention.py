"""Moved to ``toklip.model.attention``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.model.attention", warn=False)
