"""Refinement checks: the real code and its abstract model (``spec/models``), side by side.

DESIGN.md, "Models are checked": the model checker proves a model's promises over every
state it can reach; these checks tie the model to the code. A Hypothesis state machine
subclasses :class:`Refinement`; its rules act on the real code (random events, as in any
stateful test) and then call :meth:`Refinement.step`, naming the model action the event
is (an arrival, the end of a delivery, a crash), if the model has one. After every step
the code's *abstraction* — the part of its state the model describes, in the model's
terms — must be the *projection* of a model state reached from the previous one by

* that event, taken exactly once, and
* any number (up to ``depth`` steps in all) of the steps the code takes on its own
  (``internal``: admitting to the AQ, dispatching, a restart) — one real event may be
  several model steps: a delivery ends, the AQ slot it frees admits a deferred
  recipient, which is dispatched;
* or, without an event, nothing the abstraction shows (a stutter).

If no such state exists the code did something the model does not allow, and the test
fails with both states. After each step the model's invariants must hold in the state it
is now in: every behaviour of the code is one of the model's, and the model's promises
are the code's.

Strategy
    A breadth-first search over (model state, event taken yet), keeping the nodes it has
    seen, so a few steps deep stays cheap on the small models; it returns the shallowest
    match. Naming the event matters: a search free to take any model action explains
    too much — a wrong admission can be "explained" by an invisible delivery attempt
    that never happened. The match must also be the right state: make the projection
    keep every part of the model's state (hidden fairness bits included) that the code
    can show, so different model states never look alike.
"""

from __future__ import annotations

import re
import sys
from types import ModuleType
from typing import Any, Hashable

from hypothesis.stateful import RuleBasedStateMachine, invariant

from meta1.tools.modelcheck import MODELS_DIRECTORY, load


def load_model(name: str) -> tuple[Any, ModuleType]:
    """``spec/models/<name>.py``'s ``MODEL`` and its module (for the model's bounds, which
    the real code is configured with)."""
    model = load(MODELS_DIRECTORY / f"{name}.py")
    return model, sys.modules[type(model).__module__]


class Refinement(RuleBasedStateMachine):
    """Base of a refinement test; see the module docstring.

    A subclass sets ``model`` (a loaded ``MODEL``), ``internal`` (a pattern matching the
    labels of the model actions the code takes on its own) and ``depth`` (most model
    steps one rule may take), defines :meth:`abstraction`, overrides :meth:`projection`
    if the model's states carry what the code cannot show, and calls :meth:`begin` with
    the model's initial state once the real code is set up (in ``__init__`` or an
    ``@initialize`` rule), then :meth:`step` after each rule.
    """

    model: Any = None
    internal: re.Pattern = re.compile(r"(?!)")     # none
    depth: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.abstract: Hashable | None = None      # the model state the code is in

    def abstraction(self) -> Hashable:
        """The real code's state in the model's terms."""
        raise NotImplementedError

    def projection(self, state: Hashable) -> Hashable:
        """What of a model state the abstraction can show (default: all of it)."""
        return state

    def begin(self, state: Hashable) -> None:
        assert self.abstraction() == self.projection(state), (self.abstraction(), state)
        self.abstract = state

    def step(self, event: str | None = None) -> None:
        """Follow the code in the model; ``event``: the label of the model action the rule
        made happen (see the module docstring)."""
        observed = self.abstraction()
        if event is None and self.projection(self.abstract) == observed:
            return
        start = (self.abstract, event is None)
        seen = {start}
        frontier = [start]
        for _ in range(self.depth):
            following_nodes = []
            for state, taken in frontier:
                for label, following in self.model.actions(state):
                    if not taken and label == event:
                        node = (following, True)
                    elif self.internal.fullmatch(label):
                        node = (following, taken)
                    else:
                        continue
                    if node in seen:
                        continue
                    if node[1] and self.projection(following) == observed:
                        self.abstract = following
                        return
                    seen.add(node)
                    following_nodes.append(node)
            frontier = following_nodes
        raise AssertionError(f"the code went from {self.projection(self.abstract)}\n"
                             f"to {observed}\n(event: {event or 'none'}), which is no {self.depth} steps "
                             f"of the model")

    @invariant()
    def model_invariants_hold(self) -> None:
        if self.abstract is None:
            return
        for name, predicate in self.model.invariants:
            assert predicate(self.abstract), f"{name} fails in {self.abstract}"
