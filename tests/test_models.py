"""The abstract models of spec/models, explored completely by meta1.tools.modelcheck:
every invariant and goal holds in every model, and each deliberately broken variant is
caught with a counterexample. The checker itself on toy models: shortest traces, goals,
the state limit."""

from __future__ import annotations

import pytest

from meta1.tools.modelcheck import check, load, model_files

MODELS = {path.stem: load(path) for path in model_files()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_invariant_holds(name) -> None:
    result = check(MODELS[name])
    assert result.ok, result.report()
    initial = len(list(MODELS[name].initial()))
    assert result.states > 10 and result.transitions >= result.states - initial   # every other state was reached


VARIANTS = [(name, variant) for name, model in sorted(MODELS.items()) for variant in getattr(model, "variants", {})]


@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}-{v}" for n, v in VARIANTS])
def test_each_broken_variant_is_caught(name, variant) -> None:
    result = check(MODELS[name].variants[variant])
    assert result.violation is not None, f"{name} variant {variant} not caught"
    assert result.trace[0].startswith("initial: ") and result.trace[-1].startswith(("violates", "from here"))


def test_every_model_has_a_broken_variant() -> None:
    assert MODELS and all(getattr(model, "variants", None) for model in MODELS.values())


class Counter:
    """0 → 1 → … → 9; "bad" at 7, reachable in 7 steps (or 4 with the jump)."""

    name = "counter"

    def __init__(self, bad=7, jump=True, goal=None):
        self.bad, self.jump = bad, jump
        self.invariants = [("not-bad", lambda n: n != self.bad)]
        self.goals = [("reaches-9", goal)] if goal else []

    def initial(self):
        return [0]

    def actions(self, n):
        if n < 9:
            yield f"+1 from {n}", n + 1
        if self.jump and n == 3:
            yield "jump 3 -> 7", 7
        if n == 5:
            yield "trap", 100        # a dead end: stays there


def test_the_trace_is_a_shortest_one() -> None:
    result = check(Counter())
    assert result.violation == "invariant 'not-bad'"
    assert result.trace[1:] == ["+1 from 0", "+1 from 1", "+1 from 2", "jump 3 -> 7", "violates not-bad: 7"]


def test_a_goal_unreachable_from_a_trap_is_reported() -> None:
    result = check(Counter(bad=-1, goal=lambda n: n == 9))
    assert result.violation == "goal 'reaches-9' unreachable" and "trap" in result.trace[-2]


def test_the_state_limit_is_a_failure_not_a_pass() -> None:
    result = check(Counter(bad=-1), max_states=3)
    assert result.truncated and not result.ok
