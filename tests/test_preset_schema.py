"""The preset JSON Schema (toklip/presets/preset.schema.json) documents exactly what TokLIPConfig.from_dict
accepts: same keys, same required ones, same limits, and the two agree on good and bad presets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from toklip.core.errors import ConfigError
from toklip.model.config import RESIZE_MODES, SCHEMA_VERSION, TokLIPConfig
from toklip.presets.schema import preset_schema, schema_errors, validate_preset

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "toklip" / "presets").glob("*.json") if not p.name.endswith(".schema.json"))


def test_schema_ships_as_package_data():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    toklip_data = re.search(r"^toklip\s*=\s*\[(.*)\]", section, re.M).group(1)
    assert '"presets/*.json"' in toklip_data  # the glob ships preset.schema.json beside the presets
    assert preset_schema()["required"] == ["vq", "encoder"]


def test_schema_matches_the_config_fields():
    schema = preset_schema()
    assert set(schema["properties"]) == set(TokLIPConfig.FIELDS) and schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["maximum"] == SCHEMA_VERSION
    assert tuple(schema["properties"]["resize_mode"]["enum"]) == RESIZE_MODES


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_builtin_presets_follow_the_schema(path):
    data = json.loads(path.read_text())
    assert schema_errors(data) == []
    assert schema_errors(TokLIPConfig.from_dict(data).to_dict()) == []  # what save_pretrained writes, too


BAD = {
    "missing encoder": {"vq": "llamagen-test"},
    "unknown key": {"vq": "a", "encoder": "b", "colour": "red"},
    "component without name": {"vq": {"ch": 4}, "encoder": "b"},
    "component of the wrong type": {"vq": 3, "encoder": "b"},
    "negative image size": {"vq": "a", "encoder": "b", "image_size": -4},
    "image size as text": {"vq": "a", "encoder": "b", "image_size": "256"},
    "unknown resize mode": {"vq": "a", "encoder": "b", "resize_mode": "crop"},
    "future schema": {"vq": "a", "encoder": "b", "schema_version": SCHEMA_VERSION + 1},
    "attention not a name": {"vq": "a", "encoder": "b", "attention": {"name": "causal"}},
    "not an object": ["vq", "encoder"],
}


@pytest.mark.parametrize("name", BAD)
def test_schema_and_loader_reject_the_same_presets(name):
    data = BAD[name]
    assert schema_errors(data), f"the schema accepts {name}"
    with pytest.raises(ConfigError):
        TokLIPConfig.from_dict(data)


def test_errors_name_the_json_path():
    with pytest.raises(ConfigError) as e:
        validate_preset({"vq": "a", "encoder": {"nam": "x"}, "image_size": 0}, source="preset 'mine'")
    text = str(e.value)
    assert text.startswith("preset 'mine' does not follow toklip/presets/preset.schema.json")
    assert "$.encoder" in text and "$.image_size: must be >= 1" in text


def test_the_validator_refuses_keywords_it_does_not_implement():
    with pytest.raises(ValueError, match="unsupported keyword"):
        schema_errors("x", {"type": "string", "pattern": "^a"})
