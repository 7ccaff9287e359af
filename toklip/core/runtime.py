"""In-process registration for notebooks, research scripts and tests (timm's ``@register_model``).

    @toklip.register("vq", "my-vq", summary="my experiment")
    class MyVQ(toklip.layers.VQTokenizerBase): ...

    toklip.register("fusion", "gated", "my_pkg.fusions:Gated")      # or a callable
    toklip.build(vq="my-vq", encoder="siglip2-test")
    toklip.unregister("vq", "my-vq")

Registrations get the same validation as plugins (name rules, reserved builtin names, conflicts with installed
plugins) and are listed by ``toklip list`` with the provider ``runtime``. They belong to the current plugin host
(``toklip.use_host``), so a test's isolated host never sees another test's registrations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from toklip.core.errors import InvalidComponentSpecError, UnknownComponentError, close_matches
from toklip.core.host import PluginHost, check_kind, get_host
from toklip.core.kinds import kind_label
from toklip.core.registry import RUNTIME, ComponentSpec, Provider, disable_hint, make_spec

F = TypeVar("F", bound=Callable[..., Any])


@overload
def register(kind: str, name: str, factory: None = None, *, aliases: Sequence[str] = (), summary: str | None = None,
             requires: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
             pretrained: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[[F], F]: ...


@overload
def register(kind: str, name: str, factory: Any, *, aliases: Sequence[str] = (), summary: str | None = None,
             requires: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
             pretrained: Mapping[str, Mapping[str, Any]] | None = None) -> ComponentSpec: ...


def register(
    kind: str,
    name: str,
    factory: Any = None,
    *,
    aliases: Sequence[str] = (),
    summary: str | None = None,
    requires: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    pretrained: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Register a component of ``kind`` in this process.

    ``factory`` is a callable (a class or function), a ``"module:attr"`` string, or for presets a config dict or
    JSON path. Without ``factory`` this is a decorator that registers what it decorates and returns it unchanged.
    Returns the :class:`~toklip.core.registry.ComponentSpec`. Raises ``InvalidComponentSpecError`` for a bad or
    reserved name, or one an installed plugin already provides. Registering the same kind and name again
    replaces the earlier registration (re-running a notebook cell).
    """
    meta = {"aliases": aliases, "summary": summary, "requires": requires, "defaults": defaults,
            "pretrained": pretrained}
    if factory is None:
        def decorator(obj: F) -> F:
            _register(get_host(), kind, name, obj, meta)
            return obj

        return decorator
    return _register(get_host(), kind, name, factory, meta)


def unregister(kind: str, name: str) -> ComponentSpec:
    """Remove a component registered with :func:`register` (by name or alias) -> its spec."""
    host = get_host()
    check_kind(kind)
    for (k, _), spec in list(host.runtime_specs.items()):
        if k == kind and name in (spec.name, *spec.aliases):
            host.remove_runtime(spec)
            return spec
    for other in host.registry(kind).claimants(name):
        raise InvalidComponentSpecError(
            f"{kind_label(kind)} {name!r} comes from {other.describe_provider()}, not from toklip.register; only "
            f"in-process registrations can be unregistered ({disable_hint(other.provider)})"
        )
    runtime = [s.name for (k, _), s in host.runtime_specs.items() if k == kind]
    raise UnknownComponentError(kind, name, available=runtime, suggestions=close_matches(name, runtime),
                                hint="only names registered with toklip.register can be unregistered")


def _register(host: PluginHost, kind: str, name: str, factory: Any, meta: dict[str, Any]) -> ComponentSpec:
    """The validation plugins get (name rules, reserved builtin names, conflicts), raised at once."""
    check_kind(kind)
    spec = make_spec(kind, name, factory, Provider(RUNTIME), **meta)
    names = (spec.name, *spec.aliases)
    builtin = host.registries(with_plugins=False)[kind]
    reserved = [n for n in names if n in builtin]
    if reserved:
        raise InvalidComponentSpecError(
            f"{kind_label(kind)} name {reserved[0]!r} is reserved by toklip's builtins; register under another name"
        )
    replaced = host.runtime_specs.get((kind, spec.name))
    current = host.registry(kind)
    for n in names:
        for other in current.claimants(n):
            if other is not replaced:
                raise InvalidComponentSpecError(
                    f"{kind_label(kind)} name {n!r} is already registered by {other.describe_provider()} "
                    f"(as {other.name!r}); pick another name, or {disable_hint(other.provider)}"
                )
    host.add_runtime(spec)
    return spec
