"""``toklip plugins --check``: find a broken plugin before a user builds with it.

Every component an installed plugin registers is imported (its factory resolved; presets read and validated),
and every ``*-test`` component goes through its kind's conformance check from the kinds table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from toklip.core.errors import MissingDependencyError
from toklip.core.host import PluginHost, get_host, use_host
from toklip.core.kinds import KIND_BY_NAME, KINDS
from toklip.core.registry import RUNTIME, ComponentSpec

OK, FAIL, SKIPPED = "ok", "FAIL", "skipped"


@dataclass
class CheckResult:
    """One row of the report: which plugin and component, which check, and how it went."""

    plugin: str
    kind: str
    name: str
    check: str  # load | import | conformance
    result: str  # ok | FAIL | skipped
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _load_check(check: str) -> Callable[..., Any]:
    module, _, attr = check.partition(":")
    return getattr(importlib.import_module(module), attr)


def _import(spec: ComponentSpec) -> None:
    if spec.kind == "preset":
        from toklip.model.factory import preset_data, resolve_config
        from toklip.presets.schema import validate_preset

        data = preset_data(spec)
        validate_preset(data, source=f"preset {spec.name!r}")
        resolve_config(data)
    else:
        spec.load()


def _is_test_variant(spec: ComponentSpec) -> bool:
    return any(n.endswith("-test") for n in (spec.name, *spec.aliases))


def check_plugins(host: PluginHost | None = None, *, conformance: bool = True,
                  echo: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Check every installed plugin of ``host`` (default: the process-wide host) -> one row per check."""
    host = host or get_host()
    with use_host(host):  # the conformance checks look components up in the current host
        return _check(host, conformance, echo)


def _check(host: PluginHost, conformance: bool, echo: Callable[[str], None] | None) -> list[CheckResult]:
    results: list[CheckResult] = []
    for record in host.records():
        if record.status == "blocked":
            results.append(CheckResult(record.name, "-", "-", "load", SKIPPED, record.error or "blocked"))
        elif record.status != "ok":
            results.append(CheckResult(record.name, "-", "-", "load", FAIL, f"{record.status}: {record.error}"))
        else:
            results.append(CheckResult(record.name, "-", "-", "load", OK, ", ".join(record.hooks)))
    registries = host.registries()
    for kind in KINDS:
        check = KIND_BY_NAME[kind].check
        for spec in registries[kind]:
            plugin = spec.provider.plugin if spec.provider else "?"
            if plugin in {"builtin", RUNTIME}:
                continue
            if echo is not None:
                echo(f"checking {kind} {spec.name} ({spec.describe_provider()})")
            try:
                _import(spec)
            except MissingDependencyError as e:
                results.append(CheckResult(plugin, kind, spec.name, "import", SKIPPED, _one_line(e)))
                continue
            except Exception as e:  # noqa: BLE001 - every failure is a row of the report
                results.append(CheckResult(plugin, kind, spec.name, "import", FAIL, _one_line(e)))
                continue
            results.append(CheckResult(plugin, kind, spec.name, "import", OK))
            if not (conformance and check and _is_test_variant(spec)):
                continue
            try:
                _load_check(check)(spec.name)
            except MissingDependencyError as e:
                results.append(CheckResult(plugin, kind, spec.name, "conformance", SKIPPED, _one_line(e)))
            except Exception as e:  # noqa: BLE001 - AssertionError or whatever the component raised
                results.append(CheckResult(plugin, kind, spec.name, "conformance", FAIL, _one_line(e)))
            else:
                results.append(CheckResult(plugin, kind, spec.name, "conformance", OK))
    return sorted(results, key=lambda r: (r.plugin, r.kind != "-", r.kind, r.name, r.check))
