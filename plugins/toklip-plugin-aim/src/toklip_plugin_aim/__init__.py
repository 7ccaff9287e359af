"""Apple AIMv2 vision encoders for toklip. The plugin module (``toklip_plugin_aim.plugin``) imports nothing heavy."""

__version__ = "0.1.0"
