"""Per-address connection accounting, slow start, rates, and the address plan of a delivery.

Responsibilities
    qmgr limits the smtpc connections to each server IP address (reference meta1.md
    §1.5, B69: ``qmgr { smtpc { initial_connections; max_connections } }``, per-address
    ``oci:``/``ocm:`` overrides, and ``ocr:``, new connections per minute). This module
    owns, for every address qmgr currently talks to or recently failed to reach or
    connected to under a rate:

    * ``window`` — how many connections may be open now (slow start, below);
    * ``sessions`` — smtpc sessions open to it, busy or idle (an idle session is kept
      open by smtpc for reuse and still counts against the limit);
    * ``idle`` — how many of those sessions wait for their next transaction;
    * ``pending`` — connection slots reserved by deliveries still connecting;
    * ``counted_until`` — under a rate, when each recent new connection stops counting.

    and builds the *address plan* of a delivery: the addresses smtpc may try, in the
    route's preference order, only those with room. It does no I/O and reads no clock:
    the methods whose answer depends on time take the scheduler's ``now``.

Strategies
    *Room.* An address has room for a new connection while
    ``sessions + pending < window`` and its rate (if it has one) is not used up. An idle
    session may always be reused: it is already counted, and reusing it is no new
    connection.

    *Plan* (:meth:`Destinations.plan`). Walk the route's addresses in preference order
    (smar has already shuffled equal preferences with its own RNG). If the first address
    with room — or with an idle session — has an idle session, the plan is that session
    alone (``reuse``: no new connection). Otherwise the plan is every address with room,
    up to ``max_addresses``; addresses without room are skipped, so when the preferred
    MX is at its limit (of connections or of their rate) the delivery goes to the next
    preference at once instead of waiting (MeTA1 2012-11-02, B59). An empty plan means:
    wait for room.

    *Reservation.* A delivery reserves one slot on *every* address of its plan while it
    connects (smtpc may fall back to any of them, and the limit must hold whichever it
    ends on). When smtpc reports the address it reached, the other reservations are
    released at once; the connect phase is short, so the over-reservation is too.

    *Rate* (``ocr:``, spec/scheduler.md D-SCHED-14). A reservation is a new connection
    for the rate too: it counts for ``rate_window`` from the moment it is made. Each
    address under a rate keeps, oldest first, when its counted connections leave the
    window (those that have left are dropped at the next new connection, so there are
    never more than ``rate``): the rate is used up while ``rate`` of them still count,
    and room returns when the oldest of those leaves. A reservation given back unused on
    an address smtpc did not try was no connection at all, and its count is given back
    with it; an address smtpc tried and could not reach keeps it (the server may have
    seen the attempt). Reusing an idle session counts nothing.

    *Slow start* (after Postfix's qmgr_queue.c, "slow open"; rule D-SCHED-3 in
    spec/scheduler.md). ``window`` starts at ``initial_connections``. A delivery that
    reached the server (any SMTP reply, even a 5xx for every recipient: the server
    works) raises it by one, up to ``max_connections``, but only while the window is
    below the connections in use plus ``initial_connections`` — so a quiet destination
    does not accumulate an unearned window. An address that failed (connect error,
    timeout, 4xx greeting, protocol error before a transaction) lowers it by one, never
    below one: a dead primary MX then ties up at most one delivery at a time, and the
    others go to the next preference through the plan rule above.

    Entries with nothing open, nothing reserved, the initial window and no connection
    still counted against a rate are forgotten, so memory follows the addresses in use;
    a lowered window is kept until deliveries raise it again. Entries kept only for
    their counts are swept once those have left the window, when the table has doubled
    since the last sweep (amortised constant cost per new connection).

    *Freed addresses.* Every change that can give an address room (a reservation given
    back, a session ended or gone idle, a window raised) notes the address in ``freed``;
    the scheduler drains it to wake only the next hops that wait for those addresses.
    Room that returns with time — a rate's window moving on — has no such event: for
    each address the scheduler says deliveries wait for (:meth:`Destinations.watch`)
    and whose rate is used up, the time its room returns is kept in ``rate_wakeups``;
    the earliest is :attr:`Destinations.next_rate_wakeup`, which the scheduler folds
    into its one timer, and :meth:`Destinations.drain_freed` counts the address as freed
    once that time has come.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Container, Iterable, NamedTuple

from sortedcontainers import SortedList

from meta1.policy.limits import RATE_WINDOW
from meta1.queue.retry import SECOND

#: The window of ``ocr:`` in the scheduler's time unit (microseconds), spec/policy.md D-POL-16.
DEFAULT_RATE_WINDOW = RATE_WINDOW * SECOND
#: Table size below which entries kept only for their rate counts are left to the next sweep.
PRUNE_MIN = 1024


class ConnectionLimits(NamedTuple):
    """One server address's limits: ``oci:``, ``ocm:`` and ``ocr:`` of qmgr's configuration
    map (:meth:`meta1.qmgr.limits.OutgoingLimits.connection_limits`)."""

    initial: int    # connections open at first (slow start)
    maximum: int    # connections open at most
    rate: int = 0   # new connections at most per rate window; 0: no limit (D-POL-16)


#: address -> its :class:`ConnectionLimits`, or None for the section's defaults (no rate).
#: Asked once per address, when its entry is created.
LimitLookup = Callable[[str], "ConnectionLimits | None"]


@dataclass(frozen=True)
class Exchanger:
    """One mail exchanger of a route: its MX preference, name and addresses (smar's order)."""

    preference: int
    host: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Where one delivery may go: ``addresses`` in order; ``reuse``: an idle session of the first."""

    addresses: tuple[str, ...]
    reuse: bool


class AddressState:
    __slots__ = ("initial", "maximum", "rate", "window", "sessions", "idle", "pending", "counted_until")

    def __init__(self, initial: int, maximum: int, rate: int = 0):
        self.initial = initial
        self.maximum = maximum
        self.rate = rate
        self.window = initial
        self.sessions = 0
        self.idle = 0
        self.pending = 0
        # When each new connection still in the window stops counting, oldest first (at
        # most ``rate`` of them; no deque without a rate: most addresses have none).
        self.counted_until: deque[int] | None = deque() if rate else None

    @property
    def in_use(self) -> int:
        """Connections counted against the window: open sessions and reserved connects."""
        return self.sessions + self.pending

    def rate_room_at(self, now: int) -> int | None:
        """When the rate has room for a new connection again, if it has none at ``now``:
        when the oldest of the newest ``rate`` counts leaves the window."""
        counted = self.counted_until
        if counted is not None and len(counted) >= self.rate and counted[-self.rate] > now:
            return counted[-self.rate]
        return None

    def has_room(self, now: int) -> bool:
        return self.in_use < self.window and self.rate_room_at(now) is None

    def count_new_connection(self, now: int, until: int) -> None:
        """A new connection made at ``now`` counts against the rate until ``until``."""
        self.expire(now)
        self.counted_until.append(until)

    def refund(self, until: int) -> bool:
        """Stop counting a new connection that counted until ``until``; False if it no
        longer counted anyway (it has left the window and was dropped)."""
        if self.counted_until is None or until not in self.counted_until:
            return False
        self.counted_until.remove(until)
        return True

    def expire(self, now: int) -> None:
        """Drop the counts that have left the window at ``now``."""
        counted = self.counted_until
        while counted and counted[0] <= now:
            counted.popleft()

    def forgettable(self) -> bool:
        return self.in_use == 0 and self.window >= self.initial and not self.counted_until


class Destinations:
    """Connection accounting for every server address; see the module docstring.
    ``rate_window``: how long a new connection counts against a rate, in the unit of
    the ``now`` passed in."""

    def __init__(self, initial_connections: int, max_connections: int,
                 limits: LimitLookup | None = None, rate_window: int = DEFAULT_RATE_WINDOW):
        if not 1 <= initial_connections <= max_connections:
            raise ValueError("need 1 <= initial_connections <= max_connections")
        if rate_window <= 0:
            raise ValueError("the rate window must be positive")
        self.initial_connections = initial_connections
        self.max_connections = max_connections
        self.limits = limits
        self.rate_window = rate_window
        self.addresses: dict[str, AddressState] = {}
        self.freed: dict[str, None] = {}  # insertion-ordered set: deterministic wake-ups
        self.watched: set[str] = set()                        # addresses deliveries wait for
        self.rate_wakeups: SortedList = SortedList()          # (room returns at, address)
        self.rate_wakeup_of: dict[str, int] = {}             # address -> its time in rate_wakeups
        # (address, room returns at, its rate) for each address whose used-up rate has
        # just become what deliveries wait for: the scheduler reports them (for the log,
        # so an operator sees why mail to a server is not going out).
        self.rate_held: list[tuple[str, int, int]] = []
        self._prune_at = PRUNE_MIN

    def get(self, address: str) -> AddressState:
        state = self.addresses.get(address)
        if state is None:
            limits = ConnectionLimits(self.initial_connections, self.max_connections)
            override = self.limits(address) if self.limits is not None else None
            if override is not None:
                maximum = max(1, override.maximum)
                limits = ConnectionLimits(max(1, min(override.initial, maximum)), maximum, max(0, override.rate))
            state = self.addresses[address] = AddressState(*limits)
        return state

    def can_start(self, address: str, now: int) -> bool:
        """A delivery could go to ``address`` now: an idle session, or room for a new one."""
        state = self.addresses.get(address)
        return state is None or bool(state.idle) or state.has_room(now)

    def drain_freed(self, now: int) -> list[str]:
        """The addresses that may have gained room since the last call: by an event, or
        because the rate of a watched address has room again at ``now``."""
        while self.rate_wakeups and self.rate_wakeups[0][0] <= now:
            _, address = self.rate_wakeups.pop(0)
            del self.rate_wakeup_of[address]
            self.freed[address] = None
        freed, self.freed = list(self.freed), {}
        return freed

    def _forget_if_unused(self, address: str) -> None:
        state = self.addresses.get(address)
        if state is not None and state.forgettable():
            del self.addresses[address]

    def _prune(self, now: int) -> None:
        """Forget the entries kept only for counts that have left the window; the next
        sweep waits until the table has doubled."""
        for address, state in list(self.addresses.items()):
            state.expire(now)
            if state.forgettable():
                del self.addresses[address]
        self._prune_at = max(PRUNE_MIN, 2 * len(self.addresses))

    # -- waiting for room that returns with time ---------------------------------------

    @property
    def next_rate_wakeup(self) -> int | None:
        """The earliest time a watched address's rate has room again, or None."""
        return self.rate_wakeups[0][0] if self.rate_wakeups else None

    def watch(self, address: str, now: int) -> None:
        """Deliveries wait for room at ``address``: keep a wake-up for when its rate has
        room again, whenever it is used up (now, or by a later new connection)."""
        self.watched.add(address)
        state = self.addresses.get(address)
        if state is not None:
            self._wake_at_rate_room(address, state, now)

    def unwatch(self, address: str) -> None:
        """No delivery waits for ``address`` any more."""
        self.watched.discard(address)
        self._cancel_rate_wakeup(address)

    def _wake_at_rate_room(self, address: str, state: AddressState, now: int) -> None:
        """If ``address`` is watched and its rate has no room at ``now``, wake its waiters
        when it has again. (Nothing else moves that time while the rate is used up: no new
        connection is made, and a count given back cancels the wake-up — with at most
        ``rate`` counts kept, one fewer always leaves room.)"""
        room_at = state.rate_room_at(now)
        if room_at is not None and address in self.watched:
            if address not in self.rate_wakeup_of:
                self.rate_held.append((address, room_at, state.rate))
            self._cancel_rate_wakeup(address)      # one made before, due but not drained yet
            self.rate_wakeup_of[address] = room_at
            self.rate_wakeups.add((room_at, address))

    def take_rate_held(self) -> list[tuple[str, int, int]]:
        """The addresses newly held by their rate since the last call (:attr:`rate_held`)."""
        held, self.rate_held = self.rate_held, []
        return held

    def _cancel_rate_wakeup(self, address: str) -> None:
        room_at = self.rate_wakeup_of.pop(address, None)
        if room_at is not None:
            self.rate_wakeups.remove((room_at, address))

    # -- planning ---------------------------------------------------------------------

    def plan(self, addresses: Iterable[str], max_addresses: int, now: int) -> Plan | None:
        """The plan for a new delivery over ``addresses`` (preference order), or None: all full."""
        chosen: list[str] = []
        for address in addresses:
            state = self.addresses.get(address)
            if state is None:  # never used: the initial window, nothing open, nothing counted
                chosen.append(address)
            elif state.idle and not chosen:
                return Plan((address,), reuse=True)
            elif state.has_room(now):
                chosen.append(address)
            if len(chosen) >= max_addresses:
                break
        return Plan(tuple(chosen), reuse=False) if chosen else None

    def take(self, plan: Plan, now: int) -> None:
        """Charge a plan: take the idle session (no new connection), or reserve a connect
        slot on each address and count it as a new connection from ``now``."""
        if plan.reuse:
            self.get(plan.addresses[0]).idle -= 1
            return
        for address in plan.addresses:
            state = self.get(address)
            state.pending += 1
            if state.rate:
                state.count_new_connection(now, now + self.rate_window)
                self._wake_at_rate_room(address, state, now)
        if len(self.addresses) > self._prune_at:
            self._prune(now)

    # -- what smtpc reports -----------------------------------------------------------

    def release(self, reserved: Iterable[str], reserved_at: int, tried: Container[str] = ()) -> None:
        """Give back connect reservations that were not used (made at ``reserved_at``).
        One on an address smtpc did not try (not in ``tried``) was no new connection:
        its rate count is given back too."""
        for address in reserved:
            state = self.get(address)
            state.pending -= 1
            if address not in tried and state.refund(reserved_at + self.rate_window):
                self._cancel_rate_wakeup(address)       # one count fewer: its rate has room
            self.freed[address] = None
            self._forget_if_unused(address)

    def opened(self, address: str) -> None:
        """A reserved connect became an open session to ``address``."""
        state = self.get(address)
        state.pending -= 1
        state.sessions += 1

    def session_ended(self, address: str, kept_open: bool) -> None:
        """The delivery on a session to ``address`` is over; the session stays idle or closes."""
        state = self.get(address)
        self.freed[address] = None
        if kept_open:
            state.idle += 1
        else:
            state.sessions -= 1
            self._forget_if_unused(address)

    def idle_closed(self, address: str) -> None:
        """smtpc closed an idle session. A report about a session just handed out again
        (smtpc closed it while qmgr reused it) finds no idle one and changes nothing: smtpc
        opens a fresh one for that delivery, so the count is right as it is."""
        state = self.addresses.get(address)
        if state is None or not state.idle:
            return
        state.idle -= 1
        state.sessions -= 1
        self.freed[address] = None
        self._forget_if_unused(address)

    def all_lost(self) -> None:
        """smtpc is gone: no session is open, no connect is pending. Windows are kept, and
        so are rate counts: which reserved addresses smtpc had tried is unknown."""
        for address, state in self.addresses.items():
            state.sessions = state.idle = state.pending = 0
            self.freed[address] = None
        for address in [a for a, s in self.addresses.items() if s.forgettable()]:
            del self.addresses[address]

    # -- slow start -------------------------------------------------------------------

    def succeeded(self, address: str) -> None:
        """Positive feedback: the server at ``address`` answered a transaction."""
        state = self.get(address)
        if state.window < state.maximum and state.window < state.in_use + state.initial:
            state.window += 1
            self.freed[address] = None

    def failed(self, address: str) -> None:
        """Negative feedback: ``address`` could not be reached or would not talk."""
        state = self.get(address)
        state.window = max(1, state.window - 1)
