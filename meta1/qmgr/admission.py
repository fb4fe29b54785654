"""Incoming connection admission: qmgr counts the SMTP sessions of every smtps process.

Responsibilities
    ``icm:`` (sessions from one client address at once) and ``icr:`` (new sessions from it
    per 60 seconds) must hold across every smtps process, so the counts live in qmgr, the
    one process all smtps processes talk to (reference §1.1: qmgr is "the central control
    instance to avoid overloading local or remote systems"; B56). This module owns them:

    * :class:`ConnectionCounts` — pure bookkeeping: the sessions open per client address
      (by owner, the smtps link that reported them, and session id) and the times of the
      sessions admitted in the last :data:`~meta1.policy.limits.RATE_WINDOW` seconds.
    * :class:`Admission` — the decision for one new session: the client's limits from
      qmgr's configuration map (:class:`meta1.qmgr.limits.LimitsLookup`, answered at once
      or later), the counts at the moment the answer is there, and
      :func:`meta1.policy.limits.admit_connection`. An admitted session is counted until
      smtps says it ended or its smtps link is lost.

    Neither does I/O or reads a clock: the lookup object and ``clock`` are injected (the
    daemon passes its map driver and its loop's monotonic clock).

How smtps reports sessions (D-POL-21)
    No record type is added. A session's connect-stage ``PolicyCheck`` is the "opened"
    report and its ``stage = "end"`` ``PolicyCheck`` — which smtps already sent to free
    smar's per-session state — the "closed" report. With an access map (smtps asks smar
    anyway) admission costs no record at all; with only a configuration map, a session
    costs the connect check, its verdict and the end: the verdict is needed before the
    greeting, and the end is what frees the slot. Nothing is sent per message.

Strategies and why
    * **Counted when decided, not when asked.** Two connections from one address whose
      lookups are in flight at once are decided one after the other, each seeing the
      other if it was admitted; so the limit holds even while a socket map answers.
    * **A session that ends before its decision is never counted.** smtps sends the end
      right after the connect check when the client hangs up early; the pending decision
      is then dropped, so no slot leaks.
    * **Only admitted sessions count for icr:.** A refused connection costs nothing to
      refuse and takes no slot; a client that keeps retrying gets in again once its
      admitted connections of the last minute are below the limit (D-POL-21).
    * **A lost smtps link frees its sessions.** When the link to an smtps process goes
      (that process died, or qmgr's end of the socket broke) every session it reported is
      released at once: the connections of a dead smtps are gone, and a live one that
      reconnects sends ends for sessions qmgr no longer knows, which are ignored. After a
      qmgr restart the counts start from zero; sessions already open are not counted until
      they end — a short undercount, never a connection refused for a slot nobody holds.
    * Counts are per address, keyed by its canonical form (IPv6 uncompressed, an
      IPv4-mapped address as IPv4), as the limits are (spec/policy.md, "Connection
      limits"). Addresses with nothing open and nothing admitted within the window are
      forgotten (amortised sweep), so memory follows the clients of the last minute.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from meta1.policy.limits import RATE_WINDOW, Limits, address_key, admit_connection
from meta1.policy.service import reply_line
from meta1.smtp.replies import Reply

if TYPE_CHECKING:
    from meta1.qmgr.limits import LimitsLookup

log = logging.getLogger("meta1.qmgr")

#: Tracked addresses below which the sweep of stale admission times does not run.
SWEEP_MIN = 1024

Decided = Callable[["Reply | None"], object]


class ConnectionCounts:
    """Sessions open per client address and recent admissions (see the module docstring).

    ``owner`` is whatever identifies the reporter of a session (qmgr passes the smtps
    link), so that :meth:`owner_lost` can release everything it reported."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.open: dict[str, int] = {}
        self.admitted: dict[str, deque[float]] = {}
        self.sessions: dict[Hashable, dict[str, str]] = {}   # owner -> session id -> address
        self._sweep_at = SWEEP_MIN

    def counts(self, address: str, now: float) -> tuple[int, int]:
        """(sessions open from ``address``, sessions admitted from it in the last window)."""
        key = address_key(address) or address
        times = self.admitted.get(key)
        if times is not None:
            self._expire(key, times, now)
        return self.open.get(key, 0), len(self.admitted.get(key, ()))

    def opened(self, owner: Hashable, session_id: str, address: str, now: float) -> None:
        """An admitted session: counted as open, and as admitted at ``now``."""
        key = address_key(address) or address
        sessions = self.sessions.setdefault(owner, {})
        if session_id in sessions:
            raise ValueError(f"session {session_id} is already counted")
        sessions[session_id] = key
        self.open[key] = self.open.get(key, 0) + 1
        self.admitted.setdefault(key, deque()).append(now)
        if len(self.admitted) > self._sweep_at:
            self._sweep(now)

    def closed(self, owner: Hashable, session_id: str) -> bool:
        """The session ended; False if it was not counted (refused, or its owner was lost)."""
        sessions = self.sessions.get(owner)
        key = sessions.pop(session_id, None) if sessions is not None else None
        if key is None:
            return False
        if not sessions:
            del self.sessions[owner]
        self._release(key)
        return True

    def owner_lost(self, owner: Hashable) -> int:
        """Release every session ``owner`` reported; how many there were."""
        sessions = self.sessions.pop(owner, {})
        for key in sessions.values():
            self._release(key)
        return len(sessions)

    def _release(self, key: str) -> None:
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
        per_address: dict[str, int] = {}
        for sessions in self.sessions.values():
            assert sessions, "an owner without sessions is kept"
            for key in sessions.values():
                per_address[key] = per_address.get(key, 0) + 1
        assert per_address == self.open, f"open counts {self.open} != sessions {per_address}"
        for times in self.admitted.values():
            assert times and list(times) == sorted(times)


class Admission:
    """The admission of new sessions (see the module docstring).

    ``lookup`` gives the incoming limits (``icm:``, ``icr:``) of an address now or later;
    ``clock`` is monotonic seconds; ``hostname`` goes into the 421 replies."""

    def __init__(self, lookup: "LimitsLookup", counts: ConnectionCounts, clock: Callable[[], float],
                 hostname: str = "") -> None:
        self.lookup = lookup
        self.counts = counts
        self.clock = clock
        self.hostname = hostname
        self.pending: dict[tuple[Hashable, str], Decided] = {}

    def admit(self, owner: Hashable, session_id: str, address: str, decided: Decided) -> None:
        """Decide on the new session ``session_id`` from ``address``: ``decided(None)`` to
        admit it (it is counted from then on), ``decided(reply)`` to refuse it with that
        421. Called at once, or later when a lookup had to wait — or never, if the session
        ends (:meth:`ended`) or its owner is lost first."""
        key = (owner, session_id)
        if key in self.pending:
            raise ValueError(f"session {session_id} is already being admitted")
        self.pending[key] = decided
        limits = self.lookup.get(address, lambda found: self._decide(key, address, found))
        if limits is not None:
            self._decide(key, address, limits)

    def ended(self, owner: Hashable, session_id: str) -> None:
        """smtps says the session is over: free its slot, or drop its pending decision."""
        if self.pending.pop((owner, session_id), None) is None:
            self.counts.closed(owner, session_id)

    def owner_lost(self, owner: Hashable) -> None:
        """The smtps link ``owner`` is gone: its sessions and pending decisions with it."""
        for key in [key for key in self.pending if key[0] == owner]:
            del self.pending[key]
        released = self.counts.owner_lost(owner)
        if released:
            log.info("smtps link lost: %d counted session%s released", released, "" if released == 1 else "s")

    def _decide(self, key: tuple[Hashable, str], address: str, limits: Limits) -> None:
        decided = self.pending.pop(key, None)
        if decided is None:
            return                     # the session ended, or its smtps went, meanwhile
        owner, session_id = key
        now = self.clock()
        open_now, recent = self.counts.counts(address, now)
        refusal = admit_connection(limits, address, open_now=open_now, recent=recent, hostname=self.hostname)
        if refusal is None:
            self.counts.opened(owner, session_id, address, now)
        elif limits.failed:
            log.warning("%s: connection from %s refused for now: configuration map: %s", session_id, address,
                        limits.failure)
        else:
            log.info("%s: connection from %s refused (%d open, %d in the last minute): %s", session_id, address,
                     open_now, recent, reply_line(refusal))
        decided(refusal)
