"""Moved to ``toklip.weights.official_config``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.weights.official_config", warn=False)
