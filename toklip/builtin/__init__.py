"""toklip's first-party components (registered through toklip.builtin.plugin)."""
