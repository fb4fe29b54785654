"""Incoming connection admission: qmgr counts the SMTP sessions of every smtps process.

Responsibilities
    ``icm:`` (sessions from one client address at once) and ``icr:`` (new sessions from it
    per 60 seconds) must hold across every smtps process, so the counts live in qmgr, the
    one process all smtps processes talk to (reference §1.1: qmgr is "the central control
    instance to avoid overloading local or remote systems"; B56). This module owns them:

    * :class:`ConnectionCounts` — pure bookkeeping per client address: the sessions open
      and the times of those admitted in the last
      :data:`~meta1.policy.limits.RATE_WINDOW` seconds;
    * :class:`Admission` — each session's admission, a small machine (the table below):
      the client's limits from qmgr's configuration map
      (:class:`meta1.qmgr.limits.LimitsLookup`, answered at once or later), the counts at
      the moment the answer is there, :func:`meta1.policy.limits.admit_connection`; an
      admitted session holds its slot until smtps says it ended or its smtps link is lost.

    Neither does I/O or reads a clock: the lookup object and ``clock`` are injected (the
    daemon passes its map driver and its loop's monotonic clock).

How smtps reports sessions (spec/policy.md D-POL-22)
    No record type is added. A session's connect-stage ``PolicyCheck`` is the "opened"
    report and its ``stage = "end"`` ``PolicyCheck`` — which smtps already sent to free
    smar's per-session state — the "closed" report (``owner`` is the smtps link, a session
    is known by ``(owner, session id)``). With an access map (smtps asks smar anyway)
    admission costs no record at all; with only a configuration map a session costs the
    connect check, its verdict and the end. Nothing is sent per message.

Reading the table
    A session starts ``NEW`` and its ``CONNECT`` starts the lookup (``DECIDING``). The
    answer and the counts at that moment ``ADMIT`` it (``COUNTED``: it holds a slot) or
    ``REFUSE`` it (``421 4.7.0``; ``421 4.3.0`` when the lookup failed). ``END`` and
    ``LINK_LOST`` free a counted session's slot, or drop a decision still waiting. A
    session in ``DONE`` is forgotten, so an ``END`` for a session qmgr does not know — a
    refused one, one from before a qmgr restart or a link loss — changes nothing. A second
    ``CONNECT`` for a known session is a peer's bug: it is answered ``421 4.3.0`` and
    takes no second slot.

Strategies and why
    * **Counted when decided, not when asked.** Two connections from one address whose
      lookups are in flight at once are decided one after the other, each seeing the
      other if it was admitted; so the limit holds even while a socket map answers.
    * **A session that ends before its decision is never counted** — smtps sends the end
      right after the connect check when the client hangs up early; no slot leaks.
    * **Only admitted sessions count for icr:.** A refused connection takes no slot and
      costs nothing to refuse; ``icr:`` N is then exactly "at most N admitted a minute".
    * **A lost smtps link frees its sessions.** The connections of a dead smtps are gone;
      a live one that reconnects sends ends for sessions qmgr no longer knows, which are
      ignored. After a qmgr restart the counts start from zero and sessions already open
      are not counted until they end — a short undercount, never a connection refused
      for a slot nobody holds.
    * Counts are per address, keyed by its canonical form (IPv6 uncompressed, an
      IPv4-mapped address as IPv4: :func:`~meta1.policy.limits.address_key`), as the
      limits are. Addresses with nothing open and nothing admitted within the window are
      forgotten (amortised sweep), so memory follows the clients of the last minute.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from meta1.machine import FastEnum, Machine, TraceSink, Transition
from meta1.policy.limits import RATE_WINDOW, Limits, address_key, admit_connection
from meta1.policy.service import reply_line
from meta1.smtp.replies import R, Reply

if TYPE_CHECKING:
    from meta1.qmgr.limits import LimitsLookup

log = logging.getLogger("meta1.qmgr")

#: Tracked addresses below which the sweep of stale admission times does not run.
SWEEP_MIN = 1024

Decided = Callable[["Reply | None"], object]


class State(FastEnum):
    NEW = "new"                # created for its connect check
    DECIDING = "deciding"      # the client's limits are being looked up
    COUNTED = "counted"        # admitted: the session holds a slot
    DONE = "done"              # refused, ended or its link lost: forgotten


class Input(FastEnum):
    CONNECT = "smtps' connect check for the session"
    ADMIT = "the limits and the counts admit the session"
    REFUSE = "a limit is reached, or the limits could not be looked up"
    END = "smtps says the session is over"
    LINK_LOST = "the smtps link that reported the session is gone"


S, I, T = State, Input, Transition

TABLE: dict[tuple[State, Input], Transition[State]] = {
    (S.NEW, I.CONNECT): T("look_up", S.DECIDING),
    (S.DECIDING, I.CONNECT): T("refuse_repeat", S.DECIDING),
    (S.DECIDING, I.ADMIT): T("count", S.COUNTED),
    (S.DECIDING, I.REFUSE): T("refuse", S.DONE),
    (S.DECIDING, I.END): T("drop_decision", S.DONE),
    (S.DECIDING, I.LINK_LOST): T("drop_decision", S.DONE),
    (S.COUNTED, I.CONNECT): T("refuse_repeat", S.COUNTED),
    (S.COUNTED, I.END): T("free_slot", S.DONE),
    (S.COUNTED, I.LINK_LOST): T("free_slot", S.DONE),
}


class ConnectionCounts:
    """Sessions open per client address and recent admissions (module docstring)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.open: dict[str, int] = {}
        self.admitted: dict[str, deque[float]] = {}
        self._sweep_at = SWEEP_MIN

    def counts(self, address: str, now: float) -> tuple[int, int]:
        """(sessions open from ``address``, sessions admitted from it in the last window)."""
        key = address_key(address) or address
        times = self.admitted.get(key)
        if times is not None:
            self._expire(key, times, now)
        return self.open.get(key, 0), len(self.admitted.get(key, ()))

    def opened(self, address: str, now: float) -> None:
        """A session admitted at ``now``: open, and admitted within the window."""
        key = address_key(address) or address
        self.open[key] = self.open.get(key, 0) + 1
        self.admitted.setdefault(key, deque()).append(now)
        if len(self.admitted) > self._sweep_at:
            self._sweep(now)

    def closed(self, address: str) -> None:
        """A session from ``address`` counted by :meth:`opened` is over."""
        key = address_key(address) or address
        left = self.open[key] - 1
        if left:
            self.open[key] = left
        else:
            del self.open[key]

    def _expire(self, key: str, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.admitted[key]

    def _sweep(self, now: float) -> None:
        """Forget admission times older than the window; the next sweep waits until the
        table has doubled (amortised constant cost per admission)."""
        for key, times in list(self.admitted.items()):
            self._expire(key, times, now)
        self._sweep_at = max(SWEEP_MIN, 2 * len(self.admitted))

    def check_invariants(self) -> None:
        assert all(count > 0 for count in self.open.values()), self.open
        for times in self.admitted.values():
            assert times and list(times) == sorted(times)


class _Session:
    __slots__ = ("owner", "session_id", "address", "machine", "decided")

    def __init__(self, owner: Hashable, session_id: str, address: str, machine: Machine[State, Input],
                 decided: Decided) -> None:
        self.owner = owner
        self.session_id = session_id
        self.address = address
        self.machine = machine
        self.decided: Decided | None = decided


class Admission:
    """The admission of new sessions (module docstring and table).

    ``lookup`` gives the incoming limits (``icm:``, ``icr:``) of an address now or later;
    ``clock`` is monotonic seconds; ``hostname`` goes into the 421 replies."""

    def __init__(self, lookup: "LimitsLookup", counts: ConnectionCounts, clock: Callable[[], float],
                 hostname: str = "", *, trace: TraceSink | None = None) -> None:
        self.lookup = lookup
        self.counts = counts
        self.clock = clock
        self.hostname = hostname
        self.trace = trace
        self.sessions: dict[Hashable, dict[str, _Session]] = {}    # owner -> session id -> session

    def admit(self, owner: Hashable, session_id: str, address: str, decided: Decided) -> None:
        """Decide on the new session ``session_id`` from ``address``: ``decided(None)`` to
        admit it (it is counted from then on), ``decided(reply)`` to refuse it with that
        421. Called at once, or later when a lookup had to wait — or never, if the session
        ends (:meth:`ended`) or its owner is lost first."""
        sessions = self.sessions.setdefault(owner, {})
        known = sessions.get(session_id)
        if known is not None:
            self._fire(known, Input.CONNECT, repeat=decided)
            return
        machine = Machine("qmgr-admission", TABLE, State.NEW, instance=session_id, daemon="qmgr",
                          trace=self.trace, clock=self.clock)
        session = sessions[session_id] = _Session(owner, session_id, address, machine, decided)
        self._fire(session, Input.CONNECT)

    def ended(self, owner: Hashable, session_id: str) -> None:
        """smtps says the session is over: free its slot, or drop its pending decision."""
        session = self.sessions.get(owner, {}).get(session_id)
        if session is not None:
            self._fire(session, Input.END)

    def owner_lost(self, owner: Hashable) -> None:
        """The smtps link ``owner`` is gone: its sessions and pending decisions with it."""
        sessions = list(self.sessions.get(owner, {}).values())
        for session in sessions:
            self._fire(session, Input.LINK_LOST)
        if sessions:
            log.info("smtps link lost: %d session%s it reported released", len(sessions),
                     "" if len(sessions) == 1 else "s")

    def check_invariants(self) -> None:
        counted: dict[str, int] = {}
        for owner, sessions in self.sessions.items():
            assert sessions, "an owner without sessions is kept"
            for session_id, session in sessions.items():
                assert (session.owner, session.session_id) == (owner, session_id)
                assert session.machine.state in (State.DECIDING, State.COUNTED)
                assert (session.decided is None) == (session.machine.state is State.COUNTED)
                if session.machine.state is State.COUNTED:
                    key = address_key(session.address) or session.address
                    counted[key] = counted.get(key, 0) + 1
        assert counted == self.counts.open, f"counted sessions {counted} != open counts {self.counts.open}"
        self.counts.check_invariants()

    # -- the machine ------------------------------------------------------------------------

    def _fire(self, session: _Session, input: Input, *, repeat: Decided | None = None) -> None:
        """The one place a session's state changes: fire ``input``, run the row's action."""
        row = session.machine.fire(input)
        action = row.action
        if action == "look_up":
            found = self.lookup.get(session.address, lambda answer: self._decide(session, answer))
            if found is not None:
                self._decide(session, found)
        elif action == "refuse_repeat":
            # smtps checks a session's client once; a repeat is a peer's bug, never a crash
            # here nor a second slot: refused for now, the first decision stands.
            log.error("%s: connect check repeated for a session already known", session.session_id)
            repeat(R.LOCAL_ERROR.format(hostname=self.hostname))
        elif action == "count":
            self.counts.opened(session.address, self.clock())
        elif action == "free_slot":
            self.counts.closed(session.address)
        # refuse, drop_decision: nothing held
        if row.next is State.DONE:
            sessions = self.sessions[session.owner]
            del sessions[session.session_id]
            if not sessions:
                del self.sessions[session.owner]

    def _decide(self, session: _Session, limits: Limits) -> None:
        if session.machine.state is not State.DECIDING:
            return                     # the session ended, or its smtps went, meanwhile
        open_now, recent = self.counts.counts(session.address, self.clock())
        refusal = admit_connection(limits, session.address, open_now=open_now, recent=recent,
                                   hostname=self.hostname)
        decided, session.decided = session.decided, None
        if refusal is None:
            self._fire(session, Input.ADMIT)
        else:
            self._fire(session, Input.REFUSE)
            if limits.failed:
                log.warning("%s: connection from %s refused for now: configuration map %s: %s", session.session_id,
                            session.address, self.lookup.map_name, limits.failure)
            else:
                log.info("%s: connection from %s refused (%d open, %d in the last minute): %s",
                         session.session_id, session.address, open_now, recent, reply_line(refusal))
        decided(refusal)
