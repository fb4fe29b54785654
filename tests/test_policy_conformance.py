"""Runs the policy scenarios of ``conformance/policy/`` (see ``conformance/scenarios.py``):
B17-B22, B26-B28, B30-B34, B41-B49, B56, B63 and the open-relay battery, as data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance.scenarios import Scenario, scenario_files

FILES = scenario_files()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_policy_scenario(path: Path) -> None:
    assert Scenario(path).run() > 0


def covered() -> set[int]:
    """Behaviour numbers named in the scenarios' titles: ``B17``, or ranges ``B17-B21``."""
    numbers: set[int] = set()
    for path in FILES:
        for first, last in re.findall(r"B(\d\d)(?:-B(\d\d))?", Scenario(path).title):
            numbers.update(range(int(first), int(last or first) + 1))
    return numbers


def test_every_policy_behaviour_has_a_scenario() -> None:
    wanted = set(range(17, 23)) | set(range(26, 29)) | set(range(30, 35)) | set(range(41, 50)) | {56, 63}
    assert sorted(wanted - covered()) == []
    assert any(p.stem == "open-relay" for p in FILES)
