"""Exception types. Every message says what was wrong, what was expected, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from toklip.core.kinds import kind_label  # noqa: F401 - messages and plugins name kinds one way


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Near matches for a misspelled name (pip's `get_similar_commands` recipe)."""
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    prefix = [c for c in pool if c.lower().startswith(name.lower()) and c.lower() not in hits]
    return [lowered[h] for h in hits] + prefix[: max(0, n - len(hits))]


class TokLIPError(Exception):
    """Base class of every error toklip raises on purpose."""


class UnknownComponentError(TokLIPError, KeyError):
    """A component name that no registry knows. A KeyError, so `except KeyError` keeps working."""

    def __init__(
        self,
        kind: str,
        name: str,
        available: Sequence[str] = (),
        suggestions: Sequence[str] = (),
        other_kinds: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        self.kind, self.name = kind, name
        self.available = list(available)
        self.suggestions = list(suggestions)
        self.other_kinds = list(other_kinds)
        self.hint = hint
        super().__init__(name)

    def __str__(self) -> str:
        label = kind_label(self.kind)
        if self.other_kinds:
            other = kind_label(self.other_kinds[0])
            lines = [
                f"{self.name!r} is {_article(other)} {other}, not {_article(label)} {label}. "
                f"Did you mean {self.other_kinds[0]}={self.name!r}?"
            ]
        else:
            head = f"unknown {label} {self.name!r}."
            if self.suggestions:
                head += " Did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
            lines = [head]
        if self.hint:
            lines.append("  " + self.hint)
        if self.available:
            lines.append(f"  available {self.kind}: {', '.join(self.available)}  (toklip list {self.kind})")
        return "\n".join(lines)


class AmbiguousComponentError(TokLIPError, LookupError):
    """Two distributions registered the same name: never resolved by load order."""


class MissingDependencyError(TokLIPError, ImportError):
    """A component needs a package that is not installed (always named by its pip name)."""


class PluginLoadError(TokLIPError):
    """A plugin failed to load (raised only in strict mode; otherwise a warning)."""


class InvalidComponentSpecError(TokLIPError, ValueError):
    """A plugin registered something malformed: bad name, unknown kind, non-callable factory."""


class ConfigError(TokLIPError, ValueError):
    """A configuration that cannot describe a valid model."""


class InputError(TokLIPError, ValueError):
    """Images, indices or token ids that do not fit the model."""


class CheckpointError(TokLIPError, ValueError):
    """A checkpoint that is unreadable, unsafe, or does not match the model."""


class WeightsNotFoundError(TokLIPError, FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable."""
