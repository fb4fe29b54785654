"""Runs the data-driven conformance cases in ``conformance/`` (see its README).

Every case is checked twice: through the loader API (values, positions, counts, trees)
and through the real ``meta1 check`` command (exit status, FILE:LINE:COL on stderr).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meta1.config import ConfigError, load_text
from meta1.config.syntax import parse_strict
from conftest import CONFORMANCE, run_meta1

CASES = sorted((CONFORMANCE / "config").glob("*.conf"))
EXAMPLES = sorted((CONFORMANCE / "examples").glob("*.conf"))


@dataclass
class Expectation:
    ok: bool = False
    values: list[tuple[str, object]] = field(default_factory=list)
    errors: list[tuple[int, int, str]] = field(default_factory=list)
    error_count: int | None = None
    same_tree_as: list[str] = field(default_factory=list)


def expectations(path: Path) -> Expectation:
    exp = Expectation()
    for line in path.read_text("utf-8").splitlines():
        if not line.startswith("#! "):
            continue
        verb, _, rest = line[3:].partition(" ")
        if verb == "ok":
            exp.ok = True
        elif verb == "value":
            target, _, literal = rest.partition(" = ")
            exp.values.append((target, ast.literal_eval(literal)))
        elif verb == "error":
            where, _, text = rest.partition(" ")
            line_no, col = map(int, where.split(":"))
            exp.errors.append((line_no, col, text))
        elif verb == "errors":
            exp.error_count = int(rest)
        elif verb == "same-tree-as":
            exp.same_tree_as.append(rest)
        else:
            raise AssertionError(f"{path.name}: unknown directive {verb!r}")
    assert exp.ok != bool(exp.errors or exp.error_count), f"{path.name}: say ok or errors, not both"
    return exp


_STEP = re.compile(r'\.?(\w+)|\[(\w*)\]|\["([^"]*)"\]')


def resolve(config, target: str):
    """Follow ``a.b[name].c["key"]`` through a loaded configuration."""
    node = config
    for m in _STEP.finditer(target):
        attr, instance, key = m.groups()
        if attr is not None:
            node = getattr(node, attr)
        elif instance is not None:
            node = node[instance or None]
        else:
            node = node[key]
    return node


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_through_loader(path: Path) -> None:
    exp = expectations(path)
    text = path.read_text("utf-8")
    if exp.ok:
        config = load_text(text, path.name)
        for target, expected in exp.values:
            assert resolve(config, target) == expected, target
    else:
        with pytest.raises(ConfigError) as info:
            load_text(text, path.name)
        found = [(d.position.line, d.position.col, d.message) for d in info.value.diagnostics]
        for line_no, col, fragment in exp.errors:
            assert any(line_no == l and col == c and fragment in m for l, c, m in found), (
                f"no error at {line_no}:{col} containing {fragment!r}; got {found}")
        if exp.error_count is not None:
            assert len(found) == exp.error_count, found
    for other in exp.same_tree_as:
        other_text = (path.parent / other).read_text("utf-8")
        assert parse_strict(text, path.name) == parse_strict(other_text, other)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_through_command(path: Path) -> None:
    exp = expectations(path)
    result = run_meta1("check", "-f", str(path))
    if exp.ok:
        assert (result.returncode, result.stdout) == (0, "configuration OK\n"), result.stderr
    else:
        assert result.returncode == 1
        for line_no, col, _ in exp.errors:
            assert f"{path}:{line_no}:{col}: " in result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_reference_example_passes_check(path: Path) -> None:
    result = run_meta1("check", "-f", str(path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "configuration OK\n", "")
