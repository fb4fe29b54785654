"""MX fallback: one delivery attempt walks the addresses of a next hop in preference order,
each at most once, skipping those at their connection limit, and always ends.

An abstraction of smtpc's address plan (:mod:`meta1.smtpc.plan`) with qmgr's
connection limits (:mod:`meta1.qmgr.destinations`, B59): a next hop with ``MX 10 a``,
``MX 10 b`` (equal preference: tried in either order — the plan shuffles them) and
``MX 20 c``. Any address may be at its connection limit when the attempt starts (then it
is skipped: the next preference is used instead of waiting, B59). Each address tried may
refuse the connection, greet with 4xx (move on), greet with 5xx (stop: bounce) or take
the message.

``tests/test_smtpc_plan.py`` checks that qmgr's address plan and smtpc's walk refine this
model.

Invariants
    * once-per-attempt — no address is tried twice;
    * preference-order — an address is tried only when every address of a better
      preference has been tried or is at its limit;
    * bounded — at most ``MAX_ADDRESSES`` addresses per attempt.
Goal
    * ends — from every state the attempt can end (delivered, bounced or deferred).

Variant the checker must catch
    * ``retry-refused`` — an address that refused the connection goes back to the end of
      the plan and is tried again.
"""

from __future__ import annotations

from typing import NamedTuple

ADDRESSES = {"a": 10, "b": 10, "c": 20}
MAX_ADDRESSES = 5
OUTCOMES = ("refused", "4xx greeting", "5xx greeting", "accepted")


class State(NamedTuple):
    limited: frozenset           # addresses at their connection limit
    tried: tuple = ()            # (address, what happened) in order
    outcome: str | None = None   # delivered | bounced | deferred


class MxFallback:
    name = "mxfallback"
    description = " ".join(__doc__.split("\n\n")[0].split())   # the first paragraph: the promise

    def __init__(self, retry_refused: bool = False):
        self.retry_refused = retry_refused
        self.invariants = [("once-per-attempt", self.once_per_attempt),
                           ("preference-order", self.preference_order),
                           ("bounded", lambda s: len(s.tried) <= MAX_ADDRESSES)]
        self.goals = [("ends", lambda s: s.outcome is not None)]

    def initial(self):
        names = sorted(ADDRESSES)
        return [State(frozenset(n for i, n in enumerate(names) if mask >> i & 1)) for mask in range(8)]

    def candidates(self, state: State) -> list[str]:
        """Untried addresses of the best preference left, not at their limit."""
        done = {address for address, what in state.tried
                if not (self.retry_refused and what == "refused")}
        left = [a for a in ADDRESSES if a not in done and a not in state.limited]
        if not left:
            return []
        best = min(ADDRESSES[a] for a in left)
        return [a for a in left if ADDRESSES[a] == best]

    def actions(self, state: State):
        if state.outcome is not None:
            return
        candidates = self.candidates(state) if len(state.tried) < MAX_ADDRESSES else []
        if not candidates:
            yield "no address left: deferred", state._replace(outcome="deferred")
            return
        for address in candidates:
            for what in OUTCOMES:
                tried = state.tried + ((address, what),)
                outcome = {"5xx greeting": "bounced", "accepted": "delivered"}.get(what)
                yield f"{address}: {what}", state._replace(tried=tried, outcome=outcome)

    @staticmethod
    def once_per_attempt(state: State) -> bool:
        addresses = [address for address, _ in state.tried]
        return len(addresses) == len(set(addresses))

    @staticmethod
    def preference_order(state: State) -> bool:
        for index, (address, _) in enumerate(state.tried):
            before = {a for a, _ in state.tried[:index]}
            if any(ADDRESSES[other] < ADDRESSES[address] and other not in before and other not in state.limited
                   for other in ADDRESSES):
                return False
        return True


MODEL = MxFallback()
MODEL.variants = {"retry-refused": MxFallback(retry_refused=True)}
