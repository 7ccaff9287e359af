"""HTTP serving: ``toklip serve`` (CLI), ``create_app(model, settings)`` (FastAPI app), ``ServeSettings``.

Needs the ``serve`` extra (``pip install 'toklip[serve]'``). Importing this package is cheap; the app,
torch and FastAPI load when ``create_app`` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toklip.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "load_model"]

_LAZY = {"create_app": "toklip.serve.app:create_app", "load_model": "toklip.model.loading:load_model"}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'toklip.serve' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    try:
        value = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        from toklip.core.errors import MissingDependencyError

        raise MissingDependencyError(
            f"toklip.serve needs {e.name or 'its extra packages'}: pip install 'toklip[serve]'"
        ) from e
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from toklip.serve.app import create_app
    from toklip.model.loading import load_model
