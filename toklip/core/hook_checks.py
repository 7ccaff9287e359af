"""Checks of a plugin's hook implementations that pluggy does not word for people: a misspelled hook name
(with "did you mean"), and a hook argument with a default value (pluggy never passes those, so
``def register_encoders(register=None)`` would be called without ``register``)."""

from __future__ import annotations

from typing import Any

import pluggy

from toklip.core.errors import close_matches


def hook_names(pm: pluggy.PluginManager) -> list[str]:
    """The hooks with a spec (those of the kinds table and ``register_commands``), in declaration order."""
    return [name for name, caller in vars(pm.hook).items() if getattr(caller, "spec", None) is not None]


def hook_problems(pm: pluggy.PluginManager, plugin_name: str) -> list[str]:
    """What is wrong with the hooks ``plugin_name`` implements, one sentence each (empty: nothing)."""
    plugin = pm.get_plugin(plugin_name)
    problems: list[str] = []
    for caller in sorted(pm.get_hookcallers(plugin) or (), key=lambda c: c.name):
        if caller.spec is None:
            problems.append(_unknown_hook(caller.name, hook_names(pm)))
            continue
        expected = tuple(caller.spec.argnames)
        for impl in caller.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            defaulted = [a for a in impl.kwargnames if a in expected]
            if defaulted:
                shown = ", ".join(f"{a}=..." for a in defaulted)
                problems.append(
                    f"hook {caller.name}({shown}) gives {', '.join(map(repr, defaulted))} a default value, and pluggy "
                    f"never passes arguments that have defaults (so it would get None); write "
                    f"`def {caller.name}({', '.join(expected)}):`"
                )
    return problems


def _unknown_hook(name: str, known: list[str]) -> str:
    match = close_matches(name, known, n=1)
    hint = f"; did you mean {match[0]!r}?" if match else ""
    return f"{name!r} is not a toklip hook{hint} (toklip hooks: {', '.join(known)})"


def describe_validation_error(error: Any) -> str:
    """pluggy's PluginValidationError as one line (its message spans lines and names object reprs)."""
    return " ".join(str(error).split())
