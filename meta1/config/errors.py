"""Configuration diagnostics.

A configuration file is judged whole: the loader collects every mistake it can find and
raises one :class:`ConfigError` carrying all of them, each positioned as
``FILE:LINE:COL: message`` (lines and columns count from 1; a tab is one column). Nothing
else may escape the loader, whatever bytes it is given — that is a tested property.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Position:
    """A place in a configuration text: 1-based line and column."""

    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One mistake in one file. Orders by file, then position."""

    filename: str
    position: Position
    message: str = field(compare=True)

    def __str__(self) -> str:
        return f"{self.filename}:{self.position}: {self.message}"


class ConfigError(Exception):
    """Every mistake found in a configuration, sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(set(diagnostics))
        super().__init__("\n".join(str(d) for d in self.diagnostics))
