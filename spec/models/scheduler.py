"""Scheduler: connection limits are never exceeded, no destination starves, every due
recipient is eventually scheduled.

An abstraction of qmgr's scheduler (:mod:`meta1.qmgr.scheduler`, spec/scheduler.md):
two destinations, each with a connection limit of 1; an active queue (AQ) of at most
``AQ_MAX`` recipients; recipients arrive for either destination (at most ``ARRIVALS``);
a recipient in the AQ is dispatched when its destination has a free connection; a
delivery ends delivered or deferred — or finds its destination unreachable (no
address answered a fresh connection), and then every recipient waiting in the AQ for
that destination is deferred with it (the destination status cache, D-SCHED-6); a deferred recipient waits for the clock, then
competes for the AQ again — alternately with new arrivals (fairness, D-SCHED). New
recipients enter the AQ in arrival order; which due one goes first is the retry
index's business (earliest next try), which the model leaves open: any of them.

``tests/test_qmgr_scheduler_model.py`` checks that the real scheduler refines this model.

Invariants
    * limits — never more deliveries to a destination than its limit;
    * aq-bounded — never more than ``AQ_MAX`` recipients in the AQ.
Goal
    * all-final — from every state, a state where every recipient is delivered can still
      be reached (no destination starves, no recipient is left behind).

Variant the checker must catch
    * ``forgets-deferred`` — a deferred recipient is never readmitted to the AQ.
"""

from __future__ import annotations

from typing import NamedTuple

DESTINATIONS = ("x", "y")
LIMIT = 1
AQ_MAX = 2
ARRIVALS = 3


class Recipient(NamedTuple):
    destination: str
    state: str      # incoming | active-queue | delivering | deferred | due | delivered


class State(NamedTuple):
    recipients: tuple = ()
    arrived: int = 0
    incoming_turn: bool = True   # fairness: who gets the next AQ slot


class Scheduler:
    name = "scheduler"
    description = " ".join(__doc__.split("\n\n")[0].split())   # the first paragraph: the promise

    def __init__(self, readmit: bool = True):
        self.readmit = readmit
        self.invariants = [("limits", self.limits), ("aq-bounded", self.aq_bounded)]
        self.goals = [("all-final", lambda s: all(r.state == "delivered" for r in s.recipients))]

    def initial(self):
        return [State()]

    @staticmethod
    def _with(state: State, index: int, new: str, **changes) -> State:
        recipients = list(state.recipients)
        recipients[index] = recipients[index]._replace(state=new)
        return state._replace(recipients=tuple(recipients), **changes)

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
            busy = sum(o.state == "delivering" and o.destination == r.destination for o in state.recipients)
            if r.state == "active-queue" and busy < LIMIT:
                yield f"dispatch #{i} to {r.destination}", self._with(state, i, "delivering")
            if r.state == "delivering":
                yield f"#{i} delivered", self._with(state, i, "delivered")
                yield f"#{i} deferred", self._with(state, i, "deferred")
                yield f"#{i}: {r.destination} unreachable", self._unreachable(state, i)
            if r.state == "deferred":
                yield f"clock: #{i} due", self._with(state, i, "due")

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
        return all(sum(r.state == "delivering" and r.destination == d for r in state.recipients) <= LIMIT
                   for d in DESTINATIONS)

    @staticmethod
    def aq_bounded(state: State) -> bool:
        return sum(r.state in ("active-queue", "delivering") for r in state.recipients) <= AQ_MAX


MODEL = Scheduler()
MODEL.variants = {"forgets-deferred": Scheduler(readmit=False)}
