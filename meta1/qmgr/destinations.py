"""Per-address connection accounting, slow start, and the address plan of a delivery.

Responsibilities
    qmgr limits the parallel smtpc connections to each server IP address (reference
    meta1.md §1.5, B69: ``qmgr { smtpc { initial_connections; max_connections } }``,
    per-address ``oci:``/``ocm:`` overrides). This module owns, for every address qmgr
    currently talks to or recently failed to reach:

    * ``window`` — how many connections may be open now (slow start, below);
    * ``sessions`` — smtpc sessions open to it, busy or idle (an idle session is kept
      open by smtpc for reuse and still counts against the limit);
    * ``idle`` — how many of those sessions wait for their next transaction;
    * ``pending`` — connection slots reserved by deliveries still connecting.

    and builds the *address plan* of a delivery: the addresses smtpc may try, in the
    route's preference order, only those with room.

Strategies
    *Room.* An address has room for a new connection while
    ``sessions + pending < window``. An idle session may always be reused: it is already
    counted.

    *Plan* (:meth:`Destinations.plan`). Walk the route's addresses in preference order
    (smar has already shuffled equal preferences with its own RNG). If the first address
    with room — or with an idle session — has an idle session, the plan is that session
    alone (``reuse``: no new connection). Otherwise the plan is every address with room,
    up to ``max_addresses``; addresses without room are skipped, so when the preferred
    MX is at its limit the delivery goes to the next preference at once instead of
    waiting (MeTA1 2012-11-02, B59). An empty plan means: wait for a slot.

    *Reservation.* A delivery reserves one slot on *every* address of its plan while it
    connects (smtpc may fall back to any of them, and the limit must hold whichever it
    ends on). When smtpc reports the address it reached, the other reservations are
    released at once; the connect phase is short, so the over-reservation is too.

    *Slow start* (after Postfix's qmgr_queue.c, "slow open"; rule D-SCHED-3 in
    spec/scheduler.md). ``window`` starts at ``initial_connections``. A delivery that
    reached the server (any SMTP reply, even a 5xx for every recipient: the server
    works) raises it by one, up to ``max_connections``, but only while the window is
    below the connections in use plus ``initial_connections`` — so a quiet destination
    does not accumulate an unearned window. An address that failed (connect error,
    timeout, 4xx greeting, protocol error before a transaction) lowers it by one, never
    below one: a dead primary MX then ties up at most one delivery at a time, and the
    others go to the next preference through the plan rule above.

    Entries with nothing open, nothing reserved and the initial window are forgotten,
    so memory follows the addresses in use; a lowered window is kept until deliveries
    raise it again.

    *Freed addresses.* Every change that can give an address room (a reservation given
    back, a session ended or gone idle, a window raised) notes the address in ``freed``;
    the scheduler drains it to wake only the next hops that wait for those addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

#: address -> (initial_connections, max_connections) for that address (the ``oci:`` and
#: ``ocm:`` tags of qmgr's configuration map: :meth:`meta1.qmgr.limits.OutgoingLimits.connection_limits`),
#: or None for the section's defaults. Asked once per address, when its entry is created.
LimitLookup = Callable[[str], "tuple[int, int] | None"]


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
    __slots__ = ("initial", "maximum", "window", "sessions", "idle", "pending")

    def __init__(self, initial: int, maximum: int):
        self.initial = initial
        self.maximum = maximum
        self.window = initial
        self.sessions = 0
        self.idle = 0
        self.pending = 0

    @property
    def in_use(self) -> int:
        """Connections counted against the window: open sessions and reserved connects."""
        return self.sessions + self.pending

    def has_room(self) -> bool:
        return self.in_use < self.window

    def forgettable(self) -> bool:
        return self.in_use == 0 and self.window >= self.initial


class Destinations:
    """Connection accounting for every server address; see the module docstring."""

    def __init__(self, initial_connections: int, max_connections: int,
                 limits: LimitLookup | None = None):
        if not 1 <= initial_connections <= max_connections:
            raise ValueError("need 1 <= initial_connections <= max_connections")
        self.initial_connections = initial_connections
        self.max_connections = max_connections
        self.limits = limits
        self.addresses: dict[str, AddressState] = {}
        self.freed: dict[str, None] = {}  # insertion-ordered set: deterministic wake-ups

    def get(self, address: str) -> AddressState:
        state = self.addresses.get(address)
        if state is None:
            initial, maximum = self.initial_connections, self.max_connections
            if self.limits is not None:
                override = self.limits(address)
                if override is not None:
                    maximum = max(1, override[1])
                    initial = max(1, min(override[0], maximum))
            state = self.addresses[address] = AddressState(initial, maximum)
        return state

    def can_start(self, address: str) -> bool:
        """A delivery could go to ``address`` now: an idle session, or room for a new one."""
        state = self.addresses.get(address)
        return state is None or bool(state.idle) or state.has_room()

    def drain_freed(self) -> list[str]:
        """The addresses that may have gained room since the last call."""
        freed, self.freed = list(self.freed), {}
        return freed

    def _forget_if_unused(self, address: str) -> None:
        state = self.addresses.get(address)
        if state is not None and state.forgettable():
            del self.addresses[address]

    # -- planning ---------------------------------------------------------------------

    def plan(self, addresses: Iterable[str], max_addresses: int) -> Plan | None:
        """The plan for a new delivery over ``addresses`` (preference order), or None: all full."""
        chosen: list[str] = []
        for address in addresses:
            state = self.addresses.get(address)
            if state is None:  # never used: the initial window, nothing open
                chosen.append(address)
            elif state.idle and not chosen:
                return Plan((address,), reuse=True)
            elif state.has_room():
                chosen.append(address)
            if len(chosen) >= max_addresses:
                break
        return Plan(tuple(chosen), reuse=False) if chosen else None

    def take(self, plan: Plan) -> None:
        """Charge a plan: take the idle session, or reserve a connect slot on each address."""
        if plan.reuse:
            self.get(plan.addresses[0]).idle -= 1
            return
        for address in plan.addresses:
            self.get(address).pending += 1

    # -- what smtpc reports -----------------------------------------------------------

    def release(self, reserved: Iterable[str]) -> None:
        """Give back connect reservations that were not used."""
        for address in reserved:
            self.get(address).pending -= 1
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
        """smtpc is gone: no session is open, no connect is pending. Windows are kept."""
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
