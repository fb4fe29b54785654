"""The MX/address plan: which server address a delivery attempt tries next, and when to stop.

Responsibilities
    One :class:`AddressPlan` per delivery attempt of one destination. It is given the
    exchangers smar found — ``(preference, host, [addresses])``, implicit MX included —
    an injected ``random.Random`` and two bounds, and answers :meth:`AddressPlan.next_address`
    until the attempt is over; the driver reports what happened to each address. At the
    end :attr:`AddressPlan.outcome` says ``delivered``, ``temporary`` or ``permanent``,
    with the last reason. It never opens a socket, reads the clock or draws randomness of
    its own: the order is fixed when the plan is made.

Order (RFC 5321 §5.1)
    Exchangers by preference, lowest first; exchangers of equal preference in random
    order (the RNG shuffles each group once), each exchanger's addresses in the order smar
    gave them. An exchanger without addresses is skipped (B60: "good enough" DNS). An
    address listed under several exchangers is tried once, at its first place. At most
    ``max_addresses`` addresses are ever handed out and at most ``max_sessions``
    sessions (connections that got a 2xx greeting) are made (Postfix's
    ``smtp_mx_address_limit`` 5 and ``smtp_mx_session_limit`` 2, reliability table).

Moving on and stopping (the transition table below)
    * a connect failure, or a 4xx greeting → the next address;
    * a 5xx greeting → stop, ``permanent`` with that reply (RFC 5321 §3.1: the server
      says it will not take mail);
    * a session ended with recipients still undelivered (lost connection, 421, 4xx) →
      the next address, for those recipients, while the session bound allows;
    * everything answered → ``delivered`` (the per-recipient results are the session's);
    * addresses or bounds used up → ``temporary`` with the last reason.

Connection limits (B59, MeTA1 2012-11-02)
    ``next_address(busy=...)`` takes a predicate from the scheduler: an address at its
    connection limit is passed over for now and the next preference is used instead of
    waiting. Passed-over addresses are not used up: when every remaining address is busy,
    ``next_address`` returns None with :attr:`AddressPlan.blocked` set, and a later call
    (when a connection has ended) may hand one out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

from meta1.machine import FastEnum, Machine, TraceSink, Transition
from meta1.smtp.replies import Reply
from meta1.smtp.text import printable


class State(FastEnum):
    CHOOSING = "choosing"        # no address in use; next_address() may be called
    CONNECTING = "connecting"    # an address was handed out; its connect/greeting is awaited
    IN_SESSION = "in session"    # greeted: a session is delivering
    FINISHED = "finished"        # outcome known


class Input(FastEnum):
    CANDIDATE = "an address to try is handed out"
    ALL_BUSY = "every remaining address is at its connection limit"
    EXHAUSTED = "no address left within the bounds"
    CONNECT_FAILED = "the connection could not be made (or was lost before a greeting)"
    GREETING_4XX = "the server greeted with 4xx"
    GREETING_5XX = "the server greeted with 5xx"
    GREETED = "the server greeted with 2xx"
    SESSION_ENDED = "the session ended with recipients left to deliver"
    DELIVERED = "every recipient has its final result"


S, I, T = State, Input, Transition

TABLE: dict[tuple[State, Input], Transition[State]] = {
    (S.CHOOSING, I.CANDIDATE): T("hand_out", S.CONNECTING),
    (S.CHOOSING, I.ALL_BUSY): T("wait_for_capacity", S.CHOOSING),
    (S.CHOOSING, I.EXHAUSTED): T("give_up", S.FINISHED),
    (S.CHOOSING, I.DELIVERED): T("complete", S.FINISHED),
    (S.CONNECTING, I.CONNECT_FAILED): T("move_on", S.CHOOSING),
    (S.CONNECTING, I.GREETING_4XX): T("move_on", S.CHOOSING),
    (S.CONNECTING, I.GREETING_5XX): T("refused", S.FINISHED),
    (S.CONNECTING, I.GREETED): T("count_session", S.IN_SESSION),
    (S.IN_SESSION, I.SESSION_ENDED): T("move_on", S.CHOOSING),
    (S.IN_SESSION, I.DELIVERED): T("complete", S.FINISHED),
}


class PlanMisuse(Exception):
    """A report that does not fit the plan's state (a driver bug)."""


@dataclass(frozen=True)
class Candidate:
    """One address to connect to, and the exchanger it belongs to."""

    address: str
    host: str
    preference: int


@dataclass(frozen=True)
class Outcome:
    kind: str                    # "delivered", "temporary" or "permanent"
    reason: Reply | None         # the last failure (None when delivered)


def _local(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, (printable(text)[:400],))


NO_ADDRESS = _local(451, "4.4.4", "no server address to connect to")


def candidates(exchangers: Iterable[tuple[int, str, Iterable[str]]],
               rng: random.Random) -> list[Candidate]:
    """Every address in the order it is tried (see the module documentation)."""
    by_preference: dict[int, list[tuple[str, list[str]]]] = {}
    for preference, host, addresses in exchangers:
        by_preference.setdefault(preference, []).append((host, list(addresses)))
    ordered: list[Candidate] = []
    seen: set[str] = set()
    for preference in sorted(by_preference):
        group = by_preference[preference]
        rng.shuffle(group)
        for host, addresses in group:
            for address in addresses:
                if address not in seen:
                    seen.add(address)
                    ordered.append(Candidate(address, host, preference))
    return ordered


class AddressPlan:
    """One delivery attempt's walk through the server addresses of a destination."""

    def __init__(self, exchangers: Iterable[tuple[int, str, Iterable[str]]], rng: random.Random, *,
                 max_addresses: int = 5, max_sessions: int = 2, instance: str = "",
                 trace: TraceSink | None = None):
        if max_addresses < 1 or max_sessions < 1:
            raise ValueError("max_addresses and max_sessions must be at least 1")
        self.max_addresses = max_addresses
        self.max_sessions = max_sessions
        self.machine: Machine[State, Input] = Machine("smtpc-plan", TABLE, State.CHOOSING,
                                                      instance=instance, daemon="smtpc", trace=trace)
        self._remaining = candidates(exchangers, rng)
        self.tried: list[Candidate] = []
        self.current: Candidate | None = None
        self.sessions = 0
        self.blocked = False
        self.reason: Reply = NO_ADDRESS
        self.outcome: Outcome | None = None
        self._reply: Reply | None = None

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def finished(self) -> bool:
        return self.machine.state is State.FINISHED

    def next_address(self, busy: Callable[[str], bool] | None = None) -> Candidate | None:
        """The next address to connect to; None when the plan is finished or blocked."""
        if self.machine.state is State.FINISHED:
            return None
        if len(self.tried) >= self.max_addresses or self.sessions >= self.max_sessions:
            self._remaining = []
        for position, candidate in enumerate(self._remaining):
            if busy is None or not busy(candidate.address):
                del self._remaining[position]
                self.current = candidate
                self._fire(Input.CANDIDATE)
                return candidate
        self._fire(Input.ALL_BUSY if self._remaining else Input.EXHAUSTED)
        return None

    def connect_failed(self, reason: Reply | str) -> None:
        """The connection to the current address failed (or broke before any greeting)."""
        if isinstance(reason, str):
            reason = _local(451, "4.4.1", f"connect to {self._where()} failed: {reason}")
        self._fire(Input.CONNECT_FAILED, reason)

    def greeting(self, reply: Reply) -> None:
        """The current address greeted with ``reply``."""
        self._fire({2: Input.GREETED, 4: Input.GREETING_4XX, 5: Input.GREETING_5XX}.get(
            reply.code // 100, Input.GREETING_4XX), reply)

    def greeted(self) -> None:
        """The current address greeted with 2xx (the session's first ``Ready``)."""
        self._fire(Input.GREETED)

    def session_ended(self, reason: Reply) -> None:
        """The session ended and some recipients still need a delivery; ``reason`` is why."""
        self._fire(Input.SESSION_ENDED, reason)

    def delivered(self) -> None:
        """Every recipient has its final result: the plan is done."""
        self._fire(Input.DELIVERED)

    def _where(self) -> str:
        return f"{self.current.host}[{self.current.address}]" if self.current else "server"

    def _fire(self, input: Input, reply: Reply | None = None) -> None:
        if self.machine.row(input) is None:
            raise PlanMisuse(f"{input.name} in state {self.machine.state.name}")
        self._reply = reply
        row = self.machine.fire(input)
        getattr(self, "_do_" + row.action)()

    # -- actions ---------------------------------------------------------------------------

    def _do_hand_out(self) -> None:
        self.blocked = False
        self.tried.append(self.current)

    def _do_wait_for_capacity(self) -> None:
        self.blocked = True

    def _do_give_up(self) -> None:
        self.blocked = False
        self.outcome = Outcome("temporary", self.reason)

    def _do_complete(self) -> None:
        self.outcome = Outcome("delivered", None)

    def _do_move_on(self) -> None:
        self.reason = self._reply
        self.current = None

    def _do_refused(self) -> None:
        self.reason = self._reply
        self.outcome = Outcome("permanent", self._reply)

    def _do_count_session(self) -> None:
        self.sessions += 1
