"""The ``conflict`` status of plugins: which plugins claim a contested component name, worded for the person who
has to fix it (the other party, and the switch that disables either of them)."""

from __future__ import annotations

from collections.abc import Mapping

from toklip.core.kinds import kind_label
from toklip.core.registry import Provider, Registry, disable_hint


def describe(provider: Provider | None, plugins: set[str]) -> str:
    """A provider as people know it: its distribution, and its entry point when it is an installed plugin."""
    if provider is None:
        return "an unknown provider"
    if provider.plugin in plugins and provider.plugin != "builtin":
        return f"{provider.describe()} (entry point {provider.plugin!r})"
    return provider.describe()


def conflict_messages(registries: Mapping[str, Registry], plugins: Mapping[str, Provider]) -> dict[str, str]:
    """plugin name -> why it is in conflict, for every plugin (of ``plugins``) claiming a contested name."""
    known = set(plugins)
    contested: dict[str, dict[tuple[str, tuple[Provider | None, ...]], list[str]]] = {}
    for kind, reg in registries.items():
        for name, specs in reg.conflicts().items():
            for spec in specs:
                if spec.provider is None or spec.provider.plugin not in known:
                    continue
                others = tuple(dict.fromkeys(s.provider for s in specs if s.provider != spec.provider))
                contested.setdefault(spec.provider.plugin, {}).setdefault((kind, others), []).append(name)
    messages: dict[str, str] = {}
    for plugin_name, groups in contested.items():
        parts = []
        for (kind, others), names in groups.items():
            label = kind_label(kind) + (" names " if len(names) > 1 else " name ") + ", ".join(map(repr, names))
            if not others:
                parts.append(f"{label}: registered more than once by this plugin; unusable until it registers each "
                             "name once")
                continue
            who = " and ".join(describe(o, known) for o in others)
            fixes = " or ".join(
                f"TOKLIP_DISABLE_PLUGINS={p.plugin}" if p is not None and p.plugin in known else disable_hint(p)
                for p in (plugins[plugin_name], *others)
            )
            parts.append(f"{label} also registered by {who}; unusable until one is disabled: {fixes}")
        messages[plugin_name] = "; ".join(parts)
    return messages
