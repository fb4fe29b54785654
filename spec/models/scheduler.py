"""Scheduler: connection limits and rates are never exceeded, no destination starves,
every due recipient is eventually scheduled.

An abstraction of qmgr's scheduler (:mod:`meta1.qmgr.scheduler`, spec/scheduler.md):
two destinations, each with a connection limit of 1 (open sessions, busy or idle,
D-SCHED-2), and ``x`` with a rate of ``RATE`` new connections per window (``ocr:``,
D-SCHED-14); an active queue (AQ) of at most ``AQ_MAX`` recipients; recipients arrive
for either destination (at most ``ARRIVALS``); a recipient in the AQ is dispatched on its
destination's idle session if it has one — no new connection — else on a new connection
when the destination has a free connection and rate room; a delivery ends delivered or
deferred, its session closed or kept idle — or finds its destination unreachable (no
address answered a fresh connection), and then every recipient waiting in the AQ for
that destination is deferred with it (the destination status cache, D-SCHED-6); an
idle session may be closed; a counted connection leaves the rate window as the clock
moves; a deferred recipient waits for the clock, then competes for the AQ again —
alternately with new arrivals (fairness, D-SCHED). New recipients enter the AQ in
arrival order; which due one goes first is the retry index's business (earliest next
try), which the model leaves open: any of them.

``tests/test_qmgr_scheduler_model.py`` checks that the real scheduler refines this model.

Invariants
    * limits — never more sessions (busy or idle) to a destination than its limit;
    * rate — never more new connections to ``x`` in the window than its rate;
    * aq-bounded — never more than ``AQ_MAX`` recipients in the AQ.
Goal
    * all-final — from every state, a state where every recipient is delivered can still
      be reached (no destination starves, no recipient is left behind — also one whose
      destination's rate is used up: room returns with the clock).

Variants the checker must catch
    * ``forgets-deferred`` — a deferred recipient is never readmitted to the AQ;
    * ``ignores-rate`` — a new connection is made whatever the rate.
"""

from __future__ import annotations

from typing import NamedTuple

DESTINATIONS = ("x", "y")
LIMIT = 1
RATED = "x"          # the destination with a rate (y has none)
RATE = 1
AQ_MAX = 2
ARRIVALS = 3


class Recipient(NamedTuple):
    destination: str
    state: str      # incoming | active-queue | delivering | deferred | due | delivered


class State(NamedTuple):
    recipients: tuple = ()
    arrived: int = 0
    incoming_turn: bool = True   # fairness: who gets the next AQ slot
    idle: tuple = (0, 0)         # idle sessions per destination (DESTINATIONS' order)
    counted: int = 0             # new connections to RATED still in the rate window


class Scheduler:
    name = "scheduler"
    description = " ".join(__doc__.split("\n\n")[0].split())   # the first paragraph: the promise

    def __init__(self, readmit: bool = True, rate: bool = True):
        self.readmit = readmit
        self.rate = rate
        self.invariants = [("limits", self.limits), ("rate", self.within_rate), ("aq-bounded", self.aq_bounded)]
        self.goals = [("all-final", lambda s: all(r.state == "delivered" for r in s.recipients))]

    def initial(self):
        return [State()]

    @staticmethod
    def _with(state: State, index: int, new: str, **changes) -> State:
        recipients = list(state.recipients)
        recipients[index] = recipients[index]._replace(state=new)
        return state._replace(recipients=tuple(recipients), **changes)

    @staticmethod
    def _idle(state: State, destination: str, change: int) -> tuple:
        d = DESTINATIONS.index(destination)
        return state.idle[:d] + (state.idle[d] + change,) + state.idle[d + 1:]

    def actions(self, state: State):
        if state.arrived < ARRIVALS:
            for destination in DESTINATIONS:
                yield (f"arrival for {destination}",
                       state._replace(recipients=state.recipients + (Recipient(destination, "incoming"),),
                                      arrived=state.arrived + 1))
        in_aq = sum(r.state in ("active-queue", "delivering") for r in state.recipients)
        incoming = [i for i, r in enumerate(state.recipients) if r.state == "incoming"]
        due = [i for i, r in enumerate(state.recipients) if r.state == "due"] if self.readmit else []
        if in_aq < AQ_MAX and (incoming or due):
            if incoming and (state.incoming_turn or not due):
                yield f"admit #{incoming[0]} to the AQ", self._with(state, incoming[0], "active-queue",
                                                                    incoming_turn=False)
            else:
                for index in due:
                    yield f"admit #{index} (due) to the AQ", self._with(state, index, "active-queue",
                                                                        incoming_turn=True)
        for i, r in enumerate(state.recipients):
            d = r.destination
            idle = state.idle[DESTINATIONS.index(d)]
            if r.state == "active-queue":
                yield from self._dispatch(state, i, d, idle)
            if r.state == "delivering":
                for outcome in ("delivered", "deferred"):
                    yield f"#{i} {outcome}", self._with(state, i, outcome)
                    yield (f"#{i} {outcome}, session kept idle",
                           self._with(state, i, outcome, idle=self._idle(state, d, +1)))
                yield f"#{i}: {d} unreachable", self._unreachable(state, i)
            if r.state == "deferred":
                yield f"clock: #{i} due", self._with(state, i, "due")
        for d, idle in zip(DESTINATIONS, state.idle):
            if idle:
                yield f"idle session to {d} closed", state._replace(idle=self._idle(state, d, -1))
        if state.counted:
            yield f"clock: a connection to {RATED} leaves the rate window", state._replace(counted=state.counted - 1)

    def _dispatch(self, state: State, index: int, destination: str, idle: int):
        """An idle session is reused first (the plan's rule: no new connection); else a new
        connection if the destination has a free one and, for RATED, rate room."""
        if idle:
            yield (f"dispatch #{index} to {destination} on its idle session",
                   self._with(state, index, "delivering", idle=self._idle(state, destination, -1)))
            return
        busy = sum(o.state == "delivering" and o.destination == destination for o in state.recipients)
        if busy >= LIMIT:
            return
        if destination != RATED:
            yield f"dispatch #{index} to {destination}", self._with(state, index, "delivering")
        elif state.counted < RATE or not self.rate:
            yield (f"dispatch #{index} to {destination}",
                   self._with(state, index, "delivering", counted=state.counted + 1))

    def _unreachable(self, state: State, index: int) -> State:
        """``index``'s delivery reached no address: it and every recipient waiting in the AQ
        for the same destination are deferred at once (D-SCHED-6)."""
        destination = state.recipients[index].destination
        for i, r in enumerate(state.recipients):
            if i == index or (r.state == "active-queue" and r.destination == destination):
                state = self._with(state, i, "deferred")
        return state

    @staticmethod
    def limits(state: State) -> bool:
        return all(sum(r.state == "delivering" and r.destination == d for r in state.recipients) + idle <= LIMIT
                   for d, idle in zip(DESTINATIONS, state.idle))

    @staticmethod
    def within_rate(state: State) -> bool:
        return state.counted <= RATE

    @staticmethod
    def aq_bounded(state: State) -> bool:
        return sum(r.state in ("active-queue", "delivering") for r in state.recipients) <= AQ_MAX


MODEL = Scheduler()
MODEL.variants = {"forgets-deferred": Scheduler(readmit=False), "ignores-rate": Scheduler(rate=False)}
