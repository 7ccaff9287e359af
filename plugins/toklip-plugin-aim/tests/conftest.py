"""toklip's test kit: every test runs under an isolated plugin host holding toklip's builtins plus this plugin
(from this project's pyproject.toml entry points), seeded and offline."""

pytest_plugins = ["toklip.testing.pytest_plugin"]
