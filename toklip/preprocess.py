"""Moved to :mod:`toklip.data.preprocess`."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.data.preprocess", warn=True)
