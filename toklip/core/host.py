"""The plugin host: builtins and entry-point plugins (group ``toklip``) behind one pluggy manager.

Policy (see docs/plugins.md):
- builtins register through the same hooks as plugins, and their names are reserved;
- plugins are discovered with ``importlib.metadata`` in a deterministic order, lazily, once per host;
- a broken plugin warns once, is recorded as ``broken`` and everything else keeps working
  (``TOKLIP_STRICT_PLUGINS=1`` or ``strict=True`` raises instead);
- the same entry-point name from two distributions is an error naming both; the same component name from
  two plugins marks both ``conflict`` and makes that one name unusable, while every other name still works;
- hook names and signatures are checked when a plugin registers (misspelled hooks, pluggy's default-argument
  gotcha), with the fix in the message;
- components registered in-process (``toklip.register``) join the registries with the provider ``runtime``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pluggy

from toklip.core import hookspecs, known_plugins
from toklip._version import __version__
from toklip.core.errors import (
    InvalidComponentSpecError,
    PluginLoadError,
    UnknownComponentError,
    close_matches,
)
from toklip.core.conflicts import conflict_messages
from toklip.core.discovery import GROUP  # noqa: F401 - toklip.core.host.GROUP stays importable
from toklip.core.discovery import STRICT_ENV, entry_points, env_list, incompatibility, strict_from_env
from toklip.core.hook_checks import describe_validation_error, hook_problems
from toklip.core.kinds import KINDS, KINDS_TABLE, kind_label
from toklip.core.plugin_warnings import warn_plugin
from toklip.core.registry import ComponentSpec, Provider, Registry, make_spec

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


class PluginHost:
    """Owns one pluggy manager, the plugin records and the per-kind registries built from the hooks."""

    def __init__(self, *, autoload: bool = True, strict: bool | None = None) -> None:
        self.autoload = autoload
        self.strict_from_env = strict is None and strict_from_env()
        self.strict = self.strict_from_env if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("TOKLIP_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(print)
            self.pm.enable_tracing()
        self._records: dict[str, PluginRecord] = {}
        self._order: list[str] = []  # registration order of plugin names (builtins first)
        self._loaded_state: dict[str, tuple[str, str | None]] = {}  # status/error before components registered
        self._marked_by_registration: set[str] = set()
        self.runtime_specs: dict[tuple[str, str], ComponentSpec] = {}  # toklip.register(...), in order
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
            problems = hook_problems(self.pm, module_name)
            if problems:
                raise PluginLoadError(f"toklip's builtin plugin {module_name}: " + "; ".join(problems))
            self.pm.check_pending()
            self._order.append(module_name)
            self._records[module_name] = PluginRecord(
                name=module_name, dist="toklip", version=__version__, module=module_name, status="builtin",
                hooks=self._hooks_of(module_name),
            )

    def _hooks_of(self, plugin_name: str) -> tuple[str, ...]:
        plugin = self.pm.get_plugin(plugin_name)
        return tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))

    def load_plugins(self) -> None:
        """Discover and register entry-point plugins once. Safe to call repeatedly."""
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            if not self.autoload:
                return
            allow = env_list("TOKLIP_LOAD_PLUGINS")
            deny = set(env_list("TOKLIP_DISABLE_PLUGINS") or ())
            by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
            for ep in entry_points():
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
                    record.status, record.error = "blocked", "not listed in TOKLIP_LOAD_PLUGINS"
                    self._records[name] = record
                    continue
                if "*" in deny or name in deny or (dist and dist in deny):
                    record.status, record.error = "blocked", "disabled by TOKLIP_DISABLE_PLUGINS"
                    self._records[name] = record
                    continue
                reason = incompatibility(ep.dist)
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
        """Register a module or object carrying hookimpls (what entry points do; tests use it directly).

        Registering the same object again returns its record: a test kit that already holds the plugin under
        test and a test that registers it itself agree."""
        with self._lock:
            if self.pm.is_registered(plugin):
                return self._records[self.pm.get_name(plugin)]
            record = _record or PluginRecord(name, dist, version, getattr(plugin, "__name__", None), "ok")
            if self.pm.has_plugin(name) or name in self._records and self._records[name].status in {"ok", "builtin"}:
                record.status = "duplicate"
                self._fail(record, f"a plugin named {name!r} is already registered")
                return record
            try:
                self.pm.register(plugin, name=name)
                problems = hook_problems(self.pm, name)
                if problems:
                    raise PluginLoadError("; ".join(problems))
                self.pm.check_pending()
            except Exception as e:  # noqa: BLE001 - misspelled hooks, bad signatures
                if self.pm.has_plugin(name):
                    self.pm.unregister(name=name)
                record.status = "broken"
                own = isinstance(e, PluginLoadError)
                self._fail(record, str(e) if own else f"{type(e).__name__}: {describe_validation_error(e)}", e)
                return record
            record.hooks = self._hooks_of(name)
            self._records[name] = record
            self._loaded_state[name] = (record.status, record.error)
            self._order.append(name)
            self._registries = None
            return record

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._records.pop(name, None)
            self._loaded_state.pop(name, None)
            self._marked_by_registration.discard(name)
            if name in self._order:
                self._order.remove(name)
            self._registries = None

    def _fail(self, record: PluginRecord, message: str, exc: BaseException | None = None, *,
              may_raise: bool = True) -> None:
        """Record a plugin's problem and warn once (strict hosts raise, except for name conflicts: those make
        only the contested name unusable, and lookups of it raise AmbiguousComponentError)."""
        record.error = message
        self._records[record.name] = record
        where = f"{record.dist}=={record.version}" if record.dist and record.version else (record.dist or record.name)
        text = f"toklip: plugin {record.name!r} ({where}) {record.status}: {message}"
        if self.strict and may_raise:
            why = (f"{STRICT_ENV} is set, so this is an error; unset it to skip this plugin and load the others"
                   if self.strict_from_env else "this plugin host is strict")
            raise PluginLoadError(f"{text}\n  ({why}; `toklip plugins` shows every plugin's status)") from exc
        tail = f", or set {STRICT_ENV}=1 to raise" if may_raise and not self.strict else ""
        warn_plugin(record.name, f"{text} - run `toklip plugins` for details{tail}")

    # ---------------------------------------------------------------- registries
    def _restore_loaded_state(self, plugin_names: list[str]) -> None:
        """Statuses set while registering components (conflict, broken hook) are recomputed on every rebuild:
        unregistering the other party of a conflict clears it."""
        for name in plugin_names:
            if name in self._marked_by_registration and name in self._loaded_state:
                self._records[name].status, self._records[name].error = self._loaded_state[name]
                self._marked_by_registration.discard(name)

    def _mark(self, record: PluginRecord, status: str, message: str, exc: BaseException | None = None) -> None:
        """A registration-time problem of one plugin (its other components keep working)."""
        if record.status == status and record.error and message not in record.error:
            message = f"{record.error}; {message}"
        record.status = status
        self._marked_by_registration.add(record.name)
        self._fail(record, message, exc, may_raise=status != "conflict")

    def _build_registries(self, plugin_names: list[str], *, runtime: bool) -> dict[str, Registry]:
        self._restore_loaded_state(plugin_names)
        registries = {kind: Registry(kind) for kind in KINDS}
        builtin_names: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for plugin_name in plugin_names:
            record = self._records[plugin_name]
            builtin = record.status == "builtin"
            provider = Provider(plugin="builtin" if builtin else plugin_name, dist=record.dist,
                                version=record.version)
            try:
                specs = self._collect(plugin_name, provider)
            except Exception as e:  # noqa: BLE001 - a hook that raises marks only its plugin broken
                if builtin:
                    raise
                self._mark(record, "broken", f"{type(e).__name__} while registering components: {e}", e)
                continue
            reserved: list[str] = []
            for spec in specs:
                if builtin:
                    builtin_names[spec.kind].update((spec.name, *spec.aliases))
                    registries[spec.kind].add(spec)
                    continue
                clash = sorted(builtin_names[spec.kind].intersection((spec.name, *spec.aliases)))
                if clash:
                    reserved.append(f"{kind_label(spec.kind)} name {clash[0]!r} is reserved by toklip's builtins")
                    continue
                registries[spec.kind].add(spec)
            if reserved:
                self._mark(record, "conflict", "; ".join(reserved) + f"; {plugin_name!r} must use another name")
        if runtime:
            for spec in self.runtime_specs.values():
                registries[spec.kind].add(spec)
        self._mark_conflicts(registries)
        return registries

    def _mark_conflicts(self, registries: dict[str, Registry]) -> None:
        """Every plugin claiming a contested name shows ``conflict``, naming the other party."""
        plugins = {n: Provider(n, r.dist, r.version) for n, r in self._records.items() if r.status != "builtin"}
        for plugin_name, message in conflict_messages(registries, plugins).items():
            self._mark(self._records[plugin_name], "conflict", message)

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
                    self._registries = self._build_registries(list(self._order), runtime=True)
                return self._registries
            if self._builtin_registries is None:
                builtins = [n for n in self._order if self._records[n].status == "builtin"]
                self._builtin_registries = self._build_registries(builtins, runtime=False)
            return self._builtin_registries

    def registry(self, kind: str) -> Registry:
        check_kind(kind)
        return self.registries()[kind]

    def get(self, kind: str, name: str) -> ComponentSpec:
        """Resolve a name: builtins first (no plugin scan), then plugins, then a helpful error."""
        check_kind(kind)
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
                    f"  (details: toklip plugins --all; set {STRICT_ENV}=1 to raise at load time)"
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

    # ---------------------------------------------------------------- in-process registration
    def add_runtime(self, spec: ComponentSpec) -> None:
        """Add (or replace, same kind and name) a component registered in this process: see toklip.core.runtime,
        which validates it first."""
        with self._lock:
            self.runtime_specs.pop((spec.kind, spec.name), None)
            self.runtime_specs[(spec.kind, spec.name)] = spec
            self._registries = None

    def remove_runtime(self, spec: ComponentSpec) -> None:
        with self._lock:
            self.runtime_specs.pop((spec.kind, spec.name), None)
            self._registries = None

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


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        suggestion = close_matches(kind, KINDS, n=1)
        hint = f" (did you mean {suggestion[0]!r}?)" if suggestion else ""
        raise InvalidComponentSpecError(f"unknown component kind {kind!r}{hint}; kinds are {', '.join(KINDS)}")


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
    if h.pm.is_registered(plugin):  # already there (e.g. the test kit's host holds it): leave it there
        yield h.register_plugin(plugin, name=name)
        return
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
