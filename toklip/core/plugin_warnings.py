"""Warnings about plugins: shown once per plugin and problem per process, and printed by the CLI as one plain
line (no file name, no internal source line)."""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any, TextIO


class PluginWarning(RuntimeWarning):
    """A plugin that did not load or register cleanly; ``toklip plugins`` shows the details."""


_shown: set[tuple[str, str]] = set()
_lock = threading.Lock()


def warn_plugin(plugin: str, message: str) -> None:
    """Warn about ``plugin`` unless this very message was already shown in this process (a command builds
    its registries more than once; the user needs to read it once)."""
    with _lock:
        if (plugin, message) in _shown:
            return
        _shown.add((plugin, message))
    warnings.warn(message, PluginWarning, stacklevel=3)


def reset_shown() -> None:
    """Forget which warnings were shown (test isolation: each test sees its own plugins' warnings)."""
    with _lock:
        _shown.clear()


def show_plugin_warnings_plainly(stream: TextIO | None = None) -> None:
    """Print plugin warnings as ``toklip: warning: <message>`` lines (what the CLI wants); other warnings keep
    Python's format."""
    previous = warnings.showwarning

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        if isinstance(category, type) and issubclass(category, PluginWarning):
            out = file or stream or sys.stderr
            text = str(message).removeprefix("toklip: ")
            try:
                out.write(f"toklip: warning: {text}\n")
            except OSError:  # a closed stderr must not turn a warning into a crash
                pass
            return
        previous(message, category, filename, lineno, file, line)

    showwarning._toklip_plain = True  # type: ignore[attr-defined]
    if not getattr(previous, "_toklip_plain", False):
        warnings.showwarning = showwarning
