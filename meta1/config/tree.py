"""The syntax tree of a MeTA1 configuration file, and its printer.

The tree is what the grammar (:mod:`meta1.config.syntax`) produces and what the printer
turns back into text; the schema (:mod:`meta1.config.schema`) gives it meaning. It keeps
exactly what the language distinguishes and nothing more:

* an :class:`Option` is ``name = value;`` or ``name = { list }``;
* a :class:`Section` is ``keyword [name] { entries }``;
* a value is a :class:`Scalar` (its text, after escapes are decoded and adjacent quoted
  strings are joined) or a :class:`ListValue` of values (lists may nest, as in grecs).

Quoting is not part of the tree: ``path = /usr/libexec/smtps;`` and
``path = "/usr/libexec/smtps";`` are the same option. Keywords and option names compare
case-insensitively (``key`` is the lower-cased spelling; the spelling as written is kept
for messages). Positions are carried for diagnostics but never compared, so two trees are
equal exactly when the texts they came from mean the same configuration syntactically —
the property the layout tests (B03) and the print/parse round trip rely on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from meta1.config.errors import Position

NOWHERE = Position(0, 0)

# Lexical classes, shared by the grammar, the error-recovery scanner and the printer so
# that what the printer leaves unquoted is exactly what the grammar reads as one word.
# A word may contain "/" but never the comment opener "/*" (decisions.md, D-LEX-3).
WORD_PATTERN = r"(?:[A-Za-z0-9_.:*\-]|/(?!\*))+"
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
_WORD_RE = re.compile(WORD_PATTERN)


@dataclass(frozen=True)
class Scalar:
    """A single value: an unquoted word or the joined text of quoted strings."""

    text: str
    pos: Position = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class ListValue:
    """``{ a, b, c }`` — items are scalars or nested lists."""

    items: tuple[Value, ...]
    pos: Position = field(default=NOWHERE, compare=False, repr=False)


Value = Union[Scalar, ListValue]


@dataclass(frozen=True)
class Option:
    """``name = value;``. ``key`` is the case-folded name; ``name`` is as written."""

    name: str = field(compare=False)
    value: Value
    pos: Position = field(default=NOWHERE, compare=False, repr=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.name.lower())


@dataclass(frozen=True)
class Section:
    """``keyword [name] { entries }``. Section names are values: case is kept."""

    keyword: str = field(compare=False)
    name: str | None
    entries: tuple[Entry, ...]
    pos: Position = field(default=NOWHERE, compare=False, repr=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.keyword.lower())


Entry = Union[Option, Section]


@dataclass(frozen=True)
class Document:
    """A whole configuration file."""

    entries: tuple[Entry, ...]


# ---------------------------------------------------------------------------------------
# Printing

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(text: str) -> str:
    """A quoted string literal that the grammar reads back as ``text``.

    Control characters get escapes (a raw newline is not allowed inside quotes); other
    characters, including non-ASCII ones, are written as they are (the file is UTF-8).
    """
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_scalar(text: str) -> str:
    """The text as an unquoted word when the grammar allows it, else quoted."""
    return text if _WORD_RE.fullmatch(text) else quote(text)


def format_value(value: Value) -> str:
    if isinstance(value, Scalar):
        return format_scalar(value.text)
    return "{ " + ", ".join(format_value(v) for v in value.items) + " }" if value.items else "{ }"


def format_entries(entries: tuple[Entry, ...] | list[Entry], indent: int = 0) -> list[str]:
    """Canonical layout: one entry per line, four spaces per nesting level."""
    pad = "    " * indent
    lines: list[str] = []
    for entry in entries:
        if isinstance(entry, Option):
            lines.append(f"{pad}{entry.name} = {format_value(entry.value)};")
        else:
            head = entry.keyword if entry.name is None else f"{entry.keyword} {format_scalar(entry.name)}"
            lines.append(f"{pad}{head} {{")
            lines.extend(format_entries(entry.entries, indent + 1))
            lines.append(f"{pad}}}")
    return lines


def format_document(doc: Document) -> str:
    return "".join(line + "\n" for line in format_entries(doc.entries))
