"""The text form of a map: ``key value`` lines, as ``meta1 createmap`` and inline maps read them.

Responsibilities
    Turn the text an operator writes into (key, value) entries, or into errors that name
    the file and the line. Pure functions over text; reading the file is the caller's
    (:func:`read_source` is the one helper that opens a file, for ``createmap``).

The syntax (spec/maps.md, D-MAP-3)
    * One entry per line: the key, then whitespace (spaces or tabs), then the value — the
      rest of the line with the whitespace around it removed. Inner whitespace is kept:
      ``cltaddr:10. 550 5.7.1 go away`` has the value ``550 5.7.1 go away``.
    * A line with a key only has the empty value (a list of valid users needs no right
      hand side).
    * Keys are lower-cased: lookups use lower-case keys (``meta1.maps.keys``), so a map
      never depends on how its author spelled a name.
    * Blank lines and lines whose first non-blank character is ``#`` are ignored. A ``#``
      elsewhere is part of the value (``550 5.7.1 see #42`` stays whole).
    * A key that appears twice is an error naming both lines: which one was meant cannot
      be guessed, and silently keeping one hides a typo.
    * The file is UTF-8 (as the configuration, D-LEX-1); a NUL byte or another control
      character other than TAB is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Whitespace between key and value.
_SPLIT = re.compile(r"[ \t]+")
#: Control characters refused in keys and values (TAB is a separator, not content).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, order=True)
class SourceError:
    """One mistake in a map source: ``file:line: message``."""

    filename: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.message}"


class SourceErrors(Exception):
    """Every mistake found in one map source."""

    def __init__(self, errors: list[SourceError]):
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def parse_entry(line: str) -> tuple[str, str] | None:
    """``"Key  some value"`` → ``("key", "some value")``; None for a blank or comment line.

    Raises ValueError (its text the message) for a control character."""
    text = line.rstrip("\r\n").strip(" \t")
    if not text or text.startswith("#"):
        return None
    bad = _CONTROL.search(text)
    if bad is not None:
        raise ValueError(f"control character {ord(bad.group()):#04x} in the line")
    parts = _SPLIT.split(text, maxsplit=1)
    key = parts[0].lower()
    value = parts[1] if len(parts) > 1 else ""
    return key, value


def parse_lines(lines, filename: str) -> tuple[list[tuple[str, str, int]], list[SourceError]]:
    """Entries ``(key, value, line number)`` of ``lines`` (str), and every error found."""
    entries: list[tuple[str, str, int]] = []
    errors: list[SourceError] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        try:
            entry = parse_entry(line)
        except ValueError as exc:
            errors.append(SourceError(filename, number, str(exc)))
            continue
        if entry is None:
            continue
        key, value = entry
        if key in first_line:
            errors.append(SourceError(filename, number, f"key {key!r} appears twice (first at line {first_line[key]})"))
            continue
        first_line[key] = number
        entries.append((key, value, number))
    return entries, errors


def decode_lines(data: bytes, filename: str) -> tuple[list[str], list[SourceError]]:
    """The lines of a UTF-8 file; a line that is not UTF-8 is an error (and left empty)."""
    lines: list[str] = []
    errors: list[SourceError] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            errors.append(SourceError(filename, number, f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"))
            lines.append("")
    if lines and lines[-1] == "":
        lines.pop()   # the newline ending the last line does not start another
    return lines, errors


def read_source(path: str, filename: str | None = None) -> list[tuple[str, str, int]]:
    """The entries of the map source file ``path``; raises :class:`SourceErrors` (with
    every mistake) or OSError."""
    name = filename or path
    with open(path, "rb") as f:
        data = f.read()
    lines, errors = decode_lines(data, name)
    entries, more = parse_lines(lines, name)
    errors += more
    if errors:
        raise SourceErrors(errors)
    return entries
