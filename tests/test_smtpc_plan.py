"""The MX/address plan: order, fallback, bounds, connection limits (B59, B60), with a seeded RNG;
and, with qmgr's address plan, the refinement of spec/models/mxfallback.py."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import initialize, precondition, rule

from meta1.qmgr.destinations import Destinations, Plan as QmgrPlan
from meta1.smtp.replies import Reply
from meta1.smtpc.plan import TABLE, AddressPlan, Input, PlanMisuse, State, candidates
from refinement import Refinement, load_model

MX = [(20, "backup.example", ["192.0.2.20"]),
      (10, "mx1.example", ["192.0.2.1", "2001:db8::1"]),
      (10, "mx2.example", ["192.0.2.2"]),
      (30, "last.example", ["192.0.2.30"])]


def order(plan: AddressPlan) -> list[str]:
    got = []
    while (candidate := plan.next_address()) is not None:
        got.append(candidate.address)
        plan.connect_failed("Connection refused")
    return got


def test_preference_order_with_random_order_among_equals() -> None:
    seen = Counter()
    for seed in range(40):
        got = order(AddressPlan(MX, random.Random(seed), max_addresses=10))
        assert got[-2:] == ["192.0.2.20", "192.0.2.30"]
        assert set(got[:3]) == {"192.0.2.1", "2001:db8::1", "192.0.2.2"}
        # An exchanger's own addresses stay in smar's order.
        assert got.index("192.0.2.1") < got.index("2001:db8::1")
        seen[got[0]] += 1
    assert set(seen) == {"192.0.2.1", "192.0.2.2"}   # both preference-10 hosts come first sometimes


def test_the_same_seed_gives_the_same_order() -> None:
    assert order(AddressPlan(MX, random.Random(7), max_addresses=10)) == \
        order(AddressPlan(MX, random.Random(7), max_addresses=10))


def test_hosts_without_addresses_are_skipped_and_duplicates_tried_once() -> None:
    # B60: an MX without an address does not make the lookup fail; the next one is used.
    exchangers = [(10, "noaddr.example", []), (20, "a.example", ["192.0.2.5"]),
                  (30, "alias.example", ["192.0.2.5", "192.0.2.6"])]
    assert [c.address for c in candidates(exchangers, random.Random(1))] == ["192.0.2.5", "192.0.2.6"]


def test_max_addresses_bounds_the_attempt() -> None:
    plan = AddressPlan(MX, random.Random(1), max_addresses=2)
    assert len(order(plan)) == 2
    assert plan.finished and plan.outcome.kind == "temporary"
    assert plan.outcome.reason.code == 451 and "Connection refused" in plan.outcome.reason.lines[0]


def test_4xx_greeting_moves_on_5xx_greeting_stops() -> None:
    plan = AddressPlan(MX, random.Random(1))
    first = plan.next_address()
    plan.greeting(Reply(421, "4.3.2", ("busy",)))
    second = plan.next_address()
    assert second != first
    plan.greeting(Reply(554, "5.7.1", ("no mail from you",)))
    assert plan.finished and plan.outcome.kind == "permanent"
    assert plan.outcome.reason.code == 554
    assert plan.next_address() is None


def test_max_sessions_bounds_the_attempt() -> None:
    plan = AddressPlan(MX, random.Random(1), max_sessions=2)
    for _ in range(2):
        plan.next_address()
        plan.greeted()
        plan.session_ended(Reply(421, "4.4.2", ("lost",)))
    assert plan.next_address() is None
    assert plan.outcome.kind == "temporary" and plan.outcome.reason.lines == ("lost",)
    assert plan.sessions == 2 and len(plan.tried) == 2


def test_delivered_ends_the_plan() -> None:
    plan = AddressPlan(MX, random.Random(1))
    plan.next_address()
    plan.greeted()
    plan.delivered()
    assert plan.outcome.kind == "delivered" and plan.outcome.reason is None


def test_no_address_at_all() -> None:
    plan = AddressPlan([(10, "x.example", [])], random.Random(1))
    assert plan.next_address() is None
    assert plan.outcome.kind == "temporary" and plan.outcome.reason.status == "4.4.4"


def test_an_address_at_its_connection_limit_is_passed_over_not_used_up() -> None:
    # B59: mx1 is at its limit, so the next preference is used instead of waiting.
    exchangers = [(10, "mx1.example", ["192.0.2.1"]), (20, "mx2.example", ["192.0.2.2"])]
    plan = AddressPlan(exchangers, random.Random(1))
    busy = {"192.0.2.1"}
    assert plan.next_address(busy=busy.__contains__).address == "192.0.2.2"
    plan.connect_failed("timeout")
    busy.add("192.0.2.2")  # nothing free: the plan waits, blocked
    assert plan.next_address(busy=busy.__contains__) is None
    assert plan.blocked and not plan.finished
    busy.clear()           # a connection ended: the passed-over address is still there
    assert plan.next_address(busy=busy.__contains__).address == "192.0.2.1"
    assert not plan.blocked


def test_reports_out_of_turn_are_plan_misuse() -> None:
    plan = AddressPlan(MX, random.Random(1))
    with pytest.raises(PlanMisuse):
        plan.greeted()
    plan.next_address()
    with pytest.raises(PlanMisuse):
        plan.next_address()
    assert plan.state is State.CONNECTING


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from("abcd"),
                          st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1"]), max_size=3)),
                max_size=5),
       st.integers(0, 2 ** 32), st.integers(1, 6), st.integers(1, 3),
       st.lists(st.sampled_from(["refused", "421", "554", "greeted-lost", "greeted-done"]), max_size=10))
def test_any_walk_respects_the_bounds_and_the_table(exchangers, seed, max_addresses, max_sessions, events) -> None:
    trace: list[dict] = []
    plan = AddressPlan(exchangers, random.Random(seed), max_addresses=max_addresses,
                       max_sessions=max_sessions, trace=trace.append)
    preferences = []
    for event in events:
        candidate = plan.next_address()
        if candidate is None:
            break
        preferences.append(candidate.preference)
        if event == "refused":
            plan.connect_failed("refused")
        elif event in ("421", "554"):
            plan.greeting(Reply(int(event), None, ("x",)))
        else:
            plan.greeted()
            if event == "greeted-done":
                plan.delivered()
            else:
                plan.session_ended(Reply(451, "4.4.2", ("lost",)))
        if plan.finished:
            break
    assert preferences == sorted(preferences)
    assert len(plan.tried) <= max_addresses and plan.sessions <= max_sessions
    assert len({c.address for c in plan.tried}) == len(plan.tried)
    for step in trace:
        assert (State[step["old"]], Input[step["input"]]) in TABLE


# -- refinement: qmgr's plan and smtpc's walk against spec/models/mxfallback.py ---------------------

MX_MODEL, MX_BOUNDS = load_model("mxfallback")
#: What the model's outcomes of one address are, as reports to the plan.
REPORT = {
    "refused": lambda plan: plan.connect_failed("Connection refused"),
    "4xx greeting": lambda plan: plan.greeting(Reply(421, "4.3.2", ("busy",))),
    "5xx greeting": lambda plan: plan.greeting(Reply(554, "5.7.1", ("no mail from you",))),
    "accepted": lambda plan: (plan.greeting(Reply(220, None, ("ready",))), plan.delivered()),
}
MODEL_OUTCOME = {"delivered": "delivered", "permanent": "bounced", "temporary": "deferred"}
#: The scheduler's time during an attempt (the model has no clock: no address has a rate).
NOW = 0


class MxFallbackRefinement(Refinement):
    """One delivery attempt to the model's next hop (``MX 10 a``, ``MX 10 b``, ``MX 20 c``),
    with any of its addresses at its connection limit, and each address tried answering
    as the model lets it; after every report the model must explain the walk.

    The connection limit (B59) is applied where meta1 applies it — qmgr's plan leaves the
    addresses without room out of the delivery (``Destinations.plan``), smtpc's plan walks
    the rest — or, drawn instead, by smtpc's plan itself (``next_address(busy=...)``).
    The model's limits do not change during the attempt, so a plan that has nothing left
    but busy addresses (or a delivery qmgr cannot start at all) is the model's "no address
    left: deferred": this attempt is over, the recipients wait.
    """

    model = MX_MODEL
    ATTEMPT = dict(start=st.sampled_from(MX_MODEL.initial()), limits_in=st.sampled_from(["qmgr", "smtpc"]),
                   seed=st.integers(0, 2 ** 32))

    @initialize(**ATTEMPT)
    def first_attempt(self, start, limits_in, seed) -> None:
        self._attempt(start, limits_in, seed)

    @precondition(lambda self: self.abstract.outcome is not None)
    @rule(**ATTEMPT)
    def next_attempt(self, start, limits_in, seed) -> None:
        """An attempt is one run of the model: the next one starts from a start of its own."""
        self._attempt(start, limits_in, seed)

    def _attempt(self, start, limits_in, seed) -> None:
        rng = random.Random(seed)
        self.destinations = Destinations(1, 1)
        for address in start.limited:        # at its limit: one open session fills its window
            self.destinations.take(QmgrPlan((address,), reuse=False), NOW)
            self.destinations.opened(address)
        # smar's order: by preference, equal preferences shuffled (qmgr keeps it).
        route = sorted(rng.sample(sorted(MX_BOUNDS.ADDRESSES), len(MX_BOUNDS.ADDRESSES)),
                       key=MX_BOUNDS.ADDRESSES.get)
        offered = route
        self.busy = None
        if limits_in == "qmgr":
            qmgr_plan = self.destinations.plan(route, MX_BOUNDS.MAX_ADDRESSES, NOW)
            offered = qmgr_plan.addresses if qmgr_plan is not None else []
        else:
            self.busy = lambda address: not self.destinations.can_start(address, NOW)
        self.plan = AddressPlan([(MX_BOUNDS.ADDRESSES[a], f"mx-{a}.example", [a]) for a in offered], rng,
                                max_addresses=MX_BOUNDS.MAX_ADDRESSES) if offered else None
        self.reported: list[str] = []
        self.over = False                    # the attempt ended without an address to try
        self.begin(start)

    def abstraction(self):
        limited = frozenset(a for a in MX_BOUNDS.ADDRESSES if not self.destinations.can_start(a, NOW))
        tried = tuple(zip((c.address for c in self.plan.tried), self.reported)) if self.plan else ()
        outcome = "deferred" if self.over else None
        if self.plan is not None and self.plan.outcome is not None:
            outcome = MODEL_OUTCOME[self.plan.outcome.kind]
        return MX_BOUNDS.State(limited, tried, outcome)

    @precondition(lambda self: self.abstract.outcome is None)
    @rule(what=st.sampled_from(MX_BOUNDS.OUTCOMES))
    def next_address(self, what) -> None:
        candidate = self.plan.next_address(busy=self.busy) if self.plan is not None else None
        if candidate is None:
            assert self.plan is None or self.plan.finished or self.plan.blocked
            self.over = True
            self.step("no address left: deferred")
            return
        self.reported.append(what)
        REPORT[what](self.plan)
        self.step(f"{candidate.address}: {what}")


TestMxFallbackRefinement = MxFallbackRefinement.TestCase
TestMxFallbackRefinement.settings = settings(max_examples=150, stateful_step_count=12, deadline=None)
