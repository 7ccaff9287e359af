"""Moved to ``toklip.weights.loader``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.weights.loader", warn=False)
