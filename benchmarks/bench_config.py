"""Micro-benchmarks of the configuration loader (pytest-benchmark).

    python3 -m pytest benchmarks/bench_config.py

Not part of the test suite (it asserts nothing about time); run it to compare changes.
Loading happens once per daemon start and on `meta1 check`, so the interest is that a
large configuration stays well under the time a human notices.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1.config import load_text
from meta1.config.syntax import parse

EXAMPLE = (Path(__file__).resolve().parent.parent / "conformance" / "examples" / "every-section.conf").read_text()
BROKEN = "\n".join(f"opt{i} = ;" for i in range(50))


@pytest.mark.benchmark(group="config")
def test_load_every_section_example(benchmark) -> None:
    benchmark(load_text, EXAMPLE, "every-section.conf")


@pytest.mark.benchmark(group="config")
def test_parse_file_with_50_syntax_errors(benchmark) -> None:
    benchmark(parse, BROKEN, "broken.conf")
