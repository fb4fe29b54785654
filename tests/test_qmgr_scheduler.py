"""Scenario tests of qmgr's scheduler on a manual clock (reference meta1.md §6.4, B57-B69)."""

from __future__ import annotations

import pytest

from meta1.config import load_text
from meta1.machine import ProtocolViolation
from meta1.qmgr.scheduler import (
    NO_RESULT_REPLY, SECOND, Bounce, ConnectionLimits, Delete, DelayWarning, DeliveryAgentLost, DeliveryEnded,
    Final, Flush, Hold, MessageKind, RecipientEntry, RecipientOutcome, RecordDeferred, RecordDone,
    RateHeld, RecordHold, Release, ResolveRoute, Scheduler, SchedulerConfig, SchedulerError, SessionClosed,
    StartDelivery, Tick, TransactionArrived, TransactionDone,
)
from meta1.qmgr.states import TABLE, Input, State
from test_qmgr_scheduler_support import DELIVERED, LATER, NEVER, PERMANENT, TEMPORARY, Harness, only

A1, A2, B1, B2 = "192.0.2.1", "192.0.2.2", "198.51.100.1", "198.51.100.2"
MIN, MAX = 300, 3600  # the default queue delays in seconds


def routed(h: Harness, nexthop: str = "example.net", addresses=(A1,)) -> list:
    return h.route(nexthop, (10, addresses))


def one_start(actions) -> StartDelivery:
    return only([a for a in actions if isinstance(a, StartDelivery)])


# -- B57: DEFEDB only after a failed first attempt ---------------------------------------------

def test_b57_first_attempt_delivered_writes_no_defedb_record():
    h = Harness()
    assert h.arrive("T1", "example.net") == [ResolveRoute("example.net")]
    start = one_start(routed(h))
    actions = h.end(start)
    assert actions == [RecordDone("T1", "T1-0000", Final.DELIVERED, "250 2.0.0 ok", False),
                       TransactionDone("T1")]
    assert h.of(RecordDeferred) == []


def test_b57_first_attempt_4xx_writes_defedb_record_then_done_removes_it():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    deferred = only(h.of(RecordDeferred, h.end(start, status=TEMPORARY)))
    assert (deferred.attempts, deferred.last_reply) == (1, LATER)
    assert deferred.next_try == h.now + MIN * SECOND  # B58: later, not now
    assert h.scheduler.next_wakeup == deferred.next_try
    retry = one_start(h.wake())
    done = only(h.of(RecordDone, h.end(retry)))
    assert done.was_deferred and done.outcome is Final.DELIVERED


# -- B58: 4xx retried later, 5xx bounced, never to <> ------------------------------------------

def test_b58_5xx_bounces_to_the_sender_once_per_transaction():
    h = Harness()
    h.arrive("T1", "example.net", "example.net", "example.net")
    start = one_start(routed(h))
    assert start.rcpt_ids == ("T1-0000", "T1-0001", "T1-0002")
    actions = h.end(start, per_rcpt={"T1-0001": (PERMANENT, NEVER), "T1-0002": (PERMANENT, "554 5.7.1 no")})
    bounce = only(h.of(Bounce, actions))
    assert bounce.sender == "alice@example.org" and not bounce.to_postmaster
    assert [(f.rcpt_id, f.reply, f.expired) for f in bounce.recipients] == [
        ("T1-0001", NEVER, False), ("T1-0002", "554 5.7.1 no", False)]
    # the DSN comes before the recipients are marked done, and the transaction is done last
    kinds = [type(a).__name__ for a in actions]
    assert kinds == ["RecordDone", "Bounce", "RecordDone", "RecordDone", "TransactionDone"]


def test_b58_no_bounce_for_the_null_sender_but_recipients_end():
    h = Harness()
    h.arrive("T1", "example.net", sender="")
    actions = h.end(one_start(routed(h)), status=PERMANENT)
    assert h.of(Bounce, actions) == []
    assert only(h.of(RecordDone, actions)).outcome is Final.BOUNCED
    assert actions[-1] == TransactionDone("T1")


def test_failing_dsn_goes_to_postmaster_and_a_failing_postmaster_notice_to_no_one():
    h = Harness()
    h.arrive("D1", "example.net", sender="", kind=MessageKind.DSN)
    h.arrive("D2", "example.net", sender="", kind=MessageKind.DOUBLE_BOUNCE)
    routed(h)
    for start in h.of(StartDelivery):
        h.end(start, status=PERMANENT)
    bounce = only(h.of(Bounce))
    assert bounce.ta_id == "D1" and bounce.to_postmaster
    assert {a.ta_id for a in h.of(TransactionDone)} == {"D1", "D2"}


def test_dsn_waits_for_the_round_of_the_transaction_to_end():
    """Failures of one transaction on two next hops are reported in one DSN."""
    h = Harness()
    h.arrive("T1", "a.example", "b.example")
    first = one_start(h.route("a.example", (10, [A1])))
    second = one_start(h.route("b.example", (10, [B1])))
    assert h.of(Bounce, h.end(first, status=PERMANENT)) == []
    bounce = only(h.of(Bounce, h.end(second, status=PERMANENT)))
    assert [f.rcpt_id for f in bounce.recipients] == ["T1-0000", "T1-0001"]


def test_dsn_is_not_held_back_by_deferred_siblings():
    h = Harness()
    h.arrive("T1", "example.net", "example.net")
    start = one_start(routed(h))
    actions = h.end(start, per_rcpt={"T1-0000": (TEMPORARY, LATER), "T1-0001": (PERMANENT, NEVER)})
    assert [f.rcpt_id for f in only(h.of(Bounce, actions)).recipients] == ["T1-0001"]
    assert h.scheduler.state_of("T1-0000") is State.DEFERRED


# -- B59: next MX preference instead of waiting --------------------------------------------------

def test_b59_full_primary_mx_sends_the_next_message_to_the_secondary():
    # ocm: A = 1 (the qmgr config map's per-address limit)
    h = Harness(limits=lambda address: ConnectionLimits(1, 1) if address == A1 else None)
    h.arrive("T1", "example.net")
    first = one_start(h.route("example.net", (10, [A1]), (20, [B1])))
    assert first.addresses == (A1, B1)  # smtpc may fall back to B
    h.connected(first, A1)               # one delivery in progress on A
    second = one_start(h.arrive("T2", "example.net"))
    assert second.addresses == (B1,)     # A is at its limit: B now, no waiting


def test_b59_waits_when_every_address_is_full_and_goes_when_one_frees():
    h = Harness(initial_connections=1, max_connections=1)
    h.arrive("T1", "example.net")
    first = one_start(h.route("example.net", (10, [A1]), (20, [B1])))
    h.connected(first, A1)
    second = one_start(h.arrive("T2", "example.net"))
    h.connected(second, B1)
    assert h.of(StartDelivery, h.arrive("T3", "example.net")) == []
    assert h.scheduler.state_of("T3-0000") is State.READY
    third = one_start(h.end(first, kept_open=False))
    assert third.addresses == (A1,) and not third.reuse


def test_connect_reservation_covers_every_planned_address_until_connected():
    h = Harness(initial_connections=1, max_connections=1)
    h.arrive("T1", "example.net")
    first = one_start(h.route("example.net", (10, [A1]), (20, [B1])))
    # still connecting: both A and B are reserved, so T2 waits
    assert h.of(StartDelivery, h.arrive("T2", "example.net")) == []
    second = one_start(h.connected(first, B1, failed=[A1]))  # A failed, B reached: A is free
    assert second.addresses == (A1,)


# -- B69: initial_connections / max_connections ----------------------------------------------------

def test_b69_first_burst_is_initial_connections_and_never_above_max():
    h = Harness(initial_connections=2, max_connections=3)
    for n in range(8):
        h.arrive(f"T{n}", "example.net")
    starts = h.of(StartDelivery, routed(h))
    assert len(starts) == 2
    open_now = list(starts)
    for start in starts:
        h.connected(start, A1)
    most = 2
    while open_now:
        start = open_now.pop(0)
        new = h.of(StartDelivery, h.end(start, kept_open=False))
        for s in new:
            h.connected(s, A1)
        open_now += new
        most = max(most, len(open_now))
        assert len(open_now) <= 3
    assert most == 3  # slow start reached the maximum while deliveries succeeded
    assert len(h.of(TransactionDone)) == 8


def test_slow_start_backs_off_on_connect_failures():
    h = Harness(initial_connections=3, max_connections=5)
    for n in range(3):
        h.arrive(f"T{n}", "example.net")
    starts = h.of(StartDelivery, h.route("example.net", (10, [A1]), (20, [B1])))
    assert len(starts) == 3
    for start in starts:
        h.connected(start, B1, failed=[A1])
    assert h.scheduler.destinations.get(A1).window == 1  # three failures: down to one, not zero
    h.arrive("T9", "example.net")
    assert h.scheduler.state_of("T9-0000") is State.ACTIVE


def test_idle_session_is_reused_and_closing_it_frees_the_slot():
    h = Harness(initial_connections=1, max_connections=1)
    h.arrive("T1", "example.net")
    first = one_start(routed(h))
    h.end(first, kept_open=True)
    second = one_start(h.arrive("T2", "example.net"))
    assert second.reuse and second.addresses == (A1,)
    h.end(second, kept_open=True)
    h.send(SessionClosed(A1))
    assert A1 not in h.scheduler.destinations.addresses  # nothing open: forgotten
    third = one_start(h.arrive("T3", "example.net"))
    assert not third.reuse


# -- ocr: new connections per address per rate window ------------------------------------------

WINDOW = 60  # seconds: ocr:'s window (D-POL-16), the scheduler's default rate_window


def rated(rate: int, *addresses: str):
    """The scheduler's limits hook: ``ocr: rate`` for ``addresses`` (A1 if none), ten
    connections at once so that only the rate can block."""
    return lambda address: ConnectionLimits(10, 10, rate) if address in (addresses or (A1,)) else None


def dispatch_times(rate: int, arrivals: list[int]) -> list[int]:
    """Messages to distinct next hops on A1 arrive at ``arrivals`` (seconds); each delivery
    connects and ends at once, closing its session; the clock moves only to the next arrival
    or the scheduler's own wake-up. When each delivery started (seconds)."""
    h = Harness(limits=rated(rate))
    start = h.now
    pending = sorted(arrivals)
    started: list[int] = []
    n = 0
    while pending or h.scheduler.next_wakeup is not None:
        wakeup = h.scheduler.next_wakeup
        if pending and (wakeup is None or start + pending[0] * SECOND <= wakeup):
            h.now = start + pending.pop(0) * SECOND
            actions = h.route(f"d{n}.example", (10, [A1])) + h.arrive(f"T{n}", f"d{n}.example")
            n += 1
        else:
            actions = h.wake()
        while deliveries := h.of(StartDelivery, actions):
            started += [(h.now - start) // SECOND] * len(deliveries)
            actions = [a for delivery in deliveries for a in h.end(delivery, kept_open=False)]
    assert len(h.of(TransactionDone)) == len(arrivals)
    return started


@pytest.mark.parametrize("rate, arrivals, started", [
    (2, [0, 0, 0, 0, 0], [0, 0, 60, 60, 120]),            # two per window, then each waits its turn
    (2, [0, 10, 20, 30], [0, 10, 60, 70]),                # room returns as each one leaves the window
    (1, [0, 59, 60, 61], [0, 60, 120, 180]),              # at exactly the window's end, not before
    (3, [0, 100, 100, 100, 100], [0, 100, 100, 100, 160]),  # an old connection no longer counts
    (0, [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),                # ocr: 0 is no limit (D-POL-16)
])
def test_ocr_at_most_n_new_connections_per_window(rate, arrivals, started):
    assert dispatch_times(rate, arrivals) == started


def test_ocr_room_returns_exactly_when_the_oldest_connection_leaves_the_window():
    h = Harness(limits=rated(2))
    first_at = h.now
    for n in range(3):
        h.arrive(f"T{n}", "example.net")
    first, second = h.of(StartDelivery, routed(h))
    h.advance(5)
    h.end(first, kept_open=False)
    h.end(second, kept_open=False)
    assert h.scheduler.state_of("T2-0000") is State.READY     # two in the window: blocked
    assert h.scheduler.next_wakeup == first_at + WINDOW * SECOND
    assert h.of(StartDelivery, h.advance(to=first_at + WINDOW * SECOND - 1)) == []
    third = one_start(h.wake())
    assert third.ta_id == "T2" and not third.reuse
    assert h.scheduler.next_wakeup is None                     # nothing waits: no timer


def test_ocr_a_rate_that_holds_deliveries_is_said_once_per_hold():
    """RateHeld is for the log: why mail to a server is not going out, and until when. One
    per hold, not one per delivery that joins the wait."""
    h = Harness(limits=rated(1))
    first_at = h.now
    h.arrive("T1", "example.net")
    h.arrive("T2", "example.net")
    actions = routed(h)
    assert h.of(RateHeld, actions) == [RateHeld(A1, first_at + WINDOW * SECOND, 1)]
    h.end(one_start(actions), kept_open=False)
    assert h.of(RateHeld, h.arrive("T3", "example.net")) == []       # already held: said once
    actions = h.advance(to=first_at + WINDOW * SECOND)
    assert one_start(actions).ta_id == "T2"
    assert h.of(RateHeld, actions) == [RateHeld(A1, first_at + 2 * WINDOW * SECOND, 1)]   # T3: a new hold


def test_ocr_reusing_an_idle_session_is_no_new_connection():
    h = Harness(limits=rated(1))
    h.arrive("T1", "example.net")
    first = one_start(routed(h))
    h.end(first, kept_open=True)
    second = one_start(h.arrive("T2", "example.net"))          # the rate is used up: reuse still goes
    assert second.reuse
    assert h.of(StartDelivery, h.arrive("T3", "example.net")) == []   # a new connection would not
    third = one_start(h.end(second, kept_open=True))           # the session is idle again: T3 takes it
    assert third.ta_id == "T3" and third.reuse
    assert len(h.scheduler.destinations.get(A1).counted_until) == 1   # one new connection in all


def test_ocr_sends_to_the_next_preference_while_the_first_is_used_up_b59():
    h = Harness(limits=rated(1, A1))
    h.arrive("T1", "example.net")
    first = one_start(h.route("example.net", (10, [A1]), (20, [B1])))
    assert first.addresses == (A1, B1)
    h.connected(first, A1)                       # B1 was not tried: its count is given back
    second = one_start(h.arrive("T2", "example.net"))
    assert second.addresses == (B1,)             # A1's rate is used up: B1 at once, no waiting
    h.end(first, kept_open=False)
    h.end(second, kept_open=False)
    h.advance(WINDOW)
    assert one_start(h.arrive("T3", "example.net")).addresses == (A1, B1)   # the preferred again


def test_ocr_an_unused_reservation_is_given_back_a_failed_attempt_is_not():
    h = Harness(limits=rated(1, A1, A2, B1))
    began = h.now
    h.arrive("T1", "example.net")
    first = one_start(h.route("example.net", (10, [A1]), (20, [A2]), (30, [B1])))
    assert first.addresses == (A1, A2, B1)
    h.connected(first, A2, failed=[A1])          # A1 tried and not reached, A2 reached, B1 never tried
    second = one_start(h.arrive("T2", "example.net"))
    assert second.addresses == (B1,)             # A1 and A2 each had their new connection
    h.end(second, address=None, status=TEMPORARY, failed=[B1])
    assert h.of(StartDelivery, h.arrive("T3", "example.net")) == []   # B1 was tried: it counts
    assert h.scheduler.next_wakeup == began + WINDOW * SECOND


def test_ocr_a_next_hop_waiting_for_rate_room_goes_before_one_ready_since():
    h = Harness(limits=rated(1))
    began = h.now
    for n in range(3):
        h.route(f"d{n}.example", (10, [A1]))
    h.end(one_start(h.arrive("T0", "d0.example")), kept_open=False)
    h.advance(10)
    h.arrive("T1", "d1.example")                               # waits for A1's rate room
    h.now = began + (WINDOW + 1) * SECOND                      # the timer is late: mail comes first
    start = one_start(h.arrive("T2", "d2.example"))
    assert start.ta_id == "T1" and h.scheduler.state_of("T2-0000") is State.READY


def test_ocr_next_wakeup_is_the_earlier_of_a_retry_and_rate_room():
    h = Harness(limits=rated(1), min_queue_delay=30 * SECOND, max_queue_delay=60 * SECOND)
    began = h.now
    h.arrive("T1", "a.example", "b.example")
    h.route("b.example", (10, [B1]))
    a = one_start(h.route("a.example", (10, [A1])))
    h.arrive("T2", "a.example")                                # blocked on A1's rate
    b = only([s for s in h.of(StartDelivery) if s.nexthop == "b.example"])
    h.end(b, status=TEMPORARY)                                 # retried in 30 s
    assert h.scheduler.next_wakeup == began + 30 * SECOND
    h.end(a, kept_open=False)
    h.wake()                                                   # the retry goes to B1
    assert h.scheduler.next_wakeup == began + WINDOW * SECOND  # then A1's rate room
    assert one_start(h.wake()).ta_id == "T2"


def test_ocr_counts_survive_the_loss_of_the_delivery_agent():
    h = Harness(limits=rated(1), min_queue_delay=10 * SECOND)
    began = h.now
    h.arrive("T1", "example.net")
    one_start(routed(h))
    h.send(DeliveryAgentLost())               # which addresses smtpc tried is unknown: still counted
    retry = h.advance(10)
    assert h.of(StartDelivery, retry) == [] and h.scheduler.state_of("T1-0000") is State.READY
    assert h.scheduler.next_wakeup == began + WINDOW * SECOND


def test_ocr_entries_kept_for_their_counts_are_swept_once_the_window_has_passed():
    from meta1.qmgr import destinations as module
    h = Harness(limits=lambda address: ConnectionLimits(1, 1, 1))
    for n in range(module.PRUNE_MIN):
        address = f"10.0.{n // 256}.{n % 256}"
        h.route(f"d{n}.example", (10, [address]))
        h.end(one_start(h.arrive(f"T{n}", f"d{n}.example")), kept_open=False)
    assert len(h.scheduler.destinations.addresses) == module.PRUNE_MIN   # each still counts
    h.advance(WINDOW)
    h.route("last.example", (10, [B1]))
    h.arrive("L", "last.example")
    assert list(h.scheduler.destinations.addresses) == [B1]


def test_the_rate_window_is_a_positive_scheduler_parameter():
    assert SchedulerConfig().rate_window == WINDOW * SECOND
    with pytest.raises(ValueError):
        Scheduler(SchedulerConfig(rate_window=0))


# -- backoff and lifetime ----------------------------------------------------------------------

def test_backoff_doubles_between_min_and_max_queue_delay():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    delays = []
    for _ in range(7):
        before = h.now
        deferred = only(h.of(RecordDeferred, h.end(start, status=TEMPORARY)))
        delays.append((deferred.next_try - before) // SECOND)
        start = one_start(h.wake())
    assert delays == [300, 600, 1200, 2400, 3600, 3600, 3600]
    assert only(h.of(RecordDeferred, h.end(start, status=TEMPORARY))).attempts == 8


@pytest.mark.parametrize("minimum, maximum, lifetime, series, bounced_after", [
    # seconds: the delays after each 4xx; the attempt on which the recipient bounces
    (300, 3600, 5 * 86400, [300, 600, 1200, 2400, 3600, 3600], None),
    (60, 60, 200, [60, 60, 60, 20], 5),            # the last delay is cut to the deadline
    (100, 1000, 700, [100, 200, 400], 4),          # 100+200+400 = 700: the try at expiry fails
    (1, 1 << 40, 1 << 41, [1, 2, 4, 8, 16, 32], None),
])
def test_backoff_and_lifetime_table(minimum, maximum, lifetime, series, bounced_after):
    h = Harness(min_queue_delay=minimum * SECOND, max_queue_delay=maximum * SECOND,
                queue_lifetime=lifetime * SECOND)
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    delays, bounced = [], None
    for attempt in range(1, len(series) + 2):
        before = h.now
        actions = h.end(start, status=TEMPORARY)
        if h.of(Bounce, actions):
            assert only(only(h.of(Bounce, actions)).recipients).expired
            bounced = attempt
            break
        delays.append((only(h.of(RecordDeferred, actions)).next_try - before) // SECOND)
        if bounced_after is None and len(delays) == len(series):
            break
        start = one_start(h.wake())
    assert (delays, bounced) == (series, bounced_after)


def test_lifetime_clamps_the_last_retry_and_then_bounces_expired():
    h = Harness(queue_lifetime=1000 * SECOND)
    arrival = h.now
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    h.advance(900)
    deferred = only(h.of(RecordDeferred, h.end(start, status=TEMPORARY)))
    assert deferred.next_try == arrival + 1000 * SECOND  # not 900 + 300 s
    start = one_start(h.wake())
    bounce = only(h.of(Bounce, h.end(start, status=TEMPORARY)))
    assert only(bounce.recipients).expired and only(bounce.recipients).reply == LATER


def test_times_after_2038_work():
    h = Harness(start=(1 << 33) * SECOND)  # year 2242
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    assert only(h.of(RecordDeferred, h.end(start, status=TEMPORARY))).next_try == h.now + MIN * SECOND


def test_delay_warning_once_per_recipient():
    h = Harness(delay_warning=3000 * SECOND)
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    warnings = []
    for _ in range(5):
        warnings += h.of(DelayWarning, h.end(start, status=TEMPORARY))
        start = one_start(h.wake())
    warning = only(warnings)
    assert warning.sender == "alice@example.org" and only(warning.recipients).attempts >= 2


# -- routes --------------------------------------------------------------------------------------

def test_route_failures_defer_or_bounce_everyone_waiting_for_the_next_hop():
    h = Harness()
    h.arrive("T1", "gone.example", "gone.example")
    h.arrive("T2", "slow.example")
    bounce = only(h.of(Bounce, h.route_failed("gone.example", "550 5.1.2 no such domain", True)))
    assert len(bounce.recipients) == 2
    deferred = only(h.of(RecordDeferred, h.route_failed("slow.example", "451 4.4.3 SERVFAIL", False)))
    assert deferred.attempts == 1
    assert only(h.of(ResolveRoute, h.wake())) == ResolveRoute("slow.example")  # asked again


def test_route_without_addresses_is_a_temporary_failure():
    h = Harness()
    h.arrive("T1", "example.net")
    assert only(h.of(RecordDeferred, h.route("example.net", (10, [])))).attempts == 1


def test_one_lookup_per_next_hop_and_the_route_is_cached_until_it_expires():
    h = Harness()
    h.arrive("T1", "example.net")
    assert h.of(ResolveRoute, h.arrive("T2", "example.net")) == []  # lookup already running
    assert len(h.of(StartDelivery, h.route("example.net", (10, [A1]), ttl=60))) == 2
    assert h.of(ResolveRoute, h.arrive("T3", "example.net")) == []  # cached
    h.advance(61)
    assert h.arrive("T4", "example.net") == [ResolveRoute("example.net")]


def test_unreachable_destination_defers_the_recipients_waiting_for_it():
    h = Harness(initial_connections=1, max_connections=1)
    for n in range(3):
        h.arrive(f"T{n}", "example.net")
    start = one_start(h.route("example.net", (10, [A1]), (20, [B1])))
    actions = h.end(start, address=None, status=TEMPORARY, reply="451 4.4.1 no answer", failed=[A1, B1])
    assert len(h.of(RecordDeferred, actions)) == 3  # the one tried and the two waiting
    assert h.of(StartDelivery, actions) == []


# -- grouping, AQ, fairness ------------------------------------------------------------------

def test_recipients_grouped_per_next_hop_and_bounded_per_delivery():
    h = Harness(max_recipients_per_delivery=100)
    h.arrive("T1", *(["example.net"] * 150 + ["other.example"]))
    starts = h.of(StartDelivery, routed(h)) + h.of(StartDelivery, h.route("other.example", (10, [B1])))
    assert sorted(len(s.rcpt_ids) for s in starts) == [1, 50, 100]


def test_aq_is_bounded_and_alternates_between_new_and_deferred_mail():
    h = Harness(aq_max_entries=2, initial_connections=2, max_connections=2)
    h.arrive("T1", "example.net", "example.net")
    for start in h.of(StartDelivery, routed(h)):
        h.end(start, status=TEMPORARY)  # both deferred, due in 300 s
    for n in range(2, 6):
        h.arrive(f"N{n}", "example.net")  # new mail fills the AQ
    assert h.scheduler.aq_size == 2
    h.advance(MIN)  # deferred now due; the AQ is full
    assert h.scheduler.next_wakeup is None
    order = []
    while h.scheduler.transactions:  # end the oldest delivery in flight, one at a time
        oldest = min(h.scheduler.deliveries)
        start = next(a for a in h.of(StartDelivery) if a.delivery_id == oldest)
        order += [r.split("-")[0] for r in start.rcpt_ids]
        h.end(start)
    # N2, N3 filled the AQ before T1 was due; from then on deferred and new take turns
    assert order == ["N2", "N3", "T1", "N4", "T1", "N5"]


def test_round_robin_between_next_hops():
    h = Harness(initial_connections=1, max_connections=1)
    for n in range(3):
        h.arrive(f"A{n}", "a.example")
        h.arrive(f"B{n}", "b.example")
    h.route("a.example", (10, [A1]))
    h.route("b.example", (10, [B1]))
    assert [s.ta_id for s in h.of(StartDelivery)] == ["A0", "B0"]


# -- operator commands ---------------------------------------------------------------------------

def test_hold_release_and_hold_of_an_active_recipient():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    assert h.send(Hold("T1")) == [RecordHold("T1", True)]
    actions = h.end(start, status=TEMPORARY)  # deferred record written, then held
    assert h.of(RecordDeferred, actions) and h.scheduler.state_of("T1-0000") is State.HELD
    h.advance(2 * MAX)
    assert h.of(StartDelivery) == [start]  # held: never scheduled
    released = h.send(Release("T1"))
    assert released[0] == RecordHold("T1", False) and one_start(released).rcpt_ids == ("T1-0000",)


def test_held_transaction_arrives_held_and_expires_only_after_release():
    h = Harness()
    h.arrive("T1", "example.net", held=True)
    assert h.scheduler.state_of("T1-0000") is State.HELD and h.scheduler.next_wakeup is None
    assert h.of(ResolveRoute) == []


def test_flush_all_and_flush_one_destination():
    h = Harness()
    h.arrive("T1", "a.example")
    h.arrive("T2", "b.example")
    h.end(one_start(h.route("a.example", (10, [A1]))), status=TEMPORARY)
    h.end(one_start(h.route("b.example", (10, [B1]))), status=TEMPORARY)
    assert one_start(h.send(Flush("b.example"))).ta_id == "T2"
    assert h.scheduler.state_of("T1-0000") is State.DEFERRED
    assert one_start(h.send(Flush())).ta_id == "T1"


def test_delete_is_silent_and_waits_for_an_active_delivery():
    h = Harness()
    h.arrive("T1", "example.net", "slow.example")
    start = one_start(routed(h))
    actions = h.send(Delete("T1"))
    assert only(h.of(RecordDone, actions)).outcome is Final.DELETED  # the one not in flight
    actions = h.end(start, status=PERMANENT)
    assert h.of(Bounce, actions) == []
    assert only(h.of(RecordDone, actions)).outcome is Final.DELETED
    assert actions[-1] == TransactionDone("T1")
    with pytest.raises(KeyError):
        h.send(Delete("T1"))


def test_delivered_wins_over_a_pending_delete():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(routed(h))
    h.send(Delete("T1"))
    assert only(h.of(RecordDone, h.end(start))).outcome is Final.DELIVERED


# -- replay, the agent, errors ----------------------------------------------------------------------

def test_replayed_deferred_recipient_waits_for_its_next_try():
    h = Harness()
    entry = RecipientEntry("T1-0000", "example.net", attempts=3, next_try=h.now + 100 * SECOND,
                           last_reply=LATER)
    assert h.send(TransactionArrived("T1", "a@b", h.now - 1000 * SECOND, (entry,))) == []
    assert h.scheduler.next_wakeup == h.now + 100 * SECOND
    h.wake()
    start = one_start(routed(h))
    deferred = only(h.of(RecordDeferred, h.end(start, status=TEMPORARY)))
    assert deferred.attempts == 4 and deferred.next_try - h.now == 2400 * SECOND


def test_transaction_without_open_recipients_is_done_at_once():
    h = Harness()
    assert h.send(TransactionArrived("T1", "a@b", h.now, ())) == [TransactionDone("T1")]


def test_agent_lost_defers_everything_in_flight_and_forgets_sessions():
    h = Harness()
    h.arrive("T1", "example.net")
    h.arrive("T2", "example.net")
    for start in h.of(StartDelivery, routed(h)):
        h.connected(start, A1)
    actions = h.send(DeliveryAgentLost())
    assert len(h.of(RecordDeferred, actions)) == 2
    assert h.scheduler.deliveries == {} and A1 not in h.scheduler.destinations.addresses


def test_errors_from_the_peers_are_refused():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(routed(h, addresses=(A1, A2)))
    with pytest.raises(SchedulerError):
        h.connected(start, B1)  # not in its plan
    with pytest.raises(SchedulerError):
        h.connected(99, A1)
    with pytest.raises(SchedulerError):
        h.send(TransactionArrived("T1", "a@b", h.now, ()))
    with pytest.raises(TypeError):
        h.scheduler.handle(object(), h.now)


def test_missing_outcome_is_a_temporary_failure():
    h = Harness()
    h.arrive("T1", "example.net", "example.net")
    start = one_start(routed(h))
    actions = h.send(DeliveryEnded(start.delivery_id, A1, True,
                                   (RecipientOutcome("T1-0000", DELIVERED, "250 ok"),)))
    deferred = only(h.of(RecordDeferred, actions))
    assert deferred.rcpt_id == "T1-0001" and deferred.last_reply == NO_RESULT_REPLY


def test_trace_records_every_state_change():
    records = []
    h = Harness(trace=records.append)
    h.arrive("T1", "example.net")
    h.end(one_start(routed(h)))
    assert [(r["old"], r["input"], r["new"]) for r in records] == [
        ("INCOMING", "ADMIT", "ROUTING"), ("ROUTING", "ROUTED", "READY"),
        ("READY", "DISPATCH", "ACTIVE"), ("ACTIVE", "DELIVERED", "DELIVERED")]
    assert {r["machine"] for r in records} == {"qmgr-recipient"}


def test_table_has_no_row_out_of_a_final_state():
    finals = {State.DELIVERED, State.BOUNCED, State.DELETED}
    assert not [key for key in TABLE if key[0] in finals]
    s = Scheduler(SchedulerConfig())
    s.handle(TransactionArrived("T1", "a@b", 0, (RecipientEntry("T1-0000", "x"),)), 0)
    with pytest.raises(ProtocolViolation):
        s._fire(s.transactions["T1"].recipients["T1-0000"], Input.DELIVERED)  # still ROUTING


def test_config_from_the_qmgr_section():
    config = load_text("qmgr { min_queue_delay = 1m; max_queue_delay = 2h; queue_lifetime = 3d;"
                       " AQ_max_entries = 50; smtpc { initial_connections = 2; max_connections = 7; } }",
                       "t.conf", home="/nonexistent")
    c = SchedulerConfig.from_config(config, max_recipients_per_delivery=10)
    assert (c.min_queue_delay, c.max_queue_delay) == (60 * SECOND, 7200 * SECOND)
    assert c.queue_lifetime == 3 * 86400 * SECOND
    assert (c.aq_max_entries, c.initial_connections, c.max_connections) == (50, 2, 7)
    assert c.max_recipients_per_delivery == 10
    with pytest.raises(ValueError):
        SchedulerConfig(min_queue_delay=10, max_queue_delay=5)


def test_tick_is_harmless_and_wakeup_tracks_the_earliest_retry():
    h = Harness()
    assert h.send(Tick()) == [] and h.scheduler.next_wakeup is None


def test_expired_routes_are_forgotten_once_the_cache_grows():
    from meta1.qmgr import scheduler as module
    h = Harness()
    for n in range(module.ROUTE_CACHE_MIN):
        h.route(f"d{n}.example", (10, [A1]), ttl=1)
    h.advance(2)
    h.route("last.example", (10, [A1]))
    assert list(h.scheduler.routes) == ["last.example"]


def test_plan_targets_name_the_exchanger_of_each_address_once():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(h.route("example.net", (20, [B1, A1]), (10, [A1, A2])))
    assert start.addresses == (A1, A2, B1)
    assert [(t.preference, t.host, t.addresses) for t in start.targets] == [
        (10, "mx10.example.net", (A1,)), (10, "mx10.example.net", (A2,)), (20, "mx20.example.net", (B1,))]


def test_next_hops_waiting_for_one_address_are_woken_longest_waiting_first():
    h = Harness(initial_connections=1, max_connections=1)
    for n in range(4):
        h.route(f"d{n}.example", (10, [A1]))
    first = one_start(h.arrive("T0", "d0.example"))
    for n in (3, 1, 2):
        h.arrive(f"T{n}", f"d{n}.example")
    assert h.scheduler.waiting == {A1: {"d3.example": None, "d1.example": None, "d2.example": None}}
    order = []
    start = first
    for _ in range(3):
        start = one_start(h.end(start, kept_open=False))
        order.append(start.nexthop)
    assert order == ["d3.example", "d1.example", "d2.example"]


def test_a_new_route_wakes_a_blocked_next_hop():
    h = Harness(initial_connections=1, max_connections=1)
    h.arrive("T1", "example.net")
    h.connected(one_start(routed(h)), A1)
    assert h.of(StartDelivery, h.arrive("T2", "example.net")) == []  # blocked on A1
    start = one_start(h.route("example.net", (10, [A2])))
    assert start.ta_id == "T2" and start.addresses == (A2,)


def test_a_refused_event_changes_nothing():
    h = Harness()
    h.arrive("T1", "example.net")
    start = one_start(routed(h, addresses=(A1, A2)))
    with pytest.raises(SchedulerError):
        h.scheduler.handle(DeliveryEnded(start.delivery_id, B1, False, (), failed=(A1,)), h.now)
    h.scheduler.check_invariants()
    assert h.scheduler.destinations.get(A1).window == 4  # no feedback from the refused event
    h.connected(start, A2, failed=[A1])
    with pytest.raises(SchedulerError):
        h.connected(start, A1)  # already on A2
    with pytest.raises(SchedulerError):
        h.scheduler.handle(TransactionArrived("T2", "a@b", h.now, (
            RecipientEntry("T2-0000", "x"), RecipientEntry("T2-0000", "x"))), h.now)
    assert "T2" not in h.scheduler.transactions
    assert only(h.of(RecordDone, h.end(start, A2))).outcome is Final.DELIVERED
