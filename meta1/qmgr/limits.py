"""qmgr's configuration map at run time: the per-IP limits and smtpc session options
looked up, cached, applied.

Responsibilities
    ``qmgr { config_map = NAME; }`` names a map (declared as ``smar { map NAME { … } }``)
    whose ``icm: icr: oci: ocm: ocr: oct:`` entries set limits per IP address
    (:mod:`meta1.policy.limits`, spec/policy.md "Connection limits") and whose
    ``smtpc_session_conf:`` entries set smtpc's reply timers per server address
    (:mod:`meta1.policy.sessionconf`, D-POL-28). This module is the part of qmgr that
    reads it:

    * :class:`LimitsLookup` — the limits of one address for a set of tags, answered at
      once or later, cached;
    * :class:`OutgoingLimits` — ``oci:``/``ocm:``/``ocr:`` as the scheduler's
      :data:`~meta1.qmgr.destinations.LimitLookup` (slow start and the rate of new
      connections per server address, B69, B70), ``oct:`` and ``smtpc_session_conf:``'s
      ``IO_timeout`` and ``final_dot_timeout`` as the timers of each delivery target
      (RFC 5321 §4.5.3.2 gives smtpc's defaults; a slow or a hurried server gets its
      own), and the gate that holds a route until what the map says of its addresses is
      known;
    * :class:`ConfigMap` — the map opened in qmgr, with both directions over it (incoming
      admission is :mod:`meta1.qmgr.admission`).

Where the lookups run (D-POL-23)
    qmgr looks the entries up itself, through the same map driver smar uses
    (:class:`meta1.maps.driver.MapDriver`, opened with only this map and its sequence
    members). A hash, regex or inline map answers within the call; a socket map answers
    from qmgr's event loop through the non-blocking socket-map client, so the loop never
    waits on a socket. Asking smar instead would add a record pair and a second hop to
    every new incoming connection and every route, for answers that are in a local file in
    the common case; and the decision they feed (the counts) is qmgr's.

The cache
    A lookup that succeeded is kept for :data:`CACHE_TTL` seconds (the window of ``icr:``
    itself), with the parsed ``smtpc_session_conf:`` of a server address: a busy client or
    server costs one set of lookups a minute, a socket map is not asked per connection, an
    entry is not parsed per delivery, and a rebuilt map takes effect within a minute.
    Lookups of one address that overlap share one plan. Failures are never cached: the
    next connection asks again (a socket map that is down answers at once, D-MAP-10).

    Incoming admission uses only fresh entries. Outgoing limits are needed synchronously
    (the scheduler is pure and calls ``limits(address)`` when it first plans a connection
    to an address), so a route from smar is held until each of its addresses has a fresh
    entry (:meth:`OutgoingLimits.route_ready`) — immediate with a file map — and those
    entries are kept as long as a route may be cached (:data:`ROUTE_KEEP`). A failure
    there — a lookup that fails, a limit that is not a number, an ``smtpc_session_conf:``
    value that does not parse — defers the route's recipients (``451 4.3.0``, logged with
    the map and the key), as a failed lookup of configuration data must (B33, D-POL-10);
    it never lets mail go out with limits or timers the map did not give. Should the
    scheduler still ask about an address nothing is known of and whose lookup cannot
    answer at once, it gets one connection, and one a minute, the least any entry allows,
    until the answer is in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from meta1.maps.driver import MapDriver, open_maps
from meta1.policy.limits import INCOMING, MAX_LIMIT, OUTGOING, RATE_WINDOW, Limits, address_key, limits_steps
from meta1.policy.plan import Plan
from meta1.policy.sessionconf import SmtpcSessionConf
from meta1.qmgr.admission import Admission, ConnectionCounts
from meta1.qmgr.destinations import ConnectionLimits

log = logging.getLogger("meta1.qmgr")

#: Seconds a successful lookup is used before it is asked again.
CACHE_TTL = float(RATE_WINDOW)
#: Seconds an outgoing entry is kept for the scheduler: the longest a route is cached
#: (smar's largest TTL, one day).
ROUTE_KEEP = 86_400.0
#: Cache entries below which expired ones are left until looked up again.
PRUNE_MIN = 1024
#: Connections to an address whose limits are not known yet and cannot be at once.
UNKNOWN_LIMITS = ConnectionLimits(initial=1, maximum=1, rate=1)
NO_LIMITS = Limits()

Answered = Callable[[Limits], object]


class LimitsLookup:
    """The limits (``tags``) of an address in map ``map_name``, through ``driver`` (see the
    module docstring). ``clock``: monotonic seconds; ``keep``: how long an entry stays
    available to :meth:`known` after it was found."""

    def __init__(self, driver, map_name: str, tags: tuple[str, ...], *, clock: Callable[[], float],
                 ttl: float = CACHE_TTL, keep: float = CACHE_TTL) -> None:
        self.driver = driver
        self.map_name = map_name
        self.tags = tags
        self.clock = clock
        self.ttl = ttl
        self.keep = max(keep, ttl)
        self.cache: dict[str, tuple[Limits, float]] = {}     # address key -> (limits, found at)
        self.waiting: dict[str, list[Answered]] = {}          # lookups in flight
        self._prune_at = PRUNE_MIN

    def get(self, address: str, answered: Answered) -> Limits | None:
        """The limits of ``address`` now (fresh from the cache, or from a map that answers
        within the call), or None and ``answered(limits)`` later, from the loop. An
        address that is not an IP has no limits."""
        key = address_key(address)
        if key is None:
            return NO_LIMITS
        entry = self.cache.get(key)
        if entry is not None and self.clock() - entry[1] < self.ttl:
            return entry[0]
        waiting = self.waiting.get(key)
        if waiting is not None:
            waiting.append(answered)
            return None
        plan = Plan(limits_steps(self.map_name, key, self.tags))
        if self.driver.run(plan, lambda finished: self._answered(key, finished.result)):
            self._store(key, plan.result)
            return plan.result
        self.waiting[key] = [answered]
        return None

    def known(self, address: str) -> Limits | None:
        """The limits last found for ``address`` however old (within ``keep``), or None."""
        key = address_key(address)
        if key is None:
            return NO_LIMITS
        entry = self.cache.get(key)
        return entry[0] if entry is not None else None

    def _answered(self, key: str, limits: Limits) -> None:
        self._store(key, limits)
        for answered in self.waiting.pop(key, ()):
            answered(limits)

    def _store(self, key: str, limits: Limits) -> None:
        if limits.failed:
            return                                  # asked again next time
        self.cache[key] = (limits, self.clock())
        if len(self.cache) > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """Forget entries older than ``keep``; the next prune waits until the cache has
        doubled (amortised constant cost per lookup, memory bounded by the addresses in
        use)."""
        oldest = self.clock() - self.keep
        for key in [key for key, (_, found_at) in self.cache.items() if found_at <= oldest]:
            del self.cache[key]
        self._prune_at = max(PRUNE_MIN, 2 * len(self.cache))


class OutgoingLimits:
    """``oci:``, ``ocm:``, ``ocr:``, ``oct:`` and ``smtpc_session_conf:`` for server
    addresses (see the module docstring).

    ``initial_connections``/``max_connections``: the ``qmgr { smtpc { … } }`` defaults an
    address without an entry keeps."""

    def __init__(self, lookup: LimitsLookup, initial_connections: int, max_connections: int) -> None:
        self.lookup = lookup
        self.initial_connections = initial_connections
        self.max_connections = max_connections

    def route_ready(self, addresses: Iterable[str], done: Callable[[str | None], object]) -> None:
        """Call ``done(None)`` once every address of a route has fresh entries, or
        ``done(failure)`` (a line for the deferral reply and the log, naming the map and
        the key) when a lookup failed; at once when nothing has to wait."""
        outstanding: set[str] = set()
        failures: list[str] = []
        finished = False

        def answered(address: str, limits: Limits) -> None:
            nonlocal finished
            outstanding.discard(address)
            if limits.failed:
                failures.append(limits.failure)
            if not outstanding and not finished:
                finished = True
                done(f"configuration map {self.lookup.map_name}: {failures[0]}" if failures else None)

        outstanding.update(addresses)
        if not outstanding:            # nothing to wait for (the scheduler fails such a route)
            done(None)
            return
        for address in list(outstanding):
            limits = self.lookup.get(address, lambda found, address=address: answered(address, found))
            if limits is not None:
                answered(address, limits)

    def connection_limits(self, address: str) -> ConnectionLimits | None:
        """The connections to ``address`` at first, at most, and new ones per minute; None
        for the section's defaults and no rate (the scheduler's ``LimitLookup``). ``0`` in
        the map is no limit: ``ocm: 0`` any number of connections, ``oci: 0`` no slow
        start (the maximum at once), ``ocr: 0`` no rate."""
        limits = self._limits_now(address)
        if limits is None or limits.failed:
            log.warning("%s: connection limits not known yet; one connection, one a minute, until they are", address)
            return UNKNOWN_LIMITS
        initial, maximum, rate = (limits.values.get(tag) for tag in ("oci:", "ocm:", "ocr:"))
        if initial is None and maximum is None and not rate:
            return None
        maximum = self.max_connections if maximum is None else maximum or MAX_LIMIT
        initial = self.initial_connections if initial is None else initial or maximum
        return ConnectionLimits(initial, maximum, rate or 0)

    def target_timeouts(self, address: str) -> tuple[int, int, int]:
        """The timers of a delivery ``Target`` for ``address``, in seconds: the connect
        (``oct:``), each reply and the reply to the final dot (``smtpc_session_conf:``'s
        ``IO_timeout``, ``final_dot_timeout``); 0: smtpc's own. Read from the entries the
        route waited for (:meth:`route_ready`), kept as long as the route."""
        limits = self.lookup.known(address)
        if limits is None:
            return 0, 0, 0
        conf = limits.session_conf or SmtpcSessionConf()
        return limits.get("oct:") or 0, conf.io_timeout or 0, conf.final_dot_timeout or 0

    def _limits_now(self, address: str) -> Limits | None:
        known = self.lookup.known(address)
        if known is not None:
            return known
        return self.lookup.get(address, lambda _limits: None)    # the answer fills the cache


class ConfigMap:
    """qmgr's configuration map opened (strict=False: a map that cannot be opened answers
    PERM, so connections are refused for now and routes deferred, and the log says why),
    with the incoming and outgoing lookups over it. ``loop``: qmgr's event loop (socket
    maps, the clock)."""

    def __init__(self, config, loop, map_name: str, hostname: str, *, trace=None) -> None:
        self.map_name = map_name
        self.driver = MapDriver(open_maps(config, loop, strict=False, names=(map_name,), trace=trace))
        smtpc = config.qmgr.smtpc
        self.outgoing = OutgoingLimits(
            LimitsLookup(self.driver, map_name, OUTGOING, clock=loop.time, keep=ROUTE_KEEP),
            smtpc.initial_connections, smtpc.max_connections)
        self.admission = Admission(LimitsLookup(self.driver, map_name, INCOMING, clock=loop.time),
                                   ConnectionCounts(), loop.time, hostname, trace=trace)

    def start(self) -> None:
        self.driver.start()

    def close(self) -> None:
        self.driver.close()


def open_config_map(config, loop, hostname: str, *, trace=None) -> ConfigMap | None:
    """The configuration map of ``qmgr { config_map }``, or None when there is none."""
    map_name = config.qmgr.config_map
    if not isinstance(map_name, str):
        return None
    return ConfigMap(config, loop, map_name, hostname, trace=trace)
