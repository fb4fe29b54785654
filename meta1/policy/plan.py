"""Lookup plans written as generators, and the key sequences every policy tries.

Responsibilities
    Every policy core of :mod:`meta1.policy` that needs map lookups is a *lookup plan*
    (:class:`meta1.maps.base.LookupPlan`): it hands out one
    :class:`~meta1.maps.base.LookupRequest` at a time through ``next_lookup()`` and takes
    the answer through ``lookup_result()``. In smar a lookup may be a round trip to a
    socket map over the event loop; in tests it is a dictionary
    (:func:`meta1.maps.base.run_plan`). The core cannot tell the difference.

    This module turns a Python generator into such a plan. A core is written as straight
    code that *yields* a request and receives the answer::

        def sender_steps(map_name, sender):
            outcome = yield from first_found(map_name, "from:", lambda: address_keys(sender))
            return outcome

        plan = Plan(sender_steps("access", "a@example.org"))
        run_plan(plan, lookup)          # or: driven by smar's event loop
        plan.result                     # the generator's return value

    Generators compose with ``yield from``: the recipient check runs the ``to:`` lookup,
    the ``protectedrcpt:`` lookup and the routing plan one after the other without any
    callback code, and the whole stays a pure function of the answers.

    :func:`first_found` is the lookup order of one tag: the keys of
    :mod:`meta1.maps.keys`, most specific first, until one is found (B19: most specific
    wins). ``NOMORE`` ends the sequence: no key derived from the one asked is tried
    (B26). ``TEMP`` and ``PERM`` end it too and are returned as what they are, a failure,
    never as "not found" (B27, B28): the caller turns them into a 4xx.

Data it owns
    The generator, the request waiting for its answer, and ``trail``: every request with
    its answer, in order, for logs, ``meta1 lookup``-style traces and the conformance
    cases that check which keys were tried (B17, B18, B26).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Generic, Iterable, TypeVar

from meta1.maps.base import MapResult, LookupRequest, Status

T = TypeVar("T")

#: What a core's generator is: it yields requests, receives results, returns its verdict.
Steps = Generator[LookupRequest, MapResult, T]

#: A lookup order: called for the keys only when there is a map to ask them of. Without
#: maps smtps runs every check of every message itself (D-POL-19), and deriving keys
#: nobody looks up was most of the cost of a check there.
KeyOrder = Callable[[], Iterable[str]]


class Plan(Generic[T]):
    """A lookup plan (``next_lookup``/``lookup_result``) around a generator of steps."""

    def __init__(self, steps: Steps[T]):
        self._steps = steps
        self._pending: LookupRequest | None = None
        self._done = False
        self._result: Any = None
        self.trail: list[tuple[LookupRequest, MapResult]] = []
        self._advance(None)

    def _advance(self, answer: MapResult | None) -> None:
        try:
            self._pending = self._steps.send(answer)   # the first send(None) starts it
        except StopIteration as stop:
            self._pending, self._done, self._result = None, True, stop.value

    @property
    def done(self) -> bool:
        return self._done

    @property
    def result(self) -> T:
        """The verdict; only once :attr:`done`."""
        if not self._done:
            raise RuntimeError("the plan is not done: it waits for a lookup result")
        return self._result

    def next_lookup(self) -> LookupRequest | None:
        """The lookup to carry out now (the same one until it is answered), or None when done."""
        return self._pending

    def lookup_result(self, result: MapResult) -> None:
        """The answer to the request :meth:`next_lookup` returned."""
        if self._pending is None:
            raise RuntimeError("no lookup is outstanding")
        if not isinstance(result, MapResult):
            raise TypeError(f"a MapResult is needed, not {type(result).__name__}")
        self.trail.append((self._pending, result))
        self._advance(result)


@dataclass(frozen=True)
class Outcome:
    """How the lookups of one tag ended.

    ``found``: ``key`` (with its tag) answered with ``result.value``. ``failed``: a lookup
    failed temporarily or permanently; ``key`` names it and ``result.reason`` says why.
    Neither: nothing was found (every key NOTFOUND, or a NOMORE ended the sequence).
    """

    key: str = ""
    result: MapResult | None = None

    @property
    def found(self) -> bool:
        return self.result is not None and self.result.found

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result.failed

    @property
    def value(self) -> str:
        return self.result.value if self.result is not None else ""


NOTHING = Outcome()


def first_found(map_name: str | None, tag: str, keys: KeyOrder) -> Steps[Outcome]:
    """Look up ``tag + key`` for each of ``keys()`` in order until one is found (or NOMORE,
    TEMP, PERM). Without a map (``map_name`` None) nothing is asked, nothing is found and
    no key is derived."""
    if not map_name:
        return NOTHING
    for key in keys():
        result = yield LookupRequest(map_name, tag + key)
        if result.status is Status.NOTFOUND:
            continue
        if result.status is Status.NOMORE:
            return NOTHING
        return Outcome(tag + key, result)
    return NOTHING


def run_steps(steps: Steps[T], lookup) -> T:
    """Run ``steps`` to the end with ``lookup(request) -> MapResult`` (tests, tools)."""
    plan = Plan(steps)
    while (request := plan.next_lookup()) is not None:
        plan.lookup_result(lookup(request))
    return plan.result
