"""Core: the table of component kinds, registries, the plugin host, hookspecs, protocols and errors."""
