"""Hypothesis stateful model of qmgr's scheduler (issue 4, "Tests").

The machine plays smar, smtpc, the clock and the operator at random: transactions
arrive (some for <>, some held, some replayed as deferred), routes resolve or fail,
deliveries connect, end with any mix of results and keep or close their sessions, idle
sessions close, smtpc dies, time jumps, the operator flushes, holds, releases and
deletes. The model keeps its own books — which sessions smtpc really has open, which
recipients are final — and after every step checks them against the scheduler and runs
``Scheduler.check_invariants()``:

* each recipient is in exactly one state, and in the queue that state implies;
* no address ever has more open sessions than its ``max_connections``; a session is
  reused only when one is idle; an address with an ``ocr:`` rate is tried on at most
  that many new connections in any rate window (counted when qmgr started them);
* nothing due is left unscheduled when there is capacity (AQ room, a free slot);
* a delivered, bounced or deleted recipient is never scheduled or recorded again; B57
  holds (``was_deferred`` exactly when a DEFEDB record was written);
* a DSN goes only to a non-null sender, a failing DSN to the postmaster;
* at the end, under a fair driver (every route answers, every delivery ends — all
  successfully, or all with 4xx until the queue lifetime bounces them), every
  transaction reaches done.

A second machine checks that the scheduler refines ``spec/models/scheduler.py`` (issue 7):
driven within the model's bounds, every step it takes is one the model allows, so the
model's proofs — limits, the ``ocr:`` rate, the AQ bound, no starvation — speak of this
code.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meta1.qmgr.scheduler import (
    SECOND, Bounce, Connected, ConnectionLimits, Delete, DelayWarning, DeliveryAgentLost, DeliveryEnded, Exchanger, Final,
    Flush, Hold, MessageKind, RecipientEntry, RecipientOutcome, RecordDeferred, RecordDone, RecordHold,
    Release, ResolveRoute, RouteFailed, RouteResolved, Scheduler, SchedulerConfig, SessionClosed,
    StartDelivery, Status, Tick, TransactionArrived, TransactionDone,
)
from meta1.qmgr.states import AQ_STATES, State
from refinement import Refinement, load_model

KINDS = (MessageKind.ORIGINAL, MessageKind.DSN, MessageKind.DOUBLE_BOUNCE)
NEXTHOPS = ("a.example", "b.example", "c.example")
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
TIGHT = "10.0.0.1"  # ocm: 1 for this one (B59)
RATED = "10.0.0.2"  # ocr: 2 for this one; the fair driver's routes go there too
RATE = 2
START = 2_000_000_000 * SECOND
REPLIES = {Status.DELIVERED: "250 2.0.0 ok", Status.TEMPORARY: "451 4.3.0 later",
           Status.PERMANENT: "550 5.1.1 unknown"}


def limits(address: str) -> ConnectionLimits | None:
    return {TIGHT: ConnectionLimits(1, 1), RATED: ConnectionLimits(1, 3, RATE)}.get(address)


class SchedulerModel(RuleBasedStateMachine):
    @initialize(aq=st.integers(1, 6), initial=st.integers(1, 2), extra=st.integers(0, 2),
                per_delivery=st.integers(1, 3), addresses=st.integers(1, 3),
                warning=st.sampled_from([None, 150 * SECOND]),
                ending=st.sampled_from(["succeed", "temporary"]))
    def setup(self, aq, initial, extra, per_delivery, addresses, warning, ending):
        self.config = SchedulerConfig(
            aq_max_entries=aq, min_queue_delay=100 * SECOND, max_queue_delay=400 * SECOND,
            queue_lifetime=2000 * SECOND, initial_connections=initial,
            max_connections=initial + extra, max_recipients_per_delivery=per_delivery,
            max_addresses_per_delivery=addresses, delay_warning=warning)
        self.scheduler = Scheduler(self.config, limits=limits)
        self.ending = ending
        self.now = START
        self.count = 0
        self.pending_routes: set[str] = set()
        self.flight: dict[int, dict] = {}  # delivery id -> {"start", "address", "at"}
        self.open: dict[str, int] = {}     # sessions smtpc has open (busy or idle)
        self.idle: dict[str, int] = {}
        self.tried_rated: list[int] = []   # when each delivery that tried RATED was started
        self.transactions: dict[str, dict] = {}  # ta id -> {"sender", "level", "rcpts"}
        self.final: set[str] = set()
        self.defedb: set[str] = set()
        self.held: set[str] = set()
        self.bounced_reported: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def send(self, event) -> None:
        for action in self.scheduler.handle(event, self.now):
            self.apply(action)

    def apply(self, action) -> None:
        if isinstance(action, ResolveRoute):
            self.pending_routes.add(action.nexthop)
        elif isinstance(action, StartDelivery):
            self.started(action)
        elif isinstance(action, RecordDone):
            assert action.rcpt_id not in self.final, f"{action.rcpt_id} finished twice"
            assert action.was_deferred == (action.rcpt_id in self.defedb), "B57"
            self.final.add(action.rcpt_id)
            self.defedb.discard(action.rcpt_id)
        elif isinstance(action, RecordDeferred):
            assert action.rcpt_id not in self.final
            assert action.next_try > self.now, "B58: a retry is later, not now"
            ta = self.transactions[action.ta_id]
            assert action.next_try <= ta["arrival"] + self.config.queue_lifetime
            self.defedb.add(action.rcpt_id)
        elif isinstance(action, Bounce):
            ta = self.transactions[action.ta_id]
            assert (ta["level"] == 0 and ta["sender"]) or ta["level"] == 1
            assert action.to_postmaster == (ta["level"] == 1)
            for failed in action.recipients:
                assert failed.rcpt_id not in self.final and failed.rcpt_id not in self.bounced_reported
                self.bounced_reported.add(failed.rcpt_id)
        elif isinstance(action, DelayWarning):
            assert self.transactions[action.ta_id]["sender"]
        elif isinstance(action, RecordHold):
            (self.held.add if action.held else self.held.discard)(action.ta_id)
        elif isinstance(action, TransactionDone):
            ta = self.transactions.pop(action.ta_id)
            assert ta["rcpts"] <= self.final

    def started(self, start: StartDelivery) -> None:
        assert start.delivery_id not in self.flight
        assert 1 <= len(start.rcpt_ids) <= self.config.max_recipients_per_delivery
        assert 1 <= len(start.addresses) <= self.config.max_addresses_per_delivery
        ta = self.transactions[start.ta_id]
        for rcpt in start.rcpt_ids:
            assert rcpt in ta["rcpts"] and rcpt not in self.final, f"{rcpt} scheduled after the end"
            assert ta["nexthops"][rcpt] == start.nexthop
        address = None
        if start.reuse:
            address = start.addresses[0]
            assert self.idle.get(address, 0) > 0, "reuse of a session that is not idle"
            self.idle[address] -= 1
        self.flight[start.delivery_id] = {"start": start, "address": address, "at": self.now}

    def tried(self, delivery_id: int, addresses) -> None:
        """smtpc tried ``addresses`` for a delivery on a new connection: RATED's rate holds."""
        if RATED not in addresses:
            return
        self.tried_rated.append(self.flight[delivery_id]["at"])
        times = sorted(self.tried_rated)
        window = self.config.rate_window
        for n, first in enumerate(times):
            assert sum(t < first + window for t in times[n:]) <= RATE, f"{RATED}: over ocr: {times}"

    def session_opened(self, address: str) -> None:
        self.open[address] = self.open.get(address, 0) + 1
        limit = limits(address)
        most = limit.maximum if limit else self.config.max_connections
        assert self.open[address] <= most, f"{address}: {self.open[address]} sessions, limit {most}"

    def session_gone(self, address: str) -> None:
        self.open[address] -= 1

    # -- smtps / replay ---------------------------------------------------------------------

    @rule(hops=st.lists(st.sampled_from(NEXTHOPS), min_size=1, max_size=4),
          sender=st.sampled_from(["alice@example.org", ""]), level=st.sampled_from([0, 0, 0, 1, 2]),
          held=st.booleans(), replayed=st.booleans(), age=st.integers(0, 2500))
    def arrive(self, hops, sender, level, held, replayed, age):
        self.count += 1
        ta_id = f"T{self.count}"
        arrival = self.now - age * SECOND if replayed else self.now
        entries = []
        for n, hop in enumerate(hops):
            rcpt = f"{ta_id}-{n:04X}"
            if replayed and n % 2:
                entries.append(RecipientEntry(rcpt, hop, attempts=2, next_try=self.now + 50 * SECOND,
                                              last_reply="451 earlier"))
                self.defedb.add(rcpt)
            else:
                entries.append(RecipientEntry(rcpt, hop))
        held = held and self.count % 3 == 0
        self.transactions[ta_id] = {"sender": sender if level == 0 else "", "level": level,
                                    "arrival": arrival, "rcpts": {e.rcpt_id for e in entries},
                                    "nexthops": {e.rcpt_id: e.nexthop for e in entries}}
        if held:
            self.held.add(ta_id)
        self.send(TransactionArrived(ta_id, sender if level == 0 else "", arrival, tuple(entries),
                                     held=held, kind=KINDS[level]))

    # -- smar -------------------------------------------------------------------------------

    @precondition(lambda self: self.pending_routes)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "ok", "temporary", "permanent", "empty"]))
    def route(self, data, outcome):
        nexthop = data.draw(st.sampled_from(sorted(self.pending_routes)))
        self.pending_routes.discard(nexthop)
        if outcome in ("temporary", "permanent"):
            self.send(RouteFailed(nexthop, outcome == "permanent", "4/5xx route"))
            return
        exchangers = ()
        if outcome == "ok":
            chosen = data.draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4, unique=True))
            exchangers = tuple(Exchanger(10 * (n + 1), f"mx{n}", (a,)) for n, a in enumerate(chosen))
        ttl = data.draw(st.integers(1, 3000))
        self.send(RouteResolved(nexthop, exchangers, self.now + ttl * SECOND))

    # -- smtpc ------------------------------------------------------------------------------

    def connecting(self) -> list[int]:
        return sorted(d for d, f in self.flight.items() if f["address"] is None)

    @precondition(lambda self: self.connecting())
    @rule(data=st.data())
    def connect(self, data):
        delivery_id = data.draw(st.sampled_from(self.connecting()))
        plan = self.flight[delivery_id]["start"].addresses
        index = data.draw(st.integers(0, len(plan) - 1))
        self.tried(delivery_id, plan[:index + 1])
        self.flight[delivery_id]["address"] = plan[index]
        self.session_opened(plan[index])
        self.send(Connected(delivery_id, plan[index], plan[:index]))

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), kept_open=st.booleans(), reach=st.booleans())
    def end(self, data, kept_open, reach):
        delivery_id = data.draw(st.sampled_from(sorted(self.flight)))
        flight = self.flight[delivery_id]
        start: StartDelivery = flight["start"]
        address, failed = flight["address"], ()
        if address is None:  # every address of the plan, or all but the last, failed
            self.tried(delivery_id, start.addresses)
        del self.flight[delivery_id]
        if address is None and reach:  # connected and finished without a separate report
            address = start.addresses[-1]
            self.session_opened(address)
            failed = start.addresses[:-1]
        elif address is None:
            failed = start.addresses
        if address is None:
            outcomes = tuple(RecipientOutcome(r, Status.TEMPORARY, "451 4.4.1 no answer")
                             for r in start.rcpt_ids)
        else:
            statuses = data.draw(st.lists(st.sampled_from(Status), min_size=len(start.rcpt_ids),
                                          max_size=len(start.rcpt_ids)))
            outcomes = tuple(RecipientOutcome(r, s, REPLIES[s]) for r, s in zip(start.rcpt_ids, statuses))
            if kept_open:
                self.idle[address] = self.idle.get(address, 0) + 1
            else:
                self.session_gone(address)
        self.send(DeliveryEnded(delivery_id, address, kept_open and address is not None, outcomes, failed))

    @precondition(lambda self: any(self.idle.values()))
    @rule(data=st.data())
    def close_idle(self, data):
        address = data.draw(st.sampled_from(sorted(a for a, n in self.idle.items() if n)))
        self.idle[address] -= 1
        self.session_gone(address)
        self.send(SessionClosed(address))

    @precondition(lambda self: self.flight)
    @rule(chance=st.integers(0, 9))
    def agent_lost(self, chance):
        if chance:  # rare: one time in ten that the rule is picked
            return
        self.flight.clear()
        self.open.clear()
        self.idle.clear()
        self.send(DeliveryAgentLost())

    # -- clock ------------------------------------------------------------------------------

    @rule(seconds=st.integers(0, 900))
    def advance(self, seconds):
        self.now += seconds * SECOND
        self.send(Tick())

    @precondition(lambda self: self.scheduler.next_wakeup is not None)
    @rule()
    def wake(self):
        self.now = max(self.now, self.scheduler.next_wakeup)
        self.send(Tick())

    # -- operator ---------------------------------------------------------------------------

    @rule(nexthop=st.sampled_from((None,) + NEXTHOPS))
    def flush(self, nexthop):
        self.send(Flush(nexthop))

    @precondition(lambda self: self.transactions)
    @rule(data=st.data(), command=st.sampled_from([Hold, Release, Delete]))
    def operator(self, data, command):
        ta_id = data.draw(st.sampled_from(sorted(self.transactions)))
        self.send(command(ta_id))

    # -- checks -----------------------------------------------------------------------------

    @invariant()
    def consistent(self):
        if not hasattr(self, "scheduler"):
            return
        s = self.scheduler
        s.check_invariants()
        assert set(s.transactions) == set(self.transactions)
        aq = 0
        for view in s.recipients():
            assert view.rcpt_id not in self.final or view.state in (
                State.DELIVERED, State.BOUNCED, State.DELETED)
            aq += view.state in AQ_STATES
            if view.state is State.HELD:
                assert view.ta_id in self.held
            if s.aq_size < self.config.aq_max_entries:
                assert view.state is not State.INCOMING, "new mail waits although the AQ has room"
                assert view.state is not State.DEFERRED or view.next_try > self.now, "due mail waits"
        assert aq == s.aq_size <= self.config.aq_max_entries
        active = {r for f in self.flight.values() for r in f["start"].rcpt_ids}
        assert active == {v.rcpt_id for v in s.recipients() if v.state is State.ACTIVE}
        for address, n in self.open.items():
            assert 0 <= self.idle.get(address, 0) <= n

    def teardown(self):
        if not hasattr(self, "scheduler"):
            return
        for ta_id in sorted(self.held):
            if ta_id in self.transactions:
                self.send(Release(ta_id))
        succeed = self.ending == "succeed"
        for _ in range(10_000):  # each turn answers everything outstanding, then wakes
            if not self.transactions:
                break
            for nexthop in sorted(self.pending_routes):
                self.pending_routes.discard(nexthop)
                self.send(RouteResolved(nexthop, (Exchanger(10, "mx", (ADDRESSES[1],)),),
                                        self.now + 10_000 * SECOND))
            for delivery_id in sorted(self.flight):
                flight = self.flight[delivery_id]
                start = flight["start"]
                address = flight["address"] or start.addresses[0]
                if flight["address"] is None:
                    self.tried(delivery_id, (address,))
                    self.session_opened(address)
                del self.flight[delivery_id]
                status = Status.DELIVERED if succeed else Status.TEMPORARY
                self.session_gone(address)
                self.send(DeliveryEnded(delivery_id, address, False, tuple(
                    RecipientOutcome(r, status, REPLIES[status]) for r in start.rcpt_ids)))
            if not self.flight and not self.pending_routes:
                if self.scheduler.next_wakeup is None:
                    break  # nothing outstanding, no timer: stuck
                self.wake()
            self.consistent()
        assert not self.transactions, f"not finished under a fair driver: {sorted(self.transactions)}"


TestScheduler = SchedulerModel.TestCase
TestScheduler.settings = settings(max_examples=120, stateful_step_count=60, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


# -- refinement: the real scheduler against spec/models/scheduler.py --------------------------------

SCHEDULER_MODEL, SCHEDULER_BOUNDS = load_model("scheduler")
#: The model's destinations as next hops, each with one server address.
NEXTHOP_OF = {destination: f"{destination}.example" for destination in SCHEDULER_BOUNDS.DESTINATIONS}
SERVER_OF = {f"{destination}.example": f"192.0.2.{n}" for n, destination in enumerate(SCHEDULER_BOUNDS.DESTINATIONS, 1)}
DESTINATION_AT = {SERVER_OF[nexthop]: destination for destination, nexthop in NEXTHOP_OF.items()}
#: The scheduler's states as the model names them; DEFERRED is "deferred" or "due" by its next try.
MODEL_STATE = {State.INCOMING: "incoming", State.ROUTING: "active-queue", State.READY: "active-queue",
               State.ACTIVE: "delivering", State.DELIVERED: "delivered"}


class SchedulerRefinement(Refinement):
    """Arrivals for the model's destinations, deliveries ending delivered, deferred (a 4xx
    from the server) or unreachable (no address answered), idle sessions kept and closed,
    and the clock, on the real scheduler configured within the model's bounds: AQ_max_entries
    at most the model's AQ bound, each destination one next hop with one server address whose
    max_connections is the model's limit, the rated one's ocr: the model's rate. smar
    answers every route at once (routing is not in the model), nothing is held or deleted,
    and the queue lifetime is out of reach, so nothing bounces. After each step the model
    must explain what the scheduler did."""

    model = SCHEDULER_MODEL
    internal = re.compile(r"admit #\d+( \(due\))? to the AQ|dispatch #\d+ to \w+( on its idle session)?"
                          r"|clock: #\d+ due|clock: a connection to \w+ leaves the rate window")
    # A clock step may let the counted connections leave the rate window, make every
    # deferred recipient due, admit as many as the AQ takes and dispatch them: one model
    # step each.
    depth = 3 * SCHEDULER_BOUNDS.ARRIVALS + SCHEDULER_BOUNDS.RATE

    # An AQ smaller than the model's refines it too, and only there can new and due mail
    # wait together within the model's few arrivals: the fairness turn is then tested.
    @initialize(aq=st.sampled_from([1, SCHEDULER_BOUNDS.AQ_MAX]))
    def setup(self, aq) -> None:
        bounds = SCHEDULER_BOUNDS
        self.rated_server = SERVER_OF[NEXTHOP_OF[bounds.RATED]]
        rated = ConnectionLimits(bounds.LIMIT, bounds.LIMIT, bounds.RATE)
        self.scheduler = Scheduler(SchedulerConfig(
            aq_max_entries=aq, min_queue_delay=100 * SECOND, max_queue_delay=400 * SECOND,
            queue_lifetime=10**6 * SECOND, initial_connections=bounds.LIMIT, max_connections=bounds.LIMIT,
            max_recipients_per_delivery=1, max_addresses_per_delivery=1),
            limits=lambda address: rated if address == self.rated_server else None)
        self.now = START
        self.destinations: list[str] = []         # by arrival: recipient n is T<n>-0000
        self.flight: dict[int, StartDelivery] = {}
        self.idle: dict[str, int] = {}             # sessions smtpc keeps open, per address
        self.delivered: set[str] = set()
        self.begin(self.model.initial()[0])

    def abstraction(self):
        views = {view.rcpt_id: view for view in self.scheduler.recipients()}
        recipients = []
        for n, destination in enumerate(self.destinations):
            rcpt_id = f"T{n}-0000"
            view = views.get(rcpt_id)
            if view is None:                     # its transaction is done and forgotten
                state = "delivered" if rcpt_id in self.delivered else "gone"
            elif view.state is State.DEFERRED:
                state = "due" if view.next_try <= self.now else "deferred"
            else:
                state = MODEL_STATE.get(view.state, view.state.name)
            recipients.append(SCHEDULER_BOUNDS.Recipient(destination, state))
        addresses = self.scheduler.destinations.addresses
        idle = tuple(addresses[SERVER_OF[NEXTHOP_OF[d]]].idle if SERVER_OF[NEXTHOP_OF[d]] in addresses else 0
                     for d in SCHEDULER_BOUNDS.DESTINATIONS)
        rated = addresses.get(self.rated_server)
        counted = sum(until > self.now for until in rated.counted_until) if rated is not None else 0
        # The fairness turn is hidden state the model has too: part of the abstraction, so
        # that one abstraction is one model state (tests/refinement.py).
        return SCHEDULER_BOUNDS.State(tuple(recipients), len(self.destinations), self.scheduler._incoming_turn,
                                      idle, counted)

    def send(self, event, label: str | None = None) -> None:
        """Hand ``event`` to the scheduler and play smar and smtpc's bookkeeping, then follow
        in the model, where ``event`` is the action ``label``."""
        events = [event]
        while events:
            for action in self.scheduler.handle(events.pop(0), self.now):
                if isinstance(action, ResolveRoute):
                    server = Exchanger(10, f"mx.{action.nexthop}", (SERVER_OF[action.nexthop],))
                    events.append(RouteResolved(action.nexthop, (server,), self.now + 10**6 * SECOND))
                elif isinstance(action, StartDelivery):
                    self.flight[action.delivery_id] = action
                    if action.reuse:
                        self.idle[action.addresses[0]] -= 1
                elif isinstance(action, RecordDone):
                    assert action.outcome is Final.DELIVERED, action
                    self.delivered.add(action.rcpt_id)
            self.scheduler.check_invariants()
        self.step(label)

    @precondition(lambda self: len(self.destinations) < SCHEDULER_BOUNDS.ARRIVALS)
    @rule(destination=st.sampled_from(SCHEDULER_BOUNDS.DESTINATIONS))
    def arrive(self, destination):
        ta_id = f"T{len(self.destinations)}"
        self.destinations.append(destination)
        self.send(TransactionArrived(ta_id, "alice@example.org", self.now,
                                     (RecipientEntry(f"{ta_id}-0000", NEXTHOP_OF[destination]),)),
                  f"arrival for {destination}")

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), how=st.sampled_from(["delivered", "deferred", "unreachable"]), kept_open=st.booleans())
    def end(self, data, how, kept_open):
        delivery = self.flight.pop(data.draw(st.sampled_from(sorted(self.flight))))
        address = delivery.addresses[0]
        index = int(delivery.ta_id[1:])           # T<n>: the model's recipient #n
        if how == "unreachable":
            # On a fresh connection that is the model's "unreachable" (D-SCHED-6: the plan
            # held every address, none answered); an idle session that broke when reused
            # says nothing about the destination: only this recipient is deferred.
            label = f"#{index} deferred" if delivery.reuse else f"#{index}: {self.destinations[index]} unreachable"
            self.send(DeliveryEnded(delivery.delivery_id, None, False, (), failed=(address,)), label)
            return
        if kept_open:
            self.idle[address] = self.idle.get(address, 0) + 1
        status = Status.DELIVERED if how == "delivered" else Status.TEMPORARY
        self.send(DeliveryEnded(delivery.delivery_id, address, kept_open, tuple(
            RecipientOutcome(rcpt, status, REPLIES[status]) for rcpt in delivery.rcpt_ids)),
            f"#{index} {how}" + (", session kept idle" if kept_open else ""))

    @precondition(lambda self: any(self.idle.values()))
    @rule(data=st.data())
    def close_idle(self, data):
        address = data.draw(st.sampled_from(sorted(a for a, n in self.idle.items() if n)))
        self.idle[address] -= 1
        self.send(SessionClosed(address), f"idle session to {DESTINATION_AT[address]} closed")

    @rule(seconds=st.sampled_from([50, 100, 400]))
    def clock(self, seconds):
        self.now += seconds * SECOND
        self.send(Tick())


TestSchedulerRefinement = SchedulerRefinement.TestCase
TestSchedulerRefinement.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
