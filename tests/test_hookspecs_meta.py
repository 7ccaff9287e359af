"""Meta-tests (datasette habit): every hook is documented, and every hook is exercised by a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toklip.core.hookdocs import BEGIN, END, hook_names, render

ROOT = Path(__file__).resolve().parent.parent


def test_hook_reference_in_docs_is_generated_from_the_hookspecs():
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    block = text[text.index(BEGIN): text.index(END) + len(END)]
    assert block == render(), "docs/plugins.md is stale: run `python -m toklip.core.hookdocs --write docs/plugins.md`"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_exercised_by_a_test(hook):
    pattern = re.compile(rf"def {hook}\(")
    hits = [p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert hits, f"no test implements {hook}: add one that registers through it"
