"""The preset JSON format as a JSON Schema (``preset.schema.json`` beside this file) and a validator for the
subset of JSON Schema it uses, so toklip needs no ``jsonschema`` dependency.

``TokLIPConfig.from_dict`` enforces the same rules when a preset is loaded; this module gives plugin authors
and ``toklip plugins --check`` the schema's view, with the JSON path of each problem.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from toklip.core.errors import ConfigError

SCHEMA_FILE = "preset.schema.json"
# The keywords this validator understands; a schema using any other one is refused, never half-checked.
KEYWORDS = frozenset({
    "$schema", "$ref", "$defs", "title", "description", "default", "type", "enum", "properties", "required",
    "additionalProperties", "anyOf", "minimum", "maximum", "minLength",
})
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, Mapping),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
}


@lru_cache(maxsize=1)
def preset_schema() -> dict[str, Any]:
    """The shipped schema (package data of toklip)."""
    text = importlib.resources.files("toklip.presets").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def schema_errors(data: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every place where ``data`` breaks the schema, as ``"$.path: what is wrong"`` (empty: valid)."""
    root = dict(schema if schema is not None else preset_schema())
    errors: list[str] = []
    _check(data, root, root, "$", errors)
    return errors


def validate_preset(data: Any, *, source: str = "preset") -> None:
    """Raise ConfigError listing every schema violation of ``data``."""
    errors = schema_errors(data)
    if errors:
        raise ConfigError(f"{source} does not follow toklip/presets/{SCHEMA_FILE}:\n  " + "\n  ".join(errors))


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str, errors: list[str]) -> None:
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"schema at {path} uses unsupported keyword(s) {sorted(unknown)}")
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path, errors)
    if "anyOf" in schema:
        branches = []
        for option in schema["anyOf"]:
            found: list[str] = []
            _check(value, option, root, path, found)
            if not found:
                break
            branches.append("; ".join(found))
        else:
            errors.append(f"{path}: matches none of the allowed forms ({' | '.join(branches)})")
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {json.dumps(value)[:60]}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}, got {json.dumps(value)[:60]}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: must be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: must be <= {schema['maximum']}, got {value}")
    if isinstance(value, str) and "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: must not be shorter than {schema['minLength']} character(s)")
    if isinstance(value, Mapping):
        _check_object(value, schema, root, path, errors)


def _check_object(value: Mapping[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: str,
                  errors: list[str]) -> None:
    properties = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            errors.append(f"{path}: missing required key {key!r}")
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], root, f"{path}.{key}", errors)
        elif schema.get("additionalProperties", True) is False:
            errors.append(f"{path}: unknown key {key!r} (known: {', '.join(properties)})")
