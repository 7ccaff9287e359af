"""toklip's test kit: every test runs under an isolated plugin host holding toklip's builtins plus this plugin
(read from this project's pyproject.toml entry points), seeded, offline, with GPU tests skipped without CUDA."""

pytest_plugins = ["toklip.testing.pytest_plugin"]
