"""Moved to :mod:`toklip.layers.attention`."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.layers.attention", warn=True)
