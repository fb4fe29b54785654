"""Lookup plans as generators (meta1/policy/plan.py): the protocol, and the key sequence
of one tag (B19 most specific first, B26 NOMORE, B27/B28 failures are not "not found")."""

from __future__ import annotations

import pytest

from meta1.maps.base import NOT_FOUND, LookupRequest, MapResult, Status, found, run_plan
from meta1.policy.plan import NOTHING, Plan, first_found, run_steps


def answers(table: dict[str, MapResult]):
    asked: list[str] = []

    def lookup(request: LookupRequest) -> MapResult:
        asked.append(request.key)
        return table.get(request.key, NOT_FOUND)
    return lookup, asked


def test_a_plan_hands_out_one_request_until_it_is_answered() -> None:
    plan = Plan(first_found("m", "to:", lambda: ["a", "b"]))
    assert plan.next_lookup() == LookupRequest("m", "to:a")
    assert plan.next_lookup() == LookupRequest("m", "to:a")       # the same, until answered
    with pytest.raises(RuntimeError):
        _ = plan.result
    plan.lookup_result(NOT_FOUND)
    assert plan.next_lookup() == LookupRequest("m", "to:b")
    plan.lookup_result(found("OK"))
    assert plan.done and plan.next_lookup() is None
    assert plan.result.key == "to:b" and plan.result.value == "OK"
    assert [r.key for r, _ in plan.trail] == ["to:a", "to:b"]
    with pytest.raises(RuntimeError):
        plan.lookup_result(NOT_FOUND)


def test_a_plan_is_driven_by_the_maps_run_plan() -> None:
    lookup, asked = answers({"to:b": found("x")})
    plan = Plan(first_found("m", "to:", lambda: ["a", "b", "c"]))
    run_plan(plan, lookup)
    assert asked == ["to:a", "to:b"] and plan.result.found


def test_the_answer_must_be_a_map_result() -> None:
    plan = Plan(first_found("m", "to:", lambda: ["a"]))
    with pytest.raises(TypeError):
        plan.lookup_result("OK")  # type: ignore[arg-type]


def test_without_a_map_nothing_is_asked_nothing_found_and_no_key_derived() -> None:
    derived = []
    plan = Plan(first_found(None, "to:", lambda: derived.append("keys") or ["a"]))
    assert plan.done and plan.result is NOTHING and plan.trail == [] and derived == []


@pytest.mark.parametrize("table, expect_key, expect_status, asked", [
    ({}, "", None, ["t:1", "t:2", "t:3"]),
    ({"t:1": found("A"), "t:2": found("B")}, "t:1", Status.FOUND, ["t:1"]),               # B19
    ({"t:2": MapResult(Status.NOMORE), "t:3": found("C")}, "", None, ["t:1", "t:2"]),     # B26
    ({"t:2": MapResult(Status.TEMP, reason="x"), "t:3": found("C")}, "t:2", Status.TEMP, ["t:1", "t:2"]),  # B27
    ({"t:1": MapResult(Status.PERM)}, "t:1", Status.PERM, ["t:1"]),                       # B28
])
def test_first_found(table, expect_key, expect_status, asked) -> None:
    lookup, seen = answers(table)
    outcome = run_steps(first_found("m", "t:", lambda: ["1", "2", "3"]), lookup)
    assert seen == asked
    assert outcome.key == expect_key
    assert (outcome.result.status if outcome.result else None) is expect_status
    assert outcome.failed == (expect_status in (Status.TEMP, Status.PERM))
    assert outcome.found == (expect_status is Status.FOUND)
