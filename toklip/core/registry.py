"""Lazy component specs and per-kind registries.

A spec holds a `"module:attr"` factory string, so listing components never imports torch or any
heavy dependency; requirements are checked through package metadata, not by importing.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from toklip.core.errors import (
    AmbiguousComponentError,
    InvalidComponentSpecError,
    MissingDependencyError,
)
from toklip.core.kinds import KINDS, kind_label

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

# import name -> pip name, for the few packages where they differ (HF check_imports lesson).
PIP_NAMES = {
    "flash_attn": "flash-attn",
    "open_clip": "open-clip-torch",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
}
# pip name -> toklip extra that installs it
EXTRAS = {"flash-attn": "flash", "xformers": "xformers", "triton": "triton"}


@dataclass(frozen=True)
class Provider:
    """Who registered a spec: the entry-point name and its distribution."""

    plugin: str
    dist: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.plugin == "builtin":
            return f"toklip {self.version} (builtin)"
        if self.dist:
            return f"{self.dist} {self.version}"
        return self.plugin


@dataclass(frozen=True)
class Weights:
    """Where a component's pretrained weights live (timm pretrained cfg, trimmed)."""

    tag: str
    hf_hub_id: str | None = None
    file: str | None = None
    sha256: str | None = None
    license: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


def _requirement_problem(req: str) -> str | None:
    """None if `req` (PEP 508) is satisfied by an installed distribution, else a short reason."""
    from packaging.requirements import Requirement

    parsed = Requirement(req)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return None
    try:
        installed = importlib.metadata.version(parsed.name)
    except importlib.metadata.PackageNotFoundError:
        return f"{req} (not installed)"
    if parsed.specifier and not parsed.specifier.contains(installed, prereleases=True):
        return f"{req} (found {installed})"
    return None


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component: a name, a lazy factory and metadata. Stamped with its provider."""

    kind: str
    name: str
    factory: str | Callable[..., Any]
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    pretrained: Mapping[str, Weights] = field(default_factory=dict)
    summary: str = ""
    provider: Provider | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidComponentSpecError(f"unknown component kind {self.kind!r}; kinds are {', '.join(KINDS)}")
        for n in (self.name, *self.aliases):
            if not isinstance(n, str) or not NAME_RE.match(n):
                raise InvalidComponentSpecError(
                    f"invalid {kind_label(self.kind)} name {n!r}: use lowercase letters, digits, '-', '_' or '.', "
                    "starting with a letter or digit"
                )
        if self.kind == "preset":
            if not isinstance(self.factory, (str, dict)) and not hasattr(self.factory, "__fspath__"):
                raise InvalidComponentSpecError(
                    f"preset {self.name!r}: register a JSON path, a 'package:resource.json' string or a dict"
                )
        elif isinstance(self.factory, str):
            if ":" not in self.factory:
                raise InvalidComponentSpecError(
                    f"{kind_label(self.kind)} {self.name!r}: factory {self.factory!r} must look like 'package.module:attr'"
                )
        elif not callable(self.factory):
            raise InvalidComponentSpecError(f"{kind_label(self.kind)} {self.name!r}: factory must be callable")

    def missing_requirements(self) -> list[str]:
        return [p for r in self.requires if (p := _requirement_problem(r))]

    def status(self) -> str:
        missing = self.missing_requirements()
        return "missing: " + ", ".join(missing) if missing else "ok"

    def check_requirements(self) -> None:
        missing = self.missing_requirements()
        if missing:
            from packaging.requirements import Requirement

            reqs = [Requirement(m.split(" (")[0]) for m in missing]
            extras = sorted({EXTRAS[r.name] for r in reqs if r.name in EXTRAS})
            fix = f'pip install "toklip[{",".join(extras)}]"' if extras else "pip install " + " ".join(
                f'"{r}"' for r in reqs
            )
            raise MissingDependencyError(
                f"{kind_label(self.kind)} {self.name!r} needs {', '.join(missing)}.\n  {fix}"
            )

    def load(self) -> Callable[..., Any]:
        """Resolve the factory. Import failures become MissingDependencyError naming the pip package."""
        if not isinstance(self.factory, str):
            return self.factory
        self.check_requirements()
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            missing = (e.name or "").split(".")[0]
            pip = PIP_NAMES.get(missing, missing)
            raise MissingDependencyError(
                f"{kind_label(self.kind)} {self.name!r} could not be imported: no module named {missing!r}.\n"
                f"  pip install {pip}"
            ) from e
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as e:
                raise InvalidComponentSpecError(
                    f"{kind_label(self.kind)} {self.name!r}: {module_name!r} has no attribute {attr!r} "
                    f"(registered by {self.provider.describe() if self.provider else 'unknown'})"
                ) from e
        return obj

    def create(self, **kwargs: Any) -> Any:
        return self.load()(**{**self.defaults, **kwargs})


def natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Registry:
    """Names of one kind. Duplicates are kept as conflicts and raise on lookup, never last-wins."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, ComponentSpec] = {}
        self._aliases: dict[str, str] = {}
        self._conflicts: dict[str, list[ComponentSpec]] = {}

    def add(self, spec: ComponentSpec) -> None:
        for n in (spec.name, *spec.aliases):
            owner = self._owner(n)
            if owner is not None and owner is not spec:
                self._conflicts.setdefault(n, [owner]).append(spec)
                return
        self._specs[spec.name] = spec
        for a in spec.aliases:
            self._aliases[a] = spec.name

    def _owner(self, name: str) -> ComponentSpec | None:
        if name in self._specs:
            return self._specs[name]
        if name in self._aliases:
            return self._specs[self._aliases[name]]
        return None

    def conflicts(self) -> dict[str, list[ComponentSpec]]:
        return dict(self._conflicts)

    def find(self, name: str) -> ComponentSpec | None:
        """The spec for a name or alias, None if unknown; raises if two providers claim it."""
        if name in self._conflicts:
            specs = self._conflicts[name]
            who = " and ".join(
                f"{s.provider.describe() if s.provider else '?'} ({s.factory if isinstance(s.factory, str) else s.name})"
                for s in specs
            )
            raise AmbiguousComponentError(
                f"{kind_label(self.kind)} {name!r} is registered by {len(specs)} plugins: {who}.\n"
                "  Uninstall one of them, or disable one with TOKLIP_DISABLE_PLUGINS=<plugin>."
            )
        return self._owner(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self._owner(name) is not None or name in self._conflicts)

    def __iter__(self) -> Iterator[ComponentSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: natural_key(s.name)))

    def names(
        self, pattern: str | Sequence[str] = "*", *, exclude: Sequence[str] = (), include_aliases: bool = False
    ) -> list[str]:
        """Names matching fnmatch pattern(s), naturally sorted (timm `list_models`)."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        pool = list(self._specs) + (list(self._aliases) if include_aliases else [])
        hits = {n for n in pool if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        hits -= {n for n in hits if any(fnmatch.fnmatchcase(n, p) for p in exclude)}
        return sorted(hits, key=natural_key)

    def all_names(self) -> list[str]:
        return sorted(set(self._specs) | set(self._aliases) | set(self._conflicts), key=natural_key)

    @contextmanager
    def override(self, spec: ComponentSpec) -> Iterator[ComponentSpec]:
        """Temporarily replace (or add) one name: the official test seam."""
        saved_spec = self._specs.get(spec.name)
        saved_aliases = dict(self._aliases)
        self._specs[spec.name] = spec
        for a in spec.aliases:
            self._aliases[a] = spec.name
        try:
            yield spec
        finally:
            self._aliases = saved_aliases
            if saved_spec is None:
                self._specs.pop(spec.name, None)
            else:
                self._specs[spec.name] = saved_spec


def make_spec(kind: str, name: str, factory: Any, provider: Provider, **meta: Any) -> ComponentSpec:
    """Build a spec from a plugin's `register(...)` call, normalising the metadata types."""
    pretrained = meta.pop("pretrained", None) or {}
    weights = {
        tag: w if isinstance(w, Weights) else Weights(tag=tag, **w) for tag, w in dict(pretrained).items()
    }
    unknown = set(meta) - {"aliases", "requires", "defaults", "summary"}
    if unknown:
        raise InvalidComponentSpecError(
            f"register({name!r}, ...) got unknown keyword(s) {sorted(unknown)}; "
            "allowed: aliases, requires, defaults, pretrained, summary"
        )
    return ComponentSpec(
        kind=kind,
        name=name,
        factory=factory,
        aliases=tuple(meta.get("aliases") or ()),
        requires=tuple(meta.get("requires") or ()),
        defaults=dict(meta.get("defaults") or {}),
        pretrained=weights,
        summary=meta.get("summary", ""),
        provider=provider,
    )


def with_provider(spec: ComponentSpec, provider: Provider) -> ComponentSpec:
    return replace(spec, provider=provider)
