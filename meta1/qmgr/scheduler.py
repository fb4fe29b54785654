"""qmgr's scheduler: which recipient goes where and when, as a pure object.

Synopsis
    scheduler = Scheduler(SchedulerConfig.from_config(config))
    actions = scheduler.handle(event, now_us)     # carry the actions out in order
    timer_at = scheduler.next_wakeup              # arm one timer; on expiry handle(Tick(), now)

Responsibilities
    The scheduler owns the in-memory envelope state of qmgr's delivery half (reference
    meta1.md §1.2 steps 3-7, §1.5, §1.6): the incoming queue (IQDB), the active queue
    (AQ, at most ``AQ_max_entries`` recipients), the deferred queue's retry index (the
    "EDB cache", ordered by next-try time), the route of each next hop, the connection
    accounting of each server address (:mod:`meta1.qmgr.destinations`) and the deliveries
    handed to smtpc. It does no I/O and reads no clock: every input is an *event* with the
    current time passed in (``now``: int microseconds since the epoch), every output an
    *action* — a small frozen dataclass the daemon carries out. Each recipient's state
    changes only through the table in :mod:`meta1.qmgr.states`.

Events (inputs)
    ``TransactionArrived`` (new from smtps, or replayed from IBDB/DEFEDB with attempts,
    next try and last reply), ``RouteResolved`` / ``RouteFailed`` (smar's answer for a next
    hop), ``Connected`` (smtpc reached an address of a delivery's plan), ``DeliveryEnded``
    (per-recipient results, the session's fate, the addresses that failed),
    ``SessionClosed`` (smtpc closed an idle session), ``DeliveryAgentLost`` (smtpc died),
    ``Tick`` (the timer fired, or the clock was stepped), and the operator's ``Flush``,
    ``Hold``, ``Release``, ``Delete``. ``Connected`` and ``SessionClosed`` are optional:
    without the first a delivery keeps its connect reservations until it ends; without
    the second the daemon reports every session as closed (``kept_open=False``).

Actions (outputs), in the order they must take effect
    ``ResolveRoute``, ``StartDelivery``, ``RecordDone`` (IBDB "done"; also drop the DEFEDB
    record when ``was_deferred``), ``RecordDeferred`` (write/replace the DEFEDB record),
    ``RecordHold``, ``Bounce`` (one DSN for the failed recipients of a transaction),
    ``DelayWarning``, ``TransactionDone`` (every recipient final: the content may go).
    A ``Bounce`` comes *before* the ``RecordDone`` of its recipients: the daemon queues
    the DSN durably first, so a crash in between repeats the DSN rather than losing it.
    ``TransactionDone`` comes after them all, so the DSN can still read the content.

Strategies (prose and reasons: spec/scheduler.md; decisions D-SCHED-1…)
    * Leaky bucket: only ``AQ_max_entries`` recipients are in the AQ (routing, waiting for
      a slot, or being delivered); the rest wait in the incoming queue or the retry index.
    * Fairness: when the AQ has room it takes alternately from the incoming queue (FIFO)
      and from the due part of the retry index (earliest next try first), so a backlog of
      deferred mail cannot starve new mail nor the other way round.
    * Grouping: a transaction's recipients for one next hop go in one delivery (one SMTP
      transaction, several RCPTs), at most ``max_recipients_per_delivery`` of them.
    * Round robin: next hops with recipients waiting for a slot take turns, one delivery
      each per turn, so one busy destination does not hold up the others. A next hop
      that finds no address with room is *blocked*: it waits, listed under each of its
      addresses, until one of them gains room, and only those are looked at then.
    * Slow start per server address, the ``ocr:`` rate of new connections per address,
      and the next MX preference instead of waiting (B59): see
      :mod:`meta1.qmgr.destinations`.
    * One timer: ``next_wakeup`` is the earliest of the next deferred recipient's try and
      the time an address that blocked next hops wait for gets rate room back. Room that
      an event gives (a session ended, a reservation given back) needs no timer: the
      event wakes the next hops waiting for that address.
    * Destination status cache: when a delivery reached none of the addresses of its
      next hop, the other recipients waiting for that next hop are deferred at once with
      the same reply instead of each timing out on the same dead servers.
    * Exponential backoff: after the n-th temporary failure the next try is
      ``min_queue_delay * 2**(n-1)``, at most ``max_queue_delay``, and never later than
      the end of the queue lifetime (so the last try happens at expiry). A temporary
      failure at or after ``queue_lifetime`` bounces.
    * B57: a recipient delivered on its first attempt gets a ``RecordDone`` only; the first
      temporary failure writes its first ``RecordDeferred``.
    * DSNs: failed recipients are collected per transaction and reported in one
      ``Bounce`` when the transaction's delivery round is over (none of its recipients is
      waiting for or in a delivery); never for the null sender ``<>``; a failing DSN is
      reported to the postmaster, a failing postmaster notice to no one.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

from sortedcontainers import SortedDict

from meta1.machine import ProtocolViolation, TraceSink
from meta1.qmgr.dsn import MessageKind
from meta1.qmgr.destinations import DEFAULT_RATE_WINDOW, ConnectionLimits, Destinations, Exchanger, LimitLookup, Plan
from meta1.qmgr.states import AQ_STATES, FINAL_STATES, ROUND_STATES, TABLE, Input, State
from meta1.queue.retry import SECOND, next_try_time

__all__ = [
    "SECOND", "SchedulerConfig", "Scheduler", "SchedulerError", "Exchanger", "ConnectionLimits", "MessageKind",
    # events
    "RecipientEntry", "TransactionArrived", "RouteResolved", "RouteFailed", "Connected",
    "Status", "RecipientOutcome", "DeliveryEnded", "SessionClosed", "DeliveryAgentLost",
    "Tick", "Flush", "Hold", "Release", "Delete",
    # actions
    "ResolveRoute", "StartDelivery", "Final", "RecordDone", "RecordDeferred", "RecordHold",
    "FailedRecipient", "Bounce", "DelayedRecipient", "DelayWarning", "TransactionDone",
    "RecipientView",
]

#: Route cache size below which expired routes are simply left until looked up again.
ROUTE_CACHE_MIN = 1024
#: Reply used for recipients a delivery ended without a result for.
NO_RESULT_REPLY = "451 4.4.0 the delivery agent gave no result for this recipient"
#: Reply used when smar's route for a next hop names no address at all.
NO_ADDRESS_REPLY = "451 4.4.3 no address for the next hop"


class SchedulerError(Exception):
    """An event that contradicts the scheduler's state (an unknown delivery, a duplicate
    transaction, an address outside a delivery's plan): a bug in the caller or a peer.
    The event is refused before it changes anything."""


# -- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's knobs; times in microseconds."""

    aq_max_entries: int = 8192
    min_queue_delay: int = 300 * SECOND
    max_queue_delay: int = 3600 * SECOND
    queue_lifetime: int = 5 * 86400 * SECOND
    initial_connections: int = 4
    max_connections: int = 20
    #: RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per transaction.
    max_recipients_per_delivery: int = 100
    #: Addresses smtpc may try in one delivery (each reserves a connect slot meanwhile).
    max_addresses_per_delivery: int = 5
    #: Age after which a deferred recipient's sender gets one "delayed" DSN; None: never.
    delay_warning: int | None = None
    #: How long a new connection counts against its address's ``ocr:`` rate (D-POL-16:
    #: 60 s; a scheduler parameter, no configuration option).
    rate_window: int = DEFAULT_RATE_WINDOW

    def __post_init__(self) -> None:
        if not 0 < self.min_queue_delay <= self.max_queue_delay:
            raise ValueError("need 0 < min_queue_delay <= max_queue_delay")
        if self.queue_lifetime <= 0 or self.aq_max_entries < 1:
            raise ValueError("queue_lifetime and aq_max_entries must be positive")
        if self.max_recipients_per_delivery < 1 or self.max_addresses_per_delivery < 1:
            raise ValueError("per-delivery limits must be at least 1")

    @classmethod
    def from_config(cls, config, **overrides) -> SchedulerConfig:
        """From a loaded configuration (``meta1.config``): the qmgr section's options."""
        qmgr = config.qmgr
        values = dict(
            aq_max_entries=qmgr.AQ_max_entries,
            min_queue_delay=qmgr.min_queue_delay * SECOND,
            max_queue_delay=qmgr.max_queue_delay * SECOND,
            queue_lifetime=qmgr.queue_lifetime * SECOND,
            initial_connections=qmgr.smtpc.initial_connections,
            max_connections=qmgr.smtpc.max_connections,
            delay_warning=qmgr.delay_warning * SECOND or None,
        )
        values.update(overrides)
        return cls(**values)


# -- events ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecipientEntry:
    """One recipient as qmgr knows it from IBDB/DEFEDB: where it goes and how it fared.

    ``attempts == 0``: never tried (not in DEFEDB). Otherwise it has a DEFEDB record and is
    due at ``next_try`` (None: at once).
    """

    rcpt_id: str
    nexthop: str
    attempts: int = 0
    next_try: int | None = None
    last_reply: str = ""
    warned: bool = False  # a delay warning was already sent
    last_remote: str = ""  # the server that gave ``last_reply`` ("" if none did)


@dataclass(frozen=True)
class TransactionArrived:
    """A transaction enters the scheduler (from smtps after its IBDB commit, or on replay).

    ``kind`` (spec/dsn.md): ``ORIGINAL`` mail; a ``DSN`` qmgr generated (its failure is
    reported to the postmaster); a ``DOUBLE_BOUNCE`` notice (its failure to no one).
    ``recipients`` holds only those not yet done.
    """

    ta_id: str
    sender: str  # "" for <>
    arrival: int
    recipients: tuple[RecipientEntry, ...]
    held: bool = False
    kind: MessageKind = MessageKind.ORIGINAL


@dataclass(frozen=True)
class RouteResolved:
    """smar's route for a next hop: exchangers in preference order; cache it until ``expires``."""

    nexthop: str
    exchangers: tuple[Exchanger, ...]
    expires: int


@dataclass(frozen=True)
class RouteFailed:
    """smar could not resolve a next hop: NXDOMAIN or null MX (permanent), SERVFAIL or timeout."""

    nexthop: str
    permanent: bool
    reply: str


@dataclass(frozen=True)
class Connected:
    """smtpc opened a session for a delivery to ``address``, after ``failed`` did not answer."""

    delivery_id: int
    address: str
    failed: tuple[str, ...] = ()


class Status(enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class RecipientOutcome:
    """``reply`` for ``rcpt_id``; ``remote_mta``: the server that gave it ("" when the reply
    is qmgr's or smtpc's own), for the DSN's Remote-MTA field (RFC 3464 §2.3.5)."""

    rcpt_id: str
    status: Status
    reply: str
    remote_mta: str = ""


@dataclass(frozen=True)
class DeliveryEnded:
    """A delivery is over.

    ``address``: the session that carried the transaction, None when no address could be
    used; ``kept_open``: smtpc keeps that session idle for reuse; ``failed``: addresses that
    could not be reached or broke the session before answering; ``outcomes``: one per
    recipient — a recipient without one failed temporarily with ``reply``.
    """

    delivery_id: int
    address: str | None
    kept_open: bool
    outcomes: tuple[RecipientOutcome, ...]
    failed: tuple[str, ...] = ()
    reply: str = NO_RESULT_REPLY


@dataclass(frozen=True)
class SessionClosed:
    """smtpc closed an idle session to ``address`` (idle timeout, peer hung up, shutdown)."""

    address: str


@dataclass(frozen=True)
class DeliveryAgentLost:
    """smtpc is gone: every delivery in flight failed temporarily, no session is open."""

    reply: str = "451 4.3.0 the delivery agent stopped"


@dataclass(frozen=True)
class Tick:
    """The timer fired, or the clock was stepped: nothing but ``now`` changed."""


@dataclass(frozen=True)
class Flush:
    """Operator: make deferred recipients due now — all, or those for one next hop."""

    nexthop: str | None = None


@dataclass(frozen=True)
class Hold:
    ta_id: str


@dataclass(frozen=True)
class Release:
    ta_id: str


@dataclass(frozen=True)
class Delete:
    ta_id: str


Event = (TransactionArrived | RouteResolved | RouteFailed | Connected | DeliveryEnded
         | SessionClosed | DeliveryAgentLost | Tick | Flush | Hold | Release | Delete)


# -- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolveRoute:
    nexthop: str


@dataclass(frozen=True)
class StartDelivery:
    """Hand to smtpc: one SMTP transaction for ``rcpt_ids`` of ``ta_id``.

    ``addresses``: where to try, in order (each has room; ``reuse``: an idle session to
    the only address is to be used). ``targets``: the same addresses with the exchanger
    each belongs to (one address per :class:`Exchanger`), for smtpc's plan and its logs.
    """

    delivery_id: int
    ta_id: str
    rcpt_ids: tuple[str, ...]
    nexthop: str
    addresses: tuple[str, ...]
    reuse: bool
    targets: tuple[Exchanger, ...] = ()


class Final(enum.Enum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DELETED = "deleted"


@dataclass(frozen=True)
class RecordDone:
    """Write the recipient's IBDB done record; ``was_deferred``: remove its DEFEDB record too."""

    ta_id: str
    rcpt_id: str
    outcome: Final
    reply: str
    was_deferred: bool


@dataclass(frozen=True)
class RecordDeferred:
    """Write (or replace) the recipient's DEFEDB record."""

    ta_id: str
    rcpt_id: str
    next_try: int
    attempts: int
    last_reply: str
    warned: bool
    remote_mta: str = ""


@dataclass(frozen=True)
class RecordHold:
    ta_id: str
    held: bool


@dataclass(frozen=True)
class FailedRecipient:
    rcpt_id: str
    reply: str
    attempts: int
    expired: bool  # the queue lifetime ran out (RFC 3463 4.4.7), else a permanent reply
    remote_mta: str = ""


@dataclass(frozen=True)
class Bounce:
    """Send one DSN (RFC 3464, Action: failed) for ``recipients`` of ``ta_id``.

    To the envelope sender, or to the postmaster when ``to_postmaster`` (the failed
    transaction was itself a DSN).
    """

    ta_id: str
    sender: str
    to_postmaster: bool
    recipients: tuple[FailedRecipient, ...]


@dataclass(frozen=True)
class DelayedRecipient:
    rcpt_id: str
    reply: str
    attempts: int
    next_try: int
    remote_mta: str = ""


@dataclass(frozen=True)
class DelayWarning:
    """Send one DSN (Action: delayed) to the sender for ``recipients`` of ``ta_id``."""

    ta_id: str
    sender: str
    recipients: tuple[DelayedRecipient, ...]


@dataclass(frozen=True)
class TransactionDone:
    """Every recipient of ``ta_id`` is final: its content file may be removed."""

    ta_id: str


@dataclass(frozen=True)
class RateHeld:
    """Deliveries wait for ``address``: its ``ocr:`` rate (``rate`` new connections per
    window) is used up until ``until``. Only said, for the log: the wake-up is the
    scheduler's own (:attr:`Scheduler.next_wakeup`)."""

    address: str
    until: int
    rate: int


Action = (ResolveRoute | StartDelivery | RecordDone | RecordDeferred | RecordHold | Bounce
          | DelayWarning | TransactionDone | RateHeld)


@dataclass(frozen=True)
class RecipientView:
    """One recipient as ``meta1 mailq`` shows it."""

    ta_id: str
    rcpt_id: str
    nexthop: str
    state: State
    attempts: int
    next_try: int | None
    last_reply: str


# -- internal records ------------------------------------------------------------------------

class _Transaction:
    __slots__ = ("ta_id", "sender", "arrival", "kind", "recipients", "held", "deleted",
                 "in_round", "live", "bounced", "delayed")

    def __init__(self, event: TransactionArrived):
        self.ta_id = event.ta_id
        self.sender = event.sender
        self.arrival = event.arrival
        self.kind = event.kind
        self.recipients: dict[str, _Recipient] = {}
        self.held = event.held
        self.deleted = False
        self.in_round = 0  # recipients in ROUND_STATES
        self.live = 0      # recipients not final
        self.bounced: list[tuple[_Recipient, bool]] = []  # (recipient, expired) awaiting the DSN
        self.delayed: list[_Recipient] = []              # awaiting the delay warning


class _Recipient:
    __slots__ = ("rcpt_id", "ta", "nexthop", "state", "attempts", "next_try", "last_reply",
                 "last_remote", "warned", "retry_key")

    def __init__(self, ta: _Transaction, entry: RecipientEntry):
        self.rcpt_id = entry.rcpt_id
        self.ta = ta
        self.nexthop = entry.nexthop
        self.state = State.INCOMING
        self.attempts = entry.attempts
        self.next_try = entry.next_try
        self.last_reply = entry.last_reply
        self.last_remote = entry.last_remote
        self.warned = entry.warned
        self.retry_key: tuple[int, int] | None = None


class _Route:
    """smar's answer for a next hop: its addresses in order, who each one is, until when."""

    __slots__ = ("addresses", "targets", "expires")

    def __init__(self, exchangers: tuple[Exchanger, ...], expires: int):
        # Preference order; the sort is stable, so smar's shuffle of equal preferences
        # stays. An address two exchangers share is tried once, as the preferred one's.
        self.targets: dict[str, Exchanger] = {}
        for mx in sorted(exchangers, key=lambda mx: mx.preference):
            for address in mx.addresses:
                self.targets.setdefault(address, Exchanger(mx.preference, mx.host, (address,)))
        self.addresses = tuple(self.targets)
        self.expires = expires


class _NexthopQueue:
    """Recipients of one next hop waiting for a slot, by transaction (FIFO), and its route.

    ``blocked``: the last try found every address of the route without room; the next hop
    is then listed under each of them in ``Scheduler.waiting`` instead of in
    ``Scheduler.runnable``.
    """

    __slots__ = ("route", "transactions", "blocked")

    def __init__(self, route: _Route):
        self.route = route
        self.transactions: OrderedDict[str, dict[_Recipient, None]] = OrderedDict()
        self.blocked = False


class _Delivery:
    __slots__ = ("delivery_id", "ta", "nexthop", "recipients", "plan", "reserved", "reserved_at",
                 "session", "complete", "failed")

    def __init__(self, delivery_id: int, ta: _Transaction, nexthop: str,
                 recipients: list[_Recipient], plan: Plan, complete: bool, reserved_at: int):
        self.delivery_id = delivery_id
        self.ta = ta
        self.nexthop = nexthop
        self.recipients = recipients
        self.plan = plan
        self.reserved: list[str] = [] if plan.reuse else list(plan.addresses)
        self.reserved_at = reserved_at  # when the reservations were made (and counted against rates)
        self.session: str | None = plan.addresses[0] if plan.reuse else None
        self.complete = complete  # the plan holds every address of the route
        self.failed: set[str] = set()  # addresses smtpc reported as failed (feedback once each)


# -- the scheduler ---------------------------------------------------------------------------

class Scheduler:
    """See the module docstring. One instance per qmgr; not thread-safe (one event loop)."""

    def __init__(self, config: SchedulerConfig, *, limits: LimitLookup | None = None,
                 trace: TraceSink | None = None):
        self.config = config
        self.trace = trace
        self.now = 0
        self.destinations = Destinations(config.initial_connections, config.max_connections, limits,
                                         config.rate_window)
        self.transactions: dict[str, _Transaction] = {}
        self.incoming: OrderedDict[_Recipient, None] = OrderedDict()
        self.retry: SortedDict = SortedDict()  # (next_try, seq) -> _Recipient
        self.routes: dict[str, _Route] = {}
        self.resolving: set[str] = set()
        self.routing: dict[str, dict[_Recipient, None]] = {}
        self.ready: dict[str, _NexthopQueue] = {}
        self.runnable: OrderedDict[str, None] = OrderedDict()  # next hops to try, round robin
        self.waiting: dict[str, OrderedDict[str, None]] = {}  # address -> next hops blocked on it
        self.deliveries: dict[int, _Delivery] = {}
        self.aq_size = 0
        self._seq = 0
        self._next_delivery_id = 1
        self._incoming_turn = True
        self._prune_routes_at = ROUTE_CACHE_MIN
        self._unsettled: dict[_Transaction, None] = {}
        self._out: list = []

    # -- the entry point --------------------------------------------------------------------

    def handle(self, event: Event, now: int) -> list[Action]:
        """Apply ``event`` at time ``now``; return the actions to carry out, in order."""
        self.now = now
        self._out = out = []
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a scheduler event: {event!r}")
        handler(self, event)
        self._admit()
        self._dispatch()
        self._settle()
        out.extend(RateHeld(*held) for held in self.destinations.take_rate_held())
        self._out = []
        return out

    @property
    def next_wakeup(self) -> int | None:
        """The one timer: the earliest of when the next deferred recipient falls due (if the
        AQ could take it) and when the rate of an address next hops wait for has room
        again; None: neither."""
        times = [self.destinations.next_rate_wakeup]
        if self.retry and self.aq_size < self.config.aq_max_entries:
            times.append(self.retry.peekitem(0)[0][0])
        return min((t for t in times if t is not None), default=None)

    # -- introspection ----------------------------------------------------------------------

    def recipients(self) -> Iterator[RecipientView]:
        """Every recipient of every transaction not yet done (for ``mailq``), in arrival order."""
        for ta in self.transactions.values():
            for r in ta.recipients.values():
                yield RecipientView(ta.ta_id, r.rcpt_id, r.nexthop, r.state, r.attempts,
                                    r.next_try, r.last_reply)

    def state_of(self, rcpt_id: str) -> State | None:
        """The state of a recipient still known (its transaction not done), else None."""
        ta = self.transactions.get(rcpt_id.rpartition("-")[0])
        r = ta.recipients.get(rcpt_id) if ta is not None else None
        return r.state if r is not None else None

    # -- state changes (the only place a recipient's state changes) -------------------------

    def _fire(self, r: _Recipient, input: Input) -> None:
        row = TABLE.get((r.state, input))
        if row is None:
            raise ProtocolViolation("qmgr-recipient", r.state, input)
        self._detach(r)
        old = r.state
        self._count(r, -1)
        r.state = row.next
        self._count(r, +1)
        self._attach(r)
        if self.trace is not None:
            self.trace({"daemon": "qmgr", "machine": "qmgr-recipient", "id": r.rcpt_id,
                        "old": old.name, "input": input.name, "new": row.next.name, "time": self.now})

    def _count(self, r: _Recipient, sign: int) -> None:
        if r.state in AQ_STATES:
            self.aq_size += sign
        if r.state in ROUND_STATES:
            r.ta.in_round += sign
        if r.state not in FINAL_STATES:
            r.ta.live += sign
        self._unsettled[r.ta] = None

    def _detach(self, r: _Recipient) -> None:
        """Take ``r`` out of the queue its state keeps it in."""
        state = r.state
        if state is State.INCOMING:
            del self.incoming[r]
        elif state is State.DEFERRED:
            del self.retry[r.retry_key]
            r.retry_key = None
        elif state is State.ROUTING:
            waiting = self.routing[r.nexthop]
            del waiting[r]
            if not waiting:
                del self.routing[r.nexthop]
        elif state is State.READY:
            queue = self.ready[r.nexthop]
            group = queue.transactions[r.ta.ta_id]
            del group[r]
            if not group:
                del queue.transactions[r.ta.ta_id]
                if not queue.transactions:
                    if queue.blocked:
                        self._unblock(r.nexthop, queue)
                    self.runnable.pop(r.nexthop, None)
                    del self.ready[r.nexthop]

    def _attach(self, r: _Recipient) -> None:
        """Put ``r`` into the queue of its (new) state."""
        state = r.state
        if state is State.INCOMING:
            self.incoming[r] = None
        elif state is State.DEFERRED:
            self._seq += 1
            r.retry_key = (r.next_try if r.next_try is not None else self.now, self._seq)
            self.retry[r.retry_key] = r
        elif state is State.ROUTING:
            self.routing.setdefault(r.nexthop, {})[r] = None
        elif state is State.READY:
            queue = self.ready.get(r.nexthop)
            if queue is None:
                queue = self.ready[r.nexthop] = _NexthopQueue(self.routes[r.nexthop])
                self.runnable[r.nexthop] = None
            queue.transactions.setdefault(r.ta.ta_id, {})[r] = None

    # -- events -----------------------------------------------------------------------------

    def _on_arrival(self, event: TransactionArrived) -> None:
        if event.ta_id in self.transactions:
            raise SchedulerError(f"{event.ta_id}: transaction already queued")
        if len({entry.rcpt_id for entry in event.recipients}) != len(event.recipients):
            raise SchedulerError(f"{event.ta_id}: a recipient is listed twice")
        ta = self.transactions[event.ta_id] = _Transaction(event)
        self._unsettled[ta] = None  # even with no recipient left: it is done at once
        for entry in event.recipients:
            r = ta.recipients[entry.rcpt_id] = _Recipient(ta, entry)
            # The first placement has no table row (states.py): where the record says.
            if ta.held:
                r.state = State.HELD
            elif r.attempts or r.next_try is not None:
                r.state = State.DEFERRED
            self._count(r, +1)
            self._attach(r)

    def _on_route(self, event: RouteResolved) -> None:
        self.resolving.discard(event.nexthop)
        route = _Route(event.exchangers, event.expires)
        if not route.addresses:
            self._on_route_failed(RouteFailed(event.nexthop, False, NO_ADDRESS_REPLY))
            return
        self.routes[event.nexthop] = route
        if len(self.routes) > self._prune_routes_at:
            self._prune_routes()
        queue = self.ready.get(event.nexthop)
        if queue is not None:  # new addresses: it may go now
            if queue.blocked:
                self._unblock(event.nexthop, queue)
            queue.route = route
        for r in list(self.routing.get(event.nexthop, ())):
            self._fire(r, Input.ROUTED)

    def _prune_routes(self) -> None:
        """Forget expired routes; the next check waits until the cache has doubled
        (amortised constant cost per answer, memory bounded by the live next hops)."""
        for nexthop in [n for n, route in self.routes.items() if route.expires <= self.now]:
            del self.routes[nexthop]
        self._prune_routes_at = max(ROUTE_CACHE_MIN, 2 * len(self.routes))

    def _on_route_failed(self, event: RouteFailed) -> None:
        self.resolving.discard(event.nexthop)
        self.routes.pop(event.nexthop, None)
        for r in list(self.routing.get(event.nexthop, ())):
            self._fail(r, event.reply, permanent=event.permanent)

    def _on_connected(self, event: Connected) -> None:
        delivery = self._delivery(event.delivery_id, event.address)
        self._failed_addresses(delivery, event.failed)
        if delivery.session is None:
            self._open(delivery, event.address)

    def _on_delivery_ended(self, event: DeliveryEnded) -> None:
        delivery = self._delivery(event.delivery_id, event.address)
        del self.deliveries[event.delivery_id]
        self._failed_addresses(delivery, event.failed)
        if event.address is not None and delivery.session is None:
            self._open(delivery, event.address)
        self._release_reservations(delivery)
        if delivery.session is not None:
            reached = event.address is not None and event.address not in delivery.failed
            if reached:
                self.destinations.succeeded(delivery.session)
            self.destinations.session_ended(delivery.session, event.kept_open and reached)
        outcomes = {o.rcpt_id: o for o in event.outcomes}
        for r in delivery.recipients:
            outcome = outcomes.get(r.rcpt_id)
            if outcome is None:
                outcome = RecipientOutcome(r.rcpt_id, Status.TEMPORARY, event.reply)
            self._result(r, outcome)
        if (event.address is None and delivery.complete
                and delivery.failed.issuperset(delivery.plan.addresses)):
            replies = [o.reply for o in event.outcomes if o.status is Status.TEMPORARY]
            self._destination_unreachable(delivery.nexthop, replies[0] if replies else event.reply)

    def _on_session_closed(self, event: SessionClosed) -> None:
        self.destinations.idle_closed(event.address)

    def _on_agent_lost(self, event: DeliveryAgentLost) -> None:
        deliveries, self.deliveries = self.deliveries, {}
        self.destinations.all_lost()
        for delivery in deliveries.values():
            for r in delivery.recipients:
                self._result(r, RecipientOutcome(r.rcpt_id, Status.TEMPORARY, event.reply))

    def _on_tick(self, event: Tick) -> None:
        pass  # admission and dispatch run after every event

    def _on_flush(self, event: Flush) -> None:
        due = [r for key, r in self.retry.items()
               if key[0] > self.now and (event.nexthop is None or r.nexthop == event.nexthop)]
        for r in due:
            r.next_try = self.now
            self._fire(r, Input.FLUSH)  # re-keyed at now by detach/attach

    def _on_hold(self, event: Hold) -> None:
        ta = self._transaction(event.ta_id)
        if ta.held:
            return
        ta.held = True
        self._out.append(RecordHold(ta.ta_id, True))
        for r in list(ta.recipients.values()):
            if (r.state, Input.HOLD) in TABLE:
                self._fire(r, Input.HOLD)

    def _on_release(self, event: Release) -> None:
        ta = self._transaction(event.ta_id)
        if not ta.held:
            return
        ta.held = False
        self._out.append(RecordHold(ta.ta_id, False))
        for r in list(ta.recipients.values()):
            if r.state is State.HELD:
                r.next_try = self.now
                self._fire(r, Input.RELEASE)

    def _on_delete(self, event: Delete) -> None:
        ta = self._transaction(event.ta_id)
        ta.deleted = True
        for r in list(ta.recipients.values()):
            if r.state is not State.ACTIVE and r.state not in FINAL_STATES:
                self._delete(r)

    _HANDLERS = {
        TransactionArrived: _on_arrival, RouteResolved: _on_route, RouteFailed: _on_route_failed,
        Connected: _on_connected, DeliveryEnded: _on_delivery_ended,
        SessionClosed: _on_session_closed, DeliveryAgentLost: _on_agent_lost, Tick: _on_tick,
        Flush: _on_flush, Hold: _on_hold, Release: _on_release, Delete: _on_delete,
    }

    def _transaction(self, ta_id: str) -> _Transaction:
        ta = self.transactions.get(ta_id)
        if ta is None:
            raise KeyError(ta_id)
        return ta

    def _delivery(self, delivery_id: int, address: str | None) -> _Delivery:
        """The delivery in flight, checked against the address smtpc reports (before any
        change: an event refused with SchedulerError has had no effect)."""
        delivery = self.deliveries.get(delivery_id)
        if delivery is None:
            raise SchedulerError(f"no delivery {delivery_id} in flight")
        if address is not None and address != delivery.session and (
                delivery.session is not None or address not in delivery.reserved):
            raise SchedulerError(f"delivery {delivery_id}: {address} is not its session "
                                 f"or in its plan")
        return delivery

    def _failed_addresses(self, delivery: _Delivery, addresses: tuple[str, ...]) -> None:
        """Negative feedback for addresses newly reported as failed in this delivery."""
        for address in addresses:
            if address not in delivery.failed:
                delivery.failed.add(address)
                self.destinations.failed(address)

    def _open(self, delivery: _Delivery, address: str) -> None:
        """smtpc reached ``address``: a reservation becomes a session, the others are freed."""
        delivery.reserved.remove(address)
        self.destinations.opened(address)
        self._release_reservations(delivery)
        delivery.session = address

    def _release_reservations(self, delivery: _Delivery) -> None:
        """Reservations not used are given back; those smtpc did not try were no new
        connection (what it tried and could not reach is in ``delivery.failed``)."""
        self.destinations.release(delivery.reserved, delivery.reserved_at, delivery.failed)
        delivery.reserved = []

    # -- outcomes ---------------------------------------------------------------------------

    def _result(self, r: _Recipient, outcome: RecipientOutcome) -> None:
        if outcome.status is Status.DELIVERED:
            self._fire(r, Input.DELIVERED)
            self._out.append(RecordDone(r.ta.ta_id, r.rcpt_id, Final.DELIVERED, outcome.reply,
                                        r.attempts > 0))
        elif r.ta.deleted:
            self._delete(r)
        else:
            self._fail(r, outcome.reply, permanent=outcome.status is Status.PERMANENT,
                       remote_mta=outcome.remote_mta)

    def _fail(self, r: _Recipient, reply: str, *, permanent: bool, remote_mta: str = "") -> None:
        """A failed attempt: bounce, or defer with backoff (and hold if the message is held)."""
        r.last_reply = reply
        r.last_remote = remote_mta
        c = self.config
        next_try = None if permanent else next_try_time(
            self.now, r.attempts + 1, arrival=r.ta.arrival, min_delay=c.min_queue_delay,
            max_delay=c.max_queue_delay, lifetime=c.queue_lifetime)
        if next_try is None:  # a permanent reply, or the queue lifetime is over
            self._fire(r, Input.BOUNCE)
            r.ta.bounced.append((r, not permanent))
            return
        r.attempts += 1
        r.next_try = next_try
        # The warning counts from the arrival, as the sender sees it (D-SCHED-8).
        if c.delay_warning is not None and not r.warned and self.now - r.ta.arrival >= c.delay_warning:
            r.warned = True
            r.ta.delayed.append(r)
        self._fire(r, Input.DEFER)
        self._out.append(RecordDeferred(r.ta.ta_id, r.rcpt_id, r.next_try, r.attempts, reply, r.warned,
                                        remote_mta))
        if r.ta.held:
            self._fire(r, Input.HOLD)

    def _delete(self, r: _Recipient) -> None:
        was_deferred = r.attempts > 0
        self._fire(r, Input.DELETE)
        self._out.append(RecordDone(r.ta.ta_id, r.rcpt_id, Final.DELETED, "", was_deferred))

    def _destination_unreachable(self, nexthop: str, reply: str) -> None:
        """No address of ``nexthop`` answered: defer those still waiting for it (D-SCHED-6)."""
        queue = self.ready.get(nexthop)
        if queue is None:
            return
        for group in list(queue.transactions.values()):
            for r in list(group):
                self._fail(r, reply, permanent=False)

    # -- admission, dispatch, reports -------------------------------------------------------

    def _admit(self) -> None:
        """Fill the AQ, alternating between new mail and due deferred mail (fairness)."""
        limit = self.config.aq_max_entries
        while self.aq_size < limit:
            due = bool(self.retry) and self.retry.peekitem(0)[0][0] <= self.now
            if not self.incoming and not due:
                return
            take_incoming = bool(self.incoming) and (self._incoming_turn or not due)
            self._incoming_turn = not take_incoming
            r = next(iter(self.incoming)) if take_incoming else self.retry.peekitem(0)[1]
            self._fire(r, Input.ADMIT)
            self._route(r)

    def _route(self, r: _Recipient) -> None:
        route = self.routes.get(r.nexthop)
        if route is not None and route.expires > self.now:
            self._fire(r, Input.ROUTED)
            return
        if route is not None:
            del self.routes[r.nexthop]  # expired: ask smar again
        if r.nexthop not in self.resolving:
            self.resolving.add(r.nexthop)
            self._out.append(ResolveRoute(r.nexthop))

    def _dispatch(self) -> None:
        """Start deliveries while some next hop has recipients and an address with room.

        Runnable next hops take turns, one delivery each per turn; one that got a delivery
        goes to the back of the line (round robin), one that found no room is *blocked*:
        listed under each of its addresses in ``waiting``. When an address may have
        gained room (``Destinations.freed``, or its rate's room returned with time) the
        next hops waiting for it are woken oldest first, each with one delivery at once,
        as long as that address can take one — before the runnable ones take their turns,
        so that a next hop that became ready since does not take the room from those that
        waited for it. So the work after an event follows the slots it freed, not the
        number of next hops waiting (many domains hosted on one server's addresses).
        """
        progress = True
        while progress:
            progress = False
            for address in self.destinations.drain_freed(self.now):
                waiting = self.waiting.get(address)
                tries = len(waiting) if waiting else 0
                while tries and waiting and self.destinations.can_start(address, self.now):
                    tries -= 1
                    nexthop = next(iter(waiting))
                    queue = self.ready[nexthop]
                    self._unblock(nexthop, queue)
                    if self._start_delivery(nexthop, queue):
                        progress = True  # it stays runnable for its next turn
                    else:
                        del self.runnable[nexthop]
                        self._block(nexthop, queue)
            for nexthop in list(self.runnable):
                queue = self.ready.get(nexthop)
                if queue is None or nexthop not in self.runnable:
                    continue
                if self._start_delivery(nexthop, queue):
                    progress = True
                    if nexthop in self.runnable:
                        self.runnable.move_to_end(nexthop)
                else:
                    del self.runnable[nexthop]
                    self._block(nexthop, queue)

    def _block(self, nexthop: str, queue: _NexthopQueue) -> None:
        queue.blocked = True
        for address in queue.route.addresses:
            waiting = self.waiting.get(address)
            if waiting is None:
                # Room that returns with time (a rate) has no event to wake the next hops:
                # the address gets a wake-up, folded into next_wakeup.
                waiting = self.waiting[address] = OrderedDict()
                self.destinations.watch(address, self.now)
            waiting[nexthop] = None

    def _unblock(self, nexthop: str, queue: _NexthopQueue) -> None:
        """Out of ``waiting`` (under the addresses it was blocked on), into ``runnable``."""
        queue.blocked = False
        for address in queue.route.addresses:
            waiting = self.waiting[address]
            del waiting[nexthop]
            if not waiting:
                del self.waiting[address]
                self.destinations.unwatch(address)
        self.runnable[nexthop] = None

    def _start_delivery(self, nexthop: str, queue: _NexthopQueue) -> bool:
        plan = self.destinations.plan(queue.route.addresses, self.config.max_addresses_per_delivery, self.now)
        if plan is None:
            return False
        ta_id, group = next(iter(queue.transactions.items()))
        batch = list(group)[:self.config.max_recipients_per_delivery]
        delivery_id = self._next_delivery_id
        self._next_delivery_id += 1
        complete = not plan.reuse and set(plan.addresses) == set(queue.route.addresses)
        delivery = _Delivery(delivery_id, batch[0].ta, nexthop, batch, plan, complete, self.now)
        self.deliveries[delivery_id] = delivery
        self.destinations.take(plan, self.now)
        for r in batch:
            self._fire(r, Input.DISPATCH)
        self._out.append(StartDelivery(delivery_id, ta_id, tuple(r.rcpt_id for r in batch),
                                       nexthop, plan.addresses, plan.reuse,
                                       tuple(queue.route.targets[a] for a in plan.addresses)))
        return True

    def _settle(self) -> None:
        """Reports for transactions whose round ended; forget transactions that are done."""
        unsettled, self._unsettled = self._unsettled, {}
        for ta in unsettled:
            if ta.in_round == 0:
                self._report(ta)
            if ta.live == 0:
                self._out.append(TransactionDone(ta.ta_id))
                self.transactions.pop(ta.ta_id, None)

    def _report(self, ta: _Transaction) -> None:
        if ta.bounced:
            failed, ta.bounced = ta.bounced, []
            to_postmaster = ta.kind is MessageKind.DSN
            if (ta.kind is MessageKind.ORIGINAL and ta.sender) or to_postmaster:
                self._out.append(Bounce(ta.ta_id, ta.sender, to_postmaster, tuple(
                    FailedRecipient(r.rcpt_id, r.last_reply, r.attempts, expired, r.last_remote)
                    for r, expired in failed)))
            for r, _ in failed:
                self._out.append(RecordDone(ta.ta_id, r.rcpt_id, Final.BOUNCED, r.last_reply,
                                            r.attempts > 0))
        if ta.delayed:
            delayed, ta.delayed = ta.delayed, []
            still = [r for r in delayed if r.state in (State.DEFERRED, State.HELD)]
            if still and ta.sender and ta.kind is MessageKind.ORIGINAL:
                self._out.append(DelayWarning(ta.ta_id, ta.sender, tuple(
                    DelayedRecipient(r.rcpt_id, r.last_reply, r.attempts, r.next_try, r.last_remote)
                    for r in still)))

    # -- self-check -------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Assert the scheduler's own consistency (used after every step of the model tests)."""
        c = self.config
        seen: dict[_Recipient, str] = {}

        def place(r: _Recipient, where: str) -> None:
            assert r not in seen, f"{r.rcpt_id} in {seen[r]} and {where}"
            seen[r] = where

        for r in self.incoming:
            assert r.state is State.INCOMING
            place(r, "incoming")
        for key, r in self.retry.items():
            assert r.state is State.DEFERRED and r.retry_key == key
            place(r, "retry")
        for nexthop, waiting in self.routing.items():
            assert waiting and nexthop in self.resolving, f"{nexthop}: routing without a lookup"
            for r in waiting:
                assert r.state is State.ROUTING and r.nexthop == nexthop
                place(r, "routing")
        assert not self.runnable and not self.destinations.freed, "dispatch left work"
        blocked_on: dict[str, set[str]] = {}
        for nexthop, queue in self.ready.items():
            assert queue.transactions and queue.blocked
            for address in queue.route.addresses:
                blocked_on.setdefault(address, set()).add(nexthop)
            for ta_id, group in queue.transactions.items():
                assert group
                for r in group:
                    assert r.state is State.READY and r.nexthop == nexthop and r.ta.ta_id == ta_id
                    place(r, "ready")
            # nothing waits for a slot that exists
            assert self.destinations.plan(queue.route.addresses, 1, self.now) is None, f"{nexthop}: idle capacity"
        assert {a: set(n) for a, n in self.waiting.items()} == blocked_on, "waiting index"
        destinations = self.destinations
        assert destinations.watched == set(self.waiting), "watched addresses"
        # Each address waited for whose rate is used up wakes its next hops when it has room again.
        rate_wakeups = {a: destinations.addresses[a].rate_room_at(self.now)
                        for a in self.waiting if a in destinations.addresses}
        assert destinations.rate_wakeup_of == {a: t for a, t in rate_wakeups.items() if t is not None}, "rate wake-ups"
        assert sorted((t, a) for a, t in destinations.rate_wakeup_of.items()) == list(destinations.rate_wakeups)
        reserved: dict[str, int] = {}
        busy: dict[str, int] = {}
        for delivery in self.deliveries.values():
            assert 1 <= len(delivery.recipients) <= c.max_recipients_per_delivery
            assert len({r.ta for r in delivery.recipients}) == 1
            for r in delivery.recipients:
                assert r.state is State.ACTIVE
                place(r, f"delivery {delivery.delivery_id}")
            for address in delivery.reserved:
                reserved[address] = reserved.get(address, 0) + 1
            if delivery.session is not None:
                busy[delivery.session] = busy.get(delivery.session, 0) + 1
        aq = 0
        for ta_id, ta in self.transactions.items():
            assert ta.live > 0, f"{ta_id}: done but not forgotten"
            counted_round = counted_live = 0
            for r in ta.recipients.values():
                if r.state in FINAL_STATES or r.state is State.HELD:
                    assert r not in seen, f"{r.rcpt_id} is {r.state.name} but queued"
                else:
                    assert r in seen, f"{r.rcpt_id} ({r.state.name}) is in no queue"
                if r.state is State.HELD:
                    assert ta.held, f"{r.rcpt_id} held, its transaction not"
                if ta.held:  # a held transaction's recipients are held, in flight, or final
                    assert r.state in FINAL_STATES or r.state in (State.HELD, State.ACTIVE), \
                        f"{r.rcpt_id} is {r.state.name} in a held transaction"
                aq += r.state in AQ_STATES
                counted_round += r.state in ROUND_STATES
                counted_live += r.state not in FINAL_STATES
            assert (ta.in_round, ta.live) == (counted_round, counted_live)
        assert aq == self.aq_size <= c.aq_max_entries
        if self.aq_size < c.aq_max_entries:
            assert not self.incoming, "AQ has room but new mail waits"
            assert not self.retry or self.retry.peekitem(0)[0][0] > self.now, "AQ has room but due mail waits"
        for address, state in self.destinations.addresses.items():
            assert state.pending == reserved.get(address, 0), f"{address}: reservations"
            assert state.sessions - state.idle == busy.get(address, 0), f"{address}: busy sessions"
            assert 0 <= state.idle <= state.sessions
            assert state.in_use <= state.maximum, f"{address}: over max_connections"
            assert 1 <= state.window <= state.maximum
            if state.rate:   # never more new connections in the window than the rate
                assert sum(until > self.now for until in state.counted_until) <= state.rate, f"{address}: over ocr:"
        for address in set(reserved) | set(busy):
            assert address in self.destinations.addresses
