"""Moved to ``toklip.model.official_config``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.model.official_config", warn=True)
