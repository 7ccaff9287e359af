"""Moved to ``toklip.weights.hub``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.weights.hub", warn=True)
