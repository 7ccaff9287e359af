"""Lazy component specs and per-kind registries.

A spec holds a `"module:attr"` factory string, so listing components never imports torch or any
heavy dependency; requirements are checked through package metadata, not by importing.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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


RUNTIME = "runtime"  # the provider of components registered in-process with toklip.register


@dataclass(frozen=True)
class Provider:
    """Who registered a spec: the entry-point name and its distribution."""

    plugin: str
    dist: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.plugin == "builtin":
            return f"toklip {self.version} (builtin)"
        if self.plugin == RUNTIME:
            return RUNTIME
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


def module_problem(module: str) -> tuple[str, str] | None:
    """Why ``import module`` would fail for lack of the module itself, found without importing anything.

    -> None (found, or cannot tell cheaply), ``("missing", text)`` when its top-level package is not
    installed, or ``("broken", text)`` when the package is installed but the module inside it does not exist
    (a typo in a factory string). Only ``find_spec`` of the top-level package and file-system look-ups of the
    sub-packages: no plugin or model code runs, so ``toklip list`` stays fast.
    """
    if module in sys.modules:
        return None
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return "missing", f"module {parts[0]!r} (not installed)"
    locations = spec.submodule_search_locations
    name = parts[0]
    for part in parts[1:]:
        parent, name = name, f"{name}.{part}"
        loaded = sys.modules.get(name)
        if loaded is not None:
            locations = getattr(getattr(loaded, "__spec__", None), "submodule_search_locations", None)
            continue
        if locations is None:
            return "broken", f"{parent!r} is a module, not a package, so there is no {name!r}"
        try:
            sub = importlib.machinery.PathFinder.find_spec(name, list(locations))
        except (ImportError, ValueError):
            return None
        if sub is None:
            return "broken", f"no module {name!r} in the installed package {parts[0]!r}"
        locations = sub.submodule_search_locations
    return None


def _distribution_of(import_name: str) -> str | None:
    """'dist version' of the installed distribution holding a top-level import package, if metadata says."""
    try:
        dists = importlib.metadata.packages_distributions().get(import_name) or []
    except Exception:  # noqa: BLE001 - only used to word an error message
        return None
    if not dists:
        return None
    try:
        return f"{dists[0]} {importlib.metadata.version(dists[0])}"
    except importlib.metadata.PackageNotFoundError:
        return dists[0]


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
        """``ok``, ``missing: <requirements or module>`` or ``broken: <module missing inside its package>``,
        found from package metadata and ``find_spec`` alone (nothing is imported)."""
        missing = self.missing_requirements()
        if missing:
            return "missing: " + ", ".join(missing)
        if isinstance(self.factory, str) and self.kind != "preset":
            problem = module_problem(self.factory.partition(":")[0])
            if problem is not None:
                return f"{problem[0]}: {problem[1]}"
        return "ok"

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
        """Resolve the factory. A package that is not installed becomes MissingDependencyError naming the pip
        package; a module missing inside an installed package is reported as the plugin bug it is."""
        if not isinstance(self.factory, str):
            return self.factory
        self.check_requirements()
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise self._import_error(module_name, e) from e
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as e:
                raise InvalidComponentSpecError(
                    f"{kind_label(self.kind)} {self.name!r}: {module_name!r} has no attribute {attr!r} "
                    f"(registered by {self.describe_provider()}): this is a bug in the plugin; report it to its authors"
                ) from e
        return obj

    def describe_provider(self) -> str:
        return self.provider.describe() if self.provider else "an unknown provider"

    def _import_error(self, module_name: str, e: ModuleNotFoundError) -> Exception:
        """Tell "the package is not installed" (pip install it) from "the package is installed but a module
        inside it is missing" (a wrong factory string or a version mismatch: pip install cannot fix it)."""
        label = f"{kind_label(self.kind)} {self.name!r}"
        missing = e.name or module_name
        top = missing.split(".")[0]
        try:
            top_found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            top_found = False
        if not top_found or missing == top:
            pip = PIP_NAMES.get(top, top)
            return MissingDependencyError(
                f"{label} could not be imported: no module named {top!r} (not installed).\n  pip install {pip}"
            )
        where = _distribution_of(top)
        inside = f"the installed package {top!r}" + (f" (distribution {where})" if where else "")
        if module_name == missing or module_name.startswith(missing + "."):
            return InvalidComponentSpecError(
                f"{label}: module {missing!r} does not exist inside {inside}. The factory string "
                f"{self.factory!r} registered by {self.describe_provider()} names it: this is a bug in the plugin "
                "(reinstalling does not help); report it to its authors"
            )
        return MissingDependencyError(
            f"{label}: importing {module_name!r} needs the module {missing!r}, which does not exist inside "
            f"{inside}. {self.describe_provider()} expects another version of that package, or has a bug; "
            "check its requirements"
        )

    def create(self, **kwargs: Any) -> Any:
        """Call the factory. ``pretrained=True`` or a weights tag is resolved to a local file here, once, from
        this spec's own weights table: components only ever receive paths."""
        kwargs = {**self.defaults, **kwargs}
        value = kwargs.get("pretrained")
        if value and (value is True or (isinstance(value, str) and value in self.pretrained)):
            from toklip.weights.hub import resolve_weights  # lazy: listing components needs no weights code

            kwargs["pretrained"] = str(resolve_weights(self, value))
        return self.load()(**kwargs)


def natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Registry:
    """Names of one kind. A name claimed by two specs is a conflict: unusable (lookup raises, naming both
    providers) until one is disabled, never "last one wins"; every other name keeps working."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._claims: dict[str, list[ComponentSpec]] = {}  # name or alias -> every spec claiming it

    def add(self, spec: ComponentSpec) -> None:
        for n in dict.fromkeys((spec.name, *spec.aliases)):
            claims = self._claims.setdefault(n, [])
            if not any(c is spec for c in claims):
                claims.append(spec)

    def _owner(self, name: str) -> ComponentSpec | None:
        claims = self._claims.get(name)
        return claims[0] if claims and len(claims) == 1 else None

    def conflicts(self) -> dict[str, list[ComponentSpec]]:
        """Every name claimed by more than one spec, with the specs claiming it."""
        return {n: list(c) for n, c in self._claims.items() if len(c) > 1}

    def claimants(self, name: str) -> list[ComponentSpec]:
        """Every spec claiming a name or alias (two or more: a conflict)."""
        return list(self._claims.get(name, ()))

    def usable_aliases(self, spec: ComponentSpec) -> list[str]:
        return [a for a in spec.aliases if self._owner(a) is spec]

    def find(self, name: str) -> ComponentSpec | None:
        """The spec for a name or alias, None if unknown; raises if two providers claim it."""
        claims = self._claims.get(name)
        if claims and len(claims) > 1:
            raise AmbiguousComponentError(ambiguity_message(self.kind, name, claims))
        return claims[0] if claims else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._claims

    def _specs(self) -> dict[str, ComponentSpec]:
        """Specs whose own name is unambiguous, by name."""
        return {s.name: s for n, c in self._claims.items() if len(c) == 1 and (s := c[0]).name == n}

    def __iter__(self) -> Iterator[ComponentSpec]:
        return iter(sorted(self._specs().values(), key=lambda s: natural_key(s.name)))

    def names(
        self, pattern: str | Sequence[str] = "*", *, exclude: Sequence[str] = (), include_aliases: bool = False
    ) -> list[str]:
        """Usable names matching fnmatch pattern(s), naturally sorted (timm `list_models`)."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        usable = [n for n, c in self._claims.items() if len(c) == 1]
        pool = usable if include_aliases else list(self._specs())
        hits = {n for n in pool if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        hits -= {n for n in hits if any(fnmatch.fnmatchcase(n, p) for p in exclude)}
        return sorted(hits, key=natural_key)

    def all_names(self) -> list[str]:
        return sorted(self._claims, key=natural_key)

    @contextmanager
    def override(self, spec: ComponentSpec) -> Iterator[ComponentSpec]:
        """Temporarily replace (or add) one name and its aliases: the official test seam."""
        names = list(dict.fromkeys((spec.name, *spec.aliases)))
        saved = {n: self._claims.get(n) for n in names}
        for n in names:
            self._claims[n] = [spec]
        try:
            yield spec
        finally:
            for n, claims in saved.items():
                if claims is None:
                    self._claims.pop(n, None)
                else:
                    self._claims[n] = claims


def disable_hint(provider: Provider | None) -> str:
    """How to stop one provider from claiming names: the real switch for its kind of provider."""
    if provider is None:
        return "remove one of the registrations"
    if provider.plugin == RUNTIME:
        return "toklip.unregister(kind, name) in this process"
    if provider.plugin == "builtin":
        return "builtin names cannot be disabled"
    uninstall = f" (or pip uninstall {provider.dist})" if provider.dist else ""
    return f"TOKLIP_DISABLE_PLUGINS={provider.plugin}{uninstall}"


def ambiguity_message(kind: str, name: str, specs: Sequence[ComponentSpec]) -> str:
    """The error for a name claimed by several providers: who claims it (entry point, distribution, factory)
    and the exact switch that disables each of them."""
    lines = [f"{kind_label(kind)} {name!r} is registered by {len(specs)} providers, so it cannot be used:"]
    for s in specs:
        factory = s.factory if isinstance(s.factory, str) else getattr(s.factory, "__qualname__", repr(s.factory))
        entry = f"entry point {s.provider.plugin!r} of " if s.provider and s.provider.plugin not in {
            "builtin", RUNTIME} else ""
        lines.append(
            f"  - {entry}{s.describe_provider()} (as {s.name!r}, factory {factory}); "
            f"to disable it: {disable_hint(s.provider)}"
        )
    lines.append("  Disable or uninstall all but one of them, or ask the plugin authors to rename.")
    return "\n".join(lines)


def make_spec(kind: str, name: str, factory: Any, provider: Provider, **meta: Any) -> ComponentSpec:
    """Build a spec from a plugin's `register(...)` call, normalising the metadata types."""
    pretrained = meta.pop("pretrained", None) or {}
    try:
        weights = {
            tag: w if isinstance(w, Weights) else Weights(tag=tag, **w) for tag, w in dict(pretrained).items()
        }
    except TypeError as e:
        raise InvalidComponentSpecError(
            f"register({name!r}, ...): pretrained must map tags to {{'hf_hub_id': ..., 'file': ..., 'sha256': ..., "
            f"'license': ..., 'meta': ...}}: {e}"
        ) from e
    unknown = set(meta) - {"aliases", "requires", "defaults", "summary"}
    if unknown:
        raise InvalidComponentSpecError(
            f"register({name!r}, ...) got unknown keyword(s) {sorted(unknown)}; "
            "allowed: aliases, requires, defaults, pretrained, summary"
        )
    for key in ("aliases", "requires"):
        if isinstance(meta.get(key), str):
            raise InvalidComponentSpecError(
                f"register({name!r}, ...): {key} must be a tuple of strings, got the string {meta[key]!r} "
                f"(write {key}=({meta[key]!r},))"
            )
    return ComponentSpec(
        kind=kind,
        name=name,
        factory=factory,
        aliases=tuple(meta.get("aliases") or ()),
        requires=tuple(meta.get("requires") or ()),
        defaults=dict(meta.get("defaults") or {}),
        pretrained=weights,
        summary=meta.get("summary") or "",
        provider=provider,
    )
