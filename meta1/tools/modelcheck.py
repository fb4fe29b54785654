"""An explicit-state model checker for meta1's abstract models (``spec/models/*.py``).

    python3 -m meta1.tools.modelcheck                 every model in spec/models
    python3 -m meta1.tools.modelcheck durability      one model (its variants too)
    python3 -m meta1.tools.modelcheck --variant broken-ack-before-flush durability

Responsibilities
    Explore every state a model can reach from its initial states, breadth first, and
    check its invariants in each; report how many states and transitions were explored;
    when an invariant fails (or a state has no way to reach what the model says must stay
    reachable), print a *shortest* trace from an initial state to the bad state, one action
    per line. A test runs it on every model in CI, and on each model's deliberately broken
    variant, where it must find the counterexample (``tests/test_models.py``).

What a model is (plain Python, no imports from meta1 needed)
    A module in ``spec/models/`` that defines ``MODEL``, an object with:

    * ``name`` and ``description`` (one sentence: what the model promises; the spec's
      index lists it);
    * ``initial()`` — the initial states (hashable values: tuples, frozensets, named
      tuples or frozen dataclasses);
    * ``actions(state)`` — the enabled transitions, as ``(label, next_state)`` pairs;
    * ``invariants`` — ``(name, predicate)`` pairs, each true in every reachable state;
    * optionally ``goals`` — ``(name, predicate)`` pairs that must stay *reachable* from
      every reachable state ("whatever happened, the system can still get there": a
      due recipient can still be delivered, a failed service's dependents can still be
      stopped). Checked after the exploration by backward reachability: a reachable
      state that cannot reach a goal state is reported with its trace;
    * optionally ``variants`` — a mapping of variant name to a model object with the same
      interface, used to show that the checker catches the bug each variant plants.

    Bounds are the model's own business (a model has finitely many states by
    construction: a few messages, a few crashes); the checker also stops at ``--max-states``
    and says so, which counts as a failure.

Strategy
    A dictionary from each state to its predecessor and the action that reached it is the
    visited set and the trace store at once: BFS order makes every stored trace a
    shortest one. Invariants are checked when a state is first seen, so the reported trace
    is the shortest way to the *first* violation found at that depth.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODELS_DIRECTORY = Path(__file__).resolve().parents[2] / "spec" / "models"
DEFAULT_MAX_STATES = 2_000_000


@dataclass
class Result:
    """What one exploration found."""

    model: str
    states: int = 0
    transitions: int = 0
    violation: str | None = None          # the invariant or goal that failed
    trace: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.violation is None and not self.truncated

    def report(self) -> str:
        head = f"{self.model}: {self.states} states, {self.transitions} transitions"
        if self.truncated:
            return head + f" — stopped at the state limit (not fully explored)"
        if self.violation is None:
            return head + " — every invariant holds"
        lines = [head + f" — VIOLATED: {self.violation}", "  shortest trace:"]
        lines += [f"    {n:3d}. {step}" for n, step in enumerate(self.trace)]
        return "\n".join(lines)


def _trace(parents: dict[Any, tuple[Any, str] | None], state: Any) -> list[str]:
    steps: list[str] = []
    while True:
        entry = parents[state]
        if entry is None:
            steps.append(f"initial: {_show(state)}")
            break
        state, label = entry[0], entry[1]
        steps.append(label)
    return list(reversed(steps))


def _show(state: Any) -> str:
    text = repr(state)
    return text if len(text) <= 300 else text[:297] + "..."


def check(model, max_states: int = DEFAULT_MAX_STATES) -> Result:
    """Explore ``model`` completely (see the module docstring)."""
    result = Result(getattr(model, "name", type(model).__name__))
    parents: dict[Any, tuple[Any, str] | None] = {}
    edges: dict[Any, list[Any]] = {}
    frontier: deque[Any] = deque()
    goals = list(getattr(model, "goals", ()))

    def seen(state: Any, parent: tuple[Any, str] | None) -> bool:
        """Record a new state and check the invariants; False when one fails."""
        parents[state] = parent
        frontier.append(state)
        for name, predicate in model.invariants:
            if not predicate(state):
                result.violation = f"invariant {name!r}"
                result.trace = _trace(parents, state) + [f"violates {name}: {_show(state)}"]
                return False
        return True

    for state in model.initial():
        if state not in parents and not seen(state, None):
            result.states = len(parents)
            return result
    while frontier:
        state = frontier.popleft()
        successors = edges.setdefault(state, []) if goals else None
        for label, following in model.actions(state):
            result.transitions += 1
            if successors is not None:
                successors.append(following)
            if following in parents:
                continue
            if len(parents) >= max_states:
                result.states, result.truncated = len(parents), True
                return result
            if not seen(following, (state, label)):
                result.states = len(parents)
                return result
    result.states = len(parents)
    for name, predicate in goals:
        stuck = _cannot_reach(edges, parents, predicate)
        if stuck is not None:
            result.violation = f"goal {name!r} unreachable"
            result.trace = _trace(parents, stuck) + [f"from here {name} can never happen: {_show(stuck)}"]
            return result
    return result


def _cannot_reach(edges: dict[Any, list[Any]], parents: dict[Any, Any], goal) -> Any | None:
    """A reachable state from which no path leads to a state where ``goal`` holds (the
    shallowest such state, for the shortest trace), or None."""
    reverse: dict[Any, list[Any]] = {}
    for state, successors in edges.items():
        for following in successors:
            reverse.setdefault(following, []).append(state)
    good = {state for state in parents if goal(state)}
    frontier = deque(good)
    while frontier:
        state = frontier.popleft()
        for predecessor in reverse.get(state, ()):
            if predecessor not in good:
                good.add(predecessor)
                frontier.append(predecessor)
    for state in parents:            # insertion order is BFS order: shallowest first
        if state not in good:
            return state
    return None


# -- loading models --------------------------------------------------------------------------

def load(path: Path):
    """The ``MODEL`` of a model file."""
    spec = importlib.util.spec_from_file_location(f"meta1_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.MODEL


def model_files(directory: Path = MODELS_DIRECTORY) -> list[Path]:
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m meta1.tools.modelcheck", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="model names (files in spec/models); default: all")
    parser.add_argument("--variant", help="check this broken variant instead (it must fail)")
    parser.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES)
    args = parser.parse_args(argv)
    files = model_files()
    chosen = [f for f in files if not args.models or f.stem in args.models]
    if args.models and len(chosen) != len(args.models):
        parser.error(f"unknown model; known: {', '.join(f.stem for f in files)}")
    status = 0
    for path in chosen:
        model = load(path)
        if args.variant:
            model = model.variants[args.variant]
        result = check(model, args.max_states)
        print(result.report())
        if not result.ok:
            status = 1
        if not args.variant:
            for name, variant in getattr(model, "variants", {}).items():
                broken = check(variant, args.max_states)
                found = broken.violation is not None
                print(f"  variant {name}: {'counterexample found' if found else 'NOT caught'} "
                      f"({broken.states} states)")
                if not found:
                    status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
