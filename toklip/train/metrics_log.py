"""metrics.jsonl on resume: keep the records of the steps the checkpoint covers, set everything else aside.

A run resumed from step S logs steps S+1... again, so the killed run's lines for those steps leave the log; a
line that is not a record (a damaged disk, an edit, a write cut short) never costs the lines after it. Nothing is
deleted: the lines that leave go to ``metrics.jsonl.superseded-N`` or, when the file held unreadable lines, the
whole original is kept unchanged as ``metrics.jsonl.damaged-N``. Each copy is in place before ``metrics.jsonl``
is replaced (atomically), so a process killed at any moment leaves every line somewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from toklip.core.io import atomic_write

MAX_LINE = 1 << 20  # a record is a few hundred bytes; a longer "line" is damage, read in bounded pieces
SHOWN = 8  # line numbers a message names


@dataclass
class LineNumbers:
    """How many lines of one kind, and the first few line numbers (1-based) for a message."""

    count: int = 0
    first: list[int] = field(default_factory=list)

    def add(self, number: int) -> None:
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append(number)

    def __str__(self) -> str:
        more = f" and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return ", ".join(map(str, self.first)) + more


@dataclass
class Trim:
    """What :func:`trim_for_resume` found and did."""

    kept: int = 0
    later: LineNumbers = field(default_factory=LineNumbers)  # records of steps after the resumed one
    bad: LineNumbers = field(default_factory=LineNumbers)  # lines that are not records
    torn: int | None = None  # an unreadable last line without its newline: a write cut short by a kill
    blank: int = 0
    unterminated: bool = False  # the last line lacks its newline
    superseded: Path | None = None
    damaged: Path | None = None

    def message(self, path: Path, step: int) -> str | None:
        """The warning to log, or None when the file was left as it was."""
        later = f"{_count(self.later.count)} of steps after {step} ({self.later})" if self.later.count else ""
        run = f"the run resumed from step {step} logs" if step else "the run starts over and logs"
        if self.damaged is not None:
            also = f"; {later} left it too" if later else ""
            return (f"{path}: {_count(self.bad.count)} ({self.bad}) {'is' if self.bad.count == 1 else 'are'} not a "
                    f"metrics record (a damaged or edited file): the original is kept unchanged as {self.damaged.name}, "
                    f"and {path.name} keeps its {_count(self.kept)} of steps up to {step}{also}; {run} the later "
                    "steps again")
        if self.superseded is not None:
            what = [later] if later else []
            if self.torn is not None:
                what.append(f"an incomplete last line (line {self.torn}, a write cut short)")
            return f"{path}: moved {' and '.join(what)} to {self.superseded.name}: {run} those steps again"
        return None


def _count(n: int) -> str:
    return f"{n} line{'' if n == 1 else 's'}"


def trim_for_resume(path: Path, step: int) -> Trim:
    """Leave in ``path`` the records of steps 1..``step`` (in their order, each with its newline); set the rest
    aside beside it. A file that needs no change is not rewritten."""
    trim = _scan(path, step)
    if not (trim.later.count or trim.bad.count or trim.blank or trim.unterminated):
        return trim
    if trim.bad.count > (1 if trim.torn is not None else 0):  # more than a torn last line: keep the original
        trim.damaged = _set_aside(path, path, "damaged")  # before the file changes: every line stays somewhere

    def write(tmp: Path) -> None:
        later = tmp.with_name(tmp.name + ".superseded")
        try:
            with open(path, "rb") as src, open(tmp, "wb") as kept, open(later, "wb") as rest:
                for number, line in enumerate(_lines(src), start=1):
                    kind = _kind(line, step)
                    if kind == "keep":
                        kept.write(line.rstrip(b"\r\n") + b"\n")  # type: ignore[union-attr]
                    elif trim.damaged is None and line is not None and (kind == "later" or number == trim.torn):
                        # (with a damaged copy kept, that copy already holds these lines)
                        rest.write(line if line.endswith(b"\n") else line + b"\n")
                rest.flush()
                os.fsync(rest.fileno())
            if later.stat().st_size:
                trim.superseded = _set_aside(later, path, "superseded")
        finally:
            later.unlink(missing_ok=True)

    atomic_write(path, write)
    return trim


def _scan(path: Path, step: int) -> Trim:
    trim = Trim()
    number, kind, line = 0, "", b"\n"
    with open(path, "rb") as f:
        for number, line in enumerate(_lines(f), start=1):
            kind = _kind(line, step)
            if kind == "keep":
                trim.kept += 1
            elif kind == "later":
                trim.later.add(number)
            elif kind == "bad":
                trim.bad.add(number)
            else:
                trim.blank += 1
    if number and line is not None and not line.endswith(b"\n"):
        trim.unterminated = True  # appending would glue the next record onto it
        if kind == "bad":
            trim.torn = number
    return trim


def _kind(line: bytes | None, step: int) -> str:
    """'keep' (a record of a step <= step), 'later' (of a step after it), 'bad' (not a record) or '' (blank)."""
    if line is None:
        return "bad"
    text = line.strip()
    if not text:
        return ""
    try:
        record = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "bad"
    n = record.get("step") if isinstance(record, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return "bad"
    return "keep" if n <= step else "later"


def _lines(f: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines with their newlines; None for a line longer than MAX_LINE (read past in bounded pieces)."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = f.readline(MAX_LINE)
            yield None
        else:
            yield line


def _set_aside(src: Path, path: Path, kind: str) -> Path:
    """Give ``src``'s content the first free name ``<path>.<kind>-N`` beside ``path``, never replacing a file: a
    hard link (no copy), or a copy renamed into place where the file system has none."""
    n = 1
    while True:
        dest = path.with_name(f"{path.name}.{kind}-{n}")
        try:
            os.link(src, dest)
            break
        except FileExistsError:
            n += 1
            continue
        except OSError:
            if dest.exists():
                n += 1
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
            finally:
                Path(tmp).unlink(missing_ok=True)
            break
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest
