"""A manual-clock harness around :class:`meta1.qmgr.scheduler.Scheduler` for the tests.

The harness plays the daemon: it feeds events at a ``now`` it controls (trio-style
manual clock: time moves only when a test says so), keeps every action, and checks the
scheduler's invariants after every event.
"""

from __future__ import annotations

from typing import Iterable

from meta1.qmgr.scheduler import (
    SECOND, Connected, DeliveryEnded, Exchanger, RecipientEntry, RecipientOutcome,
    RouteFailed, RouteResolved, Scheduler, SchedulerConfig, StartDelivery, Status, Tick,
    TransactionArrived,
)

DELIVERED, TEMPORARY, PERMANENT = Status.DELIVERED, Status.TEMPORARY, Status.PERMANENT
OK, LATER, NEVER = "250 2.0.0 ok", "451 4.3.0 try later", "550 5.1.1 no such user"


class Harness:
    def __init__(self, start: int = 1_000_000 * SECOND, limits=None, trace=None, **config):
        self.now = start
        self.scheduler = Scheduler(SchedulerConfig(**config), limits=limits, trace=trace)
        self.log: list = []

    def send(self, event) -> list:
        actions = self.scheduler.handle(event, self.now)
        self.scheduler.check_invariants()
        self.log.extend(actions)
        return actions

    def advance(self, seconds: float = 0, *, to: int | None = None) -> list:
        self.now = to if to is not None else self.now + int(seconds * SECOND)
        return self.send(Tick())

    def wake(self) -> list:
        """Move the clock to the scheduler's wake-up time and fire the timer."""
        at = self.scheduler.next_wakeup
        assert at is not None, "no timer armed"
        return self.advance(to=at)

    def arrive(self, ta_id: str, *nexthops: str, sender: str = "alice@example.org",
               entries: Iterable[RecipientEntry] = (), **fields) -> list:
        recipients = tuple(RecipientEntry(f"{ta_id}-{n:04X}", hop) for n, hop in enumerate(nexthops))
        return self.send(TransactionArrived(ta_id, sender, self.now, recipients + tuple(entries), **fields))

    def route(self, nexthop: str, *exchangers: tuple[int, Iterable[str]], ttl: float = 86400) -> list:
        mxs = tuple(Exchanger(pref, f"mx{pref}.{nexthop}", tuple(addrs)) for pref, addrs in exchangers)
        return self.send(RouteResolved(nexthop, mxs, self.now + int(ttl * SECOND)))

    def route_failed(self, nexthop: str, reply: str, permanent: bool) -> list:
        return self.send(RouteFailed(nexthop, permanent, reply))

    def connected(self, delivery: StartDelivery | int, address: str, failed=()) -> list:
        did = delivery if isinstance(delivery, int) else delivery.delivery_id
        return self.send(Connected(did, address, tuple(failed)))

    def end(self, delivery: StartDelivery, address: str | None = "first", *, status: Status = DELIVERED,
            reply: str | None = None, per_rcpt: dict | None = None, kept_open: bool = True,
            failed=()) -> list:
        """End ``delivery``: every recipient ``status`` (or per_rcpt[rcpt] = (status, reply))."""
        if address == "first":
            address = delivery.addresses[0]
        default = reply or {DELIVERED: OK, TEMPORARY: LATER, PERMANENT: NEVER}[status]
        outcomes = []
        for rcpt in delivery.rcpt_ids:
            st, rp = (per_rcpt or {}).get(rcpt, (status, default))
            outcomes.append(RecipientOutcome(rcpt, st, rp))
        return self.send(DeliveryEnded(delivery.delivery_id, address, kept_open and address is not None,
                                       tuple(outcomes), tuple(failed)))

    def of(self, kind, actions=None) -> list:
        return [a for a in (self.log if actions is None else actions) if isinstance(a, kind)]


def only(items: list):
    assert len(items) == 1, items
    return items[0]
