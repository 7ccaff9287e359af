"""Finding installed plugins: the ``toklip`` entry-point group read with ``importlib.metadata`` in a
deterministic order, the environment switches, and the ``toklip`` version range a plugin declares."""

from __future__ import annotations

import importlib.metadata
import os

from toklip._version import __version__

GROUP = "toklip"
STRICT_ENV = "TOKLIP_STRICT_PLUGINS"


def env_list(var: str) -> list[str] | None:
    """A comma-separated environment variable as a list (None when unset; [] when set to "")."""
    raw = os.environ.get(var)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in {"1", "true", "yes", "on"}


def entry_points() -> list[importlib.metadata.EntryPoint]:
    """The group's entry points sorted by name and distribution, never in file-system order."""
    eps = importlib.metadata.entry_points(group=GROUP)
    return sorted(eps, key=lambda e: (e.name, e.dist.name if e.dist else "", e.value))


def incompatibility(dist: importlib.metadata.Distribution | None) -> str | None:
    """Why this distribution's declared `toklip` requirement excludes the running toklip, if it does."""
    if dist is None:
        return None
    from packaging.requirements import InvalidRequirement, Requirement

    for raw in dist.requires or ():
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            continue
        if req.name.lower() != "toklip" or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        if req.specifier and not req.specifier.contains(__version__, prereleases=True):
            return f"requires toklip{req.specifier}, but toklip {__version__} is installed"
    return None
