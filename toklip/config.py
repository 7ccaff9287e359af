"""Moved to ``toklip.model.config``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.model.config", warn=True)
