__version__ = "0.1.0"
# Bumped only when the hookspecs change incompatibly; plugins pin `toklip>=0.1,<0.2` accordingly.
PLUGIN_API = 1
