"""The plugin host: builtins and entry-point plugins (group ``toklip``) behind one pluggy manager.

Policy (see docs/plugins.md):
- builtins register through the same hooks as plugins, and their names are reserved;
- plugins are discovered with ``importlib.metadata`` in a deterministic order, lazily, once per host;
- a broken plugin warns once, is recorded as ``broken`` and everything else keeps working
  (``TOKLIP_STRICT_PLUGINS=1`` or ``strict=True`` raises instead);
- the same entry-point or component name from two distributions is an error naming both;
- ``check_pending()`` runs after each plugin, so a misspelled hook fails loudly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pluggy

from toklip import hookspecs, known_plugins
from toklip._version import __version__
from toklip.core.errors import (
    InvalidComponentSpecError,
    PluginLoadError,
    UnknownComponentError,
    close_matches,
)
from toklip.core.kinds import KINDS, KINDS_TABLE, kind_label
from toklip.core.registry import ComponentSpec, Provider, Registry, make_spec

GROUP = "toklip"
BUILTIN_MODULES = ("toklip.builtin.plugin",)
KIND_HOOKS = {k.name: k.hook for k in KINDS_TABLE}


@dataclass
class PluginRecord:
    """What `toklip plugins` shows for one plugin."""

    name: str
    dist: str | None
    version: str | None
    module: str | None
    status: str  # builtin | ok | broken | blocked | incompatible | duplicate | conflict
    error: str | None = None
    hooks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["hooks"] = list(self.hooks)
        return d


def _env_list(var: str) -> list[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _strict_from_env() -> bool:
    return os.environ.get("TOKLIP_STRICT_PLUGINS", "").lower() in {"1", "true", "yes", "on"}


def _incompatibility(dist: importlib.metadata.Distribution | None) -> str | None:
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


class PluginHost:
    """Owns one pluggy manager, the plugin records and the per-kind registries built from the hooks."""

    def __init__(self, *, autoload: bool = True, strict: bool | None = None) -> None:
        self.autoload = autoload
        self.strict = _strict_from_env() if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("TOKLIP_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(print)
            self.pm.enable_tracing()
        self._records: dict[str, PluginRecord] = {}
        self._order: list[str] = []  # registration order of plugin names (builtins first)
        self._registries: dict[str, Registry] | None = None
        self._builtin_registries: dict[str, Registry] | None = None
        self._plugins_loaded = False
        self._lock = threading.RLock()
        self._load_builtins()

    # ---------------------------------------------------------------- loading
    def _load_builtins(self) -> None:
        for module_name in BUILTIN_MODULES:
            module = importlib.import_module(module_name)  # a failure here is a toklip bug: let it raise
            self.pm.register(module, name=module_name)
            self.pm.check_pending()
            self._order.append(module_name)
            self._records[module_name] = PluginRecord(
                name=module_name, dist="toklip", version=__version__, module=module_name, status="builtin",
                hooks=self._hooks_of(module_name),
            )

    def _hooks_of(self, plugin_name: str) -> tuple[str, ...]:
        plugin = self.pm.get_plugin(plugin_name)
        return tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))

    def _entry_points(self) -> list[importlib.metadata.EntryPoint]:
        eps = importlib.metadata.entry_points(group=GROUP)
        return sorted(eps, key=lambda e: (e.name, e.dist.name if e.dist else "", e.value))

    def load_plugins(self) -> None:
        """Discover and register entry-point plugins once. Safe to call repeatedly."""
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            if not self.autoload:
                return
            allow = _env_list("TOKLIP_LOAD_PLUGINS")
            deny = set(_env_list("TOKLIP_DISABLE_PLUGINS") or ())
            eps = self._entry_points()
            by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
            for ep in eps:
                by_name.setdefault(ep.name, []).append(ep)
            for name, group in by_name.items():
                dists = sorted({(e.dist.name if e.dist else "?") for e in group})
                if len(dists) > 1:
                    who = " and ".join(
                        f"{e.dist.name if e.dist else '?'}=={e.dist.version if e.dist else '?'} ({e.value})"
                        for e in group
                    )
                    self._fail(
                        PluginRecord(name, ", ".join(dists), None, None, "duplicate"),
                        f"entry point {name!r} is provided by {who}; uninstall one of them",
                    )
                    continue
                ep = group[0]
                dist, version = (ep.dist.name, ep.dist.version) if ep.dist else (None, None)
                record = PluginRecord(name, dist, version, ep.value, "ok")
                if allow is not None and name not in allow and (dist or "") not in allow:
                    record.status = "blocked"
                    record.error = "not listed in TOKLIP_LOAD_PLUGINS"
                    self._records[name] = record
                    continue
                if "*" in deny or name in deny or (dist and dist in deny):
                    record.status = "blocked"
                    record.error = "disabled by TOKLIP_DISABLE_PLUGINS"
                    self._records[name] = record
                    continue
                reason = _incompatibility(ep.dist)
                if reason:
                    record.status = "incompatible"
                    self._fail(record, reason)
                    continue
                try:
                    module = ep.load()
                except Exception as e:  # noqa: BLE001 - any import error of a plugin is isolated
                    record.status = "broken"
                    self._fail(record, f"{type(e).__name__}: {e}", e)
                    continue
                self.register_plugin(module, name=name, dist=dist, version=version, _record=record)
            self._registries = None

    def register_plugin(
        self,
        plugin: Any,
        *,
        name: str,
        dist: str | None = None,
        version: str | None = None,
        _record: PluginRecord | None = None,
    ) -> PluginRecord:
        """Register a module or object carrying hookimpls (what entry points do; tests use it directly)."""
        with self._lock:
            record = _record or PluginRecord(name, dist, version, getattr(plugin, "__name__", None), "ok")
            if self.pm.has_plugin(name) or name in self._records and self._records[name].status in {"ok", "builtin"}:
                record.status = "duplicate"
                self._fail(record, f"a plugin named {name!r} is already registered")
                return record
            try:
                self.pm.register(plugin, name=name)
                self.pm.check_pending()
            except Exception as e:  # noqa: BLE001 - misspelled hooks, bad signatures
                if self.pm.has_plugin(name):
                    self.pm.unregister(name=name)
                record.status = "broken"
                self._fail(record, f"{type(e).__name__}: {e}", e)
                return record
            record.hooks = self._hooks_of(name)
            self._records[name] = record
            self._order.append(name)
            self._registries = None
            return record

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._records.pop(name, None)
            if name in self._order:
                self._order.remove(name)
            self._registries = None

    def _fail(self, record: PluginRecord, message: str, exc: BaseException | None = None) -> None:
        record.error = message
        self._records[record.name] = record
        where = f"{record.dist}=={record.version}" if record.dist and record.version else (record.dist or record.name)
        text = (
            f"toklip: plugin {record.name!r} ({where}) {record.status}: {message} "
            "- run `toklip plugins` for details, or set TOKLIP_STRICT_PLUGINS=1 to raise"
        )
        if self.strict:
            raise PluginLoadError(text) from exc
        warnings.warn(text, RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------- registries
    def _build_registries(self, plugin_names: list[str]) -> dict[str, Registry]:
        registries = {kind: Registry(kind) for kind in KINDS}
        builtin_names: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for plugin_name in plugin_names:
            record = self._records[plugin_name]
            provider = Provider(
                plugin="builtin" if record.status == "builtin" else plugin_name,
                dist=record.dist,
                version=record.version,
            )
            try:
                specs = self._collect(plugin_name, provider)
            except Exception as e:  # noqa: BLE001 - a hook that raises marks only its plugin broken
                if record.status == "builtin":
                    raise
                record.status = "broken"
                self._fail(record, f"{type(e).__name__} while registering components: {e}", e)
                continue
            for spec in specs:
                reg = registries[spec.kind]
                if record.status == "builtin":
                    builtin_names[spec.kind].update((spec.name, *spec.aliases))
                    reg.add(spec)
                    continue
                clash = sorted(builtin_names[spec.kind].intersection((spec.name, *spec.aliases)))
                if clash:
                    record.status = "conflict"
                    record.error = (
                        f"{kind_label(spec.kind)} name {clash[0]!r} is reserved by toklip's builtins; "
                        f"{plugin_name!r} ({record.dist}) must use another name"
                    )
                    warnings.warn(f"toklip: plugin {plugin_name!r}: {record.error}", RuntimeWarning, stacklevel=3)
                    continue
                reg.add(spec)
        return registries

    def _collect(self, plugin_name: str, provider: Provider) -> list[ComponentSpec]:
        specs: list[ComponentSpec] = []
        for kind, hook_name in KIND_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue

                def register(name: str, factory: Any, _kind: str = kind, **meta: Any) -> None:
                    if not isinstance(name, str):
                        raise InvalidComponentSpecError(f"component name must be a string, got {name!r}")
                    specs.append(make_spec(_kind, name, factory, provider, **meta))

                impl.function(**{arg: register for arg in impl.argnames})
        return specs

    def registries(self, *, with_plugins: bool = True) -> dict[str, Registry]:
        with self._lock:
            if with_plugins:
                self.load_plugins()
                if self._registries is None:
                    self._registries = self._build_registries(list(self._order))
                return self._registries
            if self._builtin_registries is None:
                builtins = [n for n in self._order if self._records[n].status == "builtin"]
                self._builtin_registries = self._build_registries(builtins)
            return self._builtin_registries

    def registry(self, kind: str) -> Registry:
        if kind not in KINDS:
            raise InvalidComponentSpecError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        return self.registries()[kind]

    def get(self, kind: str, name: str) -> ComponentSpec:
        """Resolve a name: builtins first (no plugin scan), then plugins, then a helpful error."""
        if kind not in KINDS:
            raise InvalidComponentSpecError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        spec = self.registries(with_plugins=False)[kind].find(name)
        if spec is not None:
            return spec
        spec = self.registries()[kind].find(name)
        if spec is not None:
            return spec
        raise self.unknown(kind, name)

    def unknown(self, kind: str, name: str) -> UnknownComponentError:
        regs = self.registries()
        reg = regs[kind]
        other_kinds = [k for k in KINDS if k != kind and name in regs[k]]
        hint = None
        dist = known_plugins.provider_of(kind, name)
        broken = [r for r in self._records.values() if r.status not in {"ok", "builtin"}]
        if dist is not None:
            installed = [r for r in broken if r.dist == dist]
            if installed:
                r = installed[0]
                hint = (
                    f"{dist} {r.version or ''} is installed but {r.status}: {r.error}\n"
                    "  (details: toklip plugins --all; set TOKLIP_STRICT_PLUGINS=1 to raise at load time)"
                )
            else:
                hint = (
                    f"{name!r} is provided by the first-party plugin {dist}, which is not installed:\n"
                    f"      {known_plugins.install_hint(dist)}"
                )
        elif broken:
            names = ", ".join(f"{r.name} ({r.status})" for r in broken)
            hint = f"some plugins did not load and may provide it: {names} (toklip plugins --all)"
        return UnknownComponentError(
            kind,
            name,
            available=reg.names(),
            suggestions=[] if other_kinds else close_matches(name, reg.all_names()),
            other_kinds=other_kinds,
            hint=hint,
        )

    def records(self, *, include_builtins: bool = False) -> list[PluginRecord]:
        self.load_plugins()
        self.registries()  # registering may mark plugins broken/conflict: records must reflect that
        recs = sorted(self._records.values(), key=lambda r: (r.status != "builtin", r.name))
        return [r for r in recs if include_builtins or r.status != "builtin"]

    def call_register_commands(self, cli: Any) -> None:
        self.load_plugins()
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(**{a: cli for a in impl.argnames})
            except Exception as e:  # noqa: BLE001
                record = self._records.get(impl.plugin_name)
                if record is None or record.status == "builtin":
                    raise
                record.status = "broken"
                self._fail(record, f"{type(e).__name__} in register_commands: {e}", e)


_host: PluginHost | None = None
_host_lock = threading.Lock()


def get_host() -> PluginHost:
    """The process-wide host, created on first use (never at `import toklip`)."""
    global _host
    with _host_lock:
        if _host is None:
            _host = PluginHost()
        return _host


@contextmanager
def use_host(host: PluginHost) -> Iterator[PluginHost]:
    """Swap the process-wide host (tests: an isolated host that never autoloads installed plugins)."""
    global _host
    with _host_lock:
        saved, _host = _host, host
    try:
        yield host
    finally:
        with _host_lock:
            _host = saved


@contextmanager
def temp_plugin(plugin: Any, name: str = "temp-plugin", host: PluginHost | None = None) -> Iterator[PluginRecord]:
    """Register hookimpls for the duration of a block (the llm/datasette test pattern, made official)."""
    h = host or get_host()
    record = h.register_plugin(plugin, name=name)
    try:
        yield record
    finally:
        h.unregister_plugin(name)


def get_spec(kind: str, name: str) -> ComponentSpec:
    return get_host().get(kind, name)


def list_components(
    kind: str | None = None, pattern: str = "*", *, exclude: tuple[str, ...] = ()
) -> list[str] | dict[str, list[str]]:
    """Registered names of one kind (a list), or of every kind (a dict), matching an fnmatch pattern."""
    host = get_host()
    if kind is None:
        return {k: host.registry(k).names(pattern, exclude=exclude) for k in KINDS}
    return host.registry(kind).names(pattern, exclude=exclude)


def create(kind: str, name: str, **kwargs: Any) -> Any:
    return get_spec(kind, name).create(**kwargs)


def resolve_factory(kind: str, name: str) -> Callable[..., Any]:
    return get_spec(kind, name).load()
