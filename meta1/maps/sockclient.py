"""The socket-map client: a pool of connections to one socket map server, on smar's event loop.

Responsibilities
    :class:`SocketMapClient` answers lookups in one ``type = socket`` map (reference
    §2.4; the pool options of the sockmap-pool patch: ``min_connections``,
    ``max_connections``, ``timeout``) without ever blocking the loop::

        client = SocketMapClient(loop, "userdb", mapname="userdb", path="smap/userdb")
        client.start()                       # opens min_connections
        result = client.submit("root", on_result)
        # None: on_result(MapResult) follows, from the loop; a MapResult: the answer now
        # (only for a lookup refused at once: the server is known to be down, the key
        # cannot be sent)

    Each connection runs a :class:`~meta1.maps.sockmap.SockmapConnection` (the table in
    :mod:`meta1.maps.states`); this module does the sockets, the timers and the pool.

Data it owns
    * the connections: connecting, idle or with one request in flight;
    * the queue of lookups waiting for a connection (first come, first served);
    * the server's health: consecutive failures, and until when it counts as down.

Strategies and why (spec/maps.md, D-MAP-8 … D-MAP-10)
    * **One request at a time per connection**, no pipelining. A timeout or a malformed
      reply then costs one connection and one lookup, never the replies of others queued
      behind it; concurrency comes from ``max_connections`` connections instead. MeTA1's
      and sendmail's socket-map clients wait for each reply too, so servers written for
      them need not support pipelining.
    * **The timeout covers a lookup from its submission**: waiting for a free
      connection, connecting, and the reply. Expired, it is answered TEMP (B27) — and if
      it was on the wire, that connection is closed, since its late reply would answer
      the next lookup.
    * **Fail fast while the server is down.** A connect that fails (refused, no socket
      file, timed out) marks the server down for a delay growing along
      :data:`RECONNECT_DELAYS`; the lookups waiting without a live connection are
      answered TEMP at once, and so is every new lookup until the delay is over. Mail is
      deferred with a 4xx immediately instead of each SMTP command waiting ``timeout``
      for a server that is not there. A connection that closes before answering anything
      counts as a failure too (with a lookup on it, or within :data:`SHORT_LIVED`
      seconds), so a server that accepts and dies is not hammered.
    * **A lookup lost with a reused connection is retried once** on a fresh one when no
      byte of its reply had come (the server closed an idle connection as we wrote);
      lookups are idempotent. Otherwise a lost connection answers TEMP.
    * ``min_connections`` are opened at :meth:`start` and reopened when lost (after the
      down delay, if any); connections beyond it close after :data:`IDLE_TIMEOUT` idle
      seconds. At most ``max_connections`` exist at once, connecting ones included.
    * :meth:`close` drops everything: pending callbacks are never called (as the DNS
      resolver's ``close``), since the daemon is stopping.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Callable

from meta1.eventloop.connection import Connection, PendingConnect, Protocol
from meta1.eventloop.loop import EventLoop, Timer
from meta1.machine import TraceSink
from meta1.maps.base import MapResult, Status
from meta1.maps.sockmap import Answer, SockmapConnection, encode_request
from meta1.maps.states import State

log = logging.getLogger("meta1.maps")

#: Seconds a server counts as down after 1, 2, … consecutive failures (the last repeats).
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
#: Seconds a connection beyond min_connections may stay idle before it is closed.
IDLE_TIMEOUT = 30.0
#: A connection closed by the server this soon after it was opened, with nothing
#: answered, counts as a failure of the server.
SHORT_LIVED = 1.0

Callback = Callable[[MapResult], object]


class _Lookup:
    __slots__ = ("key", "callback", "timer", "done", "retried")

    def __init__(self, key: str, callback: Callback) -> None:
        self.key = key
        self.callback = callback
        self.timer: Timer | None = None
        self.done = False
        self.retried = False


class _Conn(Protocol):
    """One pooled connection: the sans-I/O exchange, its socket and its idle timer."""

    def __init__(self, client: SocketMapClient, core: SockmapConnection) -> None:
        self.client = client
        self.core = core
        self.pending: PendingConnect | None = None
        self.conn: Connection | None = None
        self.idle_timer: Timer | None = None
        self.lookup: _Lookup | None = None
        self.opened = 0.0

    def data_received(self, data: bytes) -> None:
        self.client._received(self, data)

    def eof_received(self) -> None:
        self.client._lost(self, "connection closed by the server")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.client._lost(self, f"connection lost: {exc}" if exc else "connection closed")

    def shut(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.conn is not None and not self.conn.closed:
            self.conn.close()


class SocketMapClient:
    """The lookups of one socket map, over a pool of connections (see the module docs)."""

    kind = "socket"

    def __init__(self, loop: EventLoop, name: str, *, mapname: str | None = None, path: str | None = None,
                 address: str | None = None, port: int | None = None, timeout: float = 5.0,
                 min_connections: int = 0, max_connections: int = 4, trace: TraceSink | None = None,
                 idle_timeout: float = IDLE_TIMEOUT,
                 reconnect_delays: tuple[float, ...] = RECONNECT_DELAYS) -> None:
        if (path is None) == (address is None or port is None):
            raise ValueError("a socket map needs either path or address and port")
        if not 0 <= min_connections <= max_connections or max_connections < 1:
            raise ValueError("need 0 <= min_connections <= max_connections, max_connections >= 1")
        self.loop = loop
        self.name = name
        self.mapname = mapname or name
        encode_request(self.mapname, "")   # ValueError now for an unusable map name
        self.path = path
        self.address = address
        self.port = port
        self.timeout = timeout
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.trace = trace
        self.idle_timeout = idle_timeout
        self.reconnect_delays = reconnect_delays
        self.target = path if path is not None else (f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        self.conns: list[_Conn] = []
        self.queue: deque[_Lookup] = deque()
        self.failures = 0
        self.down_until: float | None = None
        self.down_why = ""
        self.closed = False
        self.started = False
        self._maintain_timer: Timer | None = None
        self._serial = 0

    def __repr__(self) -> str:
        return f"<SocketMapClient {self.name} {self.target}>"

    # -- what tests and logs look at ----------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Connections open or being opened."""
        return len(self.conns)

    @property
    def idle_count(self) -> int:
        return sum(1 for c in self.conns if c.core.idle)

    @property
    def down(self) -> bool:
        return self.down_until is not None and self.loop.time() < self.down_until

    # -- the interface of a map ---------------------------------------------------------------

    def start(self) -> None:
        """Open ``min_connections`` (each later reopened when lost)."""
        self.started = True
        self._maintain()

    def submit(self, key: str, callback: Callback) -> MapResult | None:
        """Look ``key`` up: None and ``callback(result)`` later, or the result now."""
        if self.closed:
            return MapResult(Status.TEMP, reason=f"socket map {self.name}: client closed")
        try:
            encode_request(self.mapname, key)
        except ValueError as exc:
            return MapResult(Status.PERM, reason=f"socket map {self.name}: {exc}")
        if not self.conns and self.down:
            return self._down_result()
        lookup = _Lookup(key, callback)
        lookup.timer = self.loop.call_later(self.timeout, lambda: self._expire(lookup))
        self.queue.append(lookup)
        self._pump()
        return None

    def close(self) -> None:
        """Close every connection; lookups in progress are dropped (never answered)."""
        self.closed = True
        if self._maintain_timer is not None:
            self._maintain_timer.cancel()
        for lookup in self.queue:
            self._forget(lookup)
        self.queue.clear()
        for conn in list(self.conns):
            if conn.lookup is not None:
                self._forget(conn.lookup)
                conn.lookup = None
            conn.core.close("client closed")
            conn.shut()
        self.conns.clear()

    # -- the pool ---------------------------------------------------------------------------

    def _down_result(self) -> MapResult:
        return MapResult(Status.TEMP, reason=f"socket map {self.name}: {self.target} unreachable ({self.down_why})")

    def _pump(self) -> None:
        """Give waiting lookups to idle connections; open connections for the rest."""
        while self.queue:
            conn = next((c for c in self.conns if c.core.idle), None)
            if conn is None:
                break
            self._send(conn, self.queue.popleft())
        connecting = sum(1 for c in self.conns if c.core.state is State.CONNECTING)
        wanted = len(self.queue) - connecting
        while wanted > 0 and len(self.conns) < self.max_connections and not self.down and not self.closed:
            self._open()
            wanted -= 1

    def _send(self, conn: _Conn, lookup: _Lookup) -> None:
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        conn.lookup = lookup
        wire = conn.core.send(lookup, lookup.key)
        assert conn.conn is not None
        conn.conn.write(wire)

    def _became_idle(self, conn: _Conn) -> None:
        self._pump()
        if conn.core.idle and len(self.conns) > self.min_connections and conn.idle_timer is None:
            conn.idle_timer = self.loop.call_later(self.idle_timeout, lambda: self._idle_expired(conn))

    def _idle_expired(self, conn: _Conn) -> None:
        conn.idle_timer = None
        if conn.core.idle and len(self.conns) > self.min_connections:
            conn.core.close("idle")
            self._remove(conn)

    def _maintain(self) -> None:
        """Keep ``min_connections`` open (or come back when the down delay is over)."""
        if self.closed or not self.started:
            return
        missing = self.min_connections - len(self.conns)
        if missing <= 0:
            return
        if self.down:
            if self._maintain_timer is None:
                def again() -> None:
                    self._maintain_timer = None
                    self._maintain()
                self._maintain_timer = self.loop.call_at(self.down_until, again)
            return
        for _ in range(missing):
            self._open()

    def _open(self) -> None:
        self._serial += 1
        core = SockmapConnection(self.mapname, instance=f"{self.name}#{self._serial}", trace=self.trace,
                                 clock=self.loop.time if self.trace is not None else None)
        conn = _Conn(self, core)
        self.conns.append(conn)
        if self.path is not None:
            family, where = socket.AF_UNIX, self.path
        else:
            family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
            where = (self.address, self.port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            error = sock.connect_ex(where)
            why = os.strerror(error) if error else ""
        except OSError as exc:   # e.g. a UNIX path longer than sun_path
            error, why = exc.errno or errno.EINVAL, exc.strerror or str(exc)
        if error == errno.EINPROGRESS and family != socket.AF_UNIX:
            conn.pending = PendingConnect(self.loop, sock, self.timeout, lambda s, w: self._connected(conn, s, w))
            return
        if error == errno.EAGAIN:
            why = "the server's listen queue is full"
        if error:
            sock.close()
            self.loop.call_soon(lambda: self._connected(conn, None, why))
        else:
            self.loop.call_soon(lambda: self._connected(conn, sock, ""))

    def _connected(self, conn: _Conn, sock: socket.socket | None, why: str) -> None:
        conn.pending = None
        if conn.core.closed:          # closed meanwhile (client closed)
            if sock is not None:
                sock.close()
            return
        if sock is None:
            conn.core.connect_failed(why)
            self._remove(conn)
            self._failed(f"cannot connect: {why}")
            return
        conn.core.connected()
        conn.opened = self.loop.time()
        conn.conn = Connection(self.loop, sock, conn, peer=self.target)
        self._became_idle(conn)

    def _failed(self, why: str) -> None:
        """The server failed us: count it down for a while, and fail the lookups that
        have no live connection to wait for."""
        delay = self.reconnect_delays[min(self.failures, len(self.reconnect_delays) - 1)]
        if self.failures == 0:
            log.warning("socket map %s: %s: %s; lookups fail with TEMP until it answers", self.name, self.target, why)
        self.failures += 1
        self.down_until = self.loop.time() + delay
        self.down_why = why
        if not any(c.core.state is not State.CLOSED for c in self.conns):
            waiting, self.queue = self.queue, deque()
            for lookup in waiting:
                self._deliver(lookup, self._down_result())
        self._maintain()

    def _received(self, conn: _Conn, data: bytes) -> None:
        answer = conn.core.received(data)
        if answer is not None:
            self._answered(conn, answer)
        if conn.core.closed:
            if conn.core.why.startswith("malformed"):
                log.warning("socket map %s: %s; connection dropped", self.name, conn.core.why)
            self._remove(conn)
            self._pump()
            self._maintain()
        elif conn.core.idle:
            if self.failures:
                log.info("socket map %s: %s answers again", self.name, self.target)
            self.failures = 0
            self.down_until = None
            self._became_idle(conn)

    def _lost(self, conn: _Conn, why: str) -> None:
        if conn not in self.conns:
            return
        served, had_lookup = conn.core.served, conn.lookup is not None
        answer = conn.core.lost(why)
        self._remove(conn)
        if answer is not None:
            self._answered(conn, answer)
        # A server that accepts and closes without answering is failing; one that closes
        # a connection idle for a while is only tidying up.
        if not served and (had_lookup or self.loop.time() - conn.opened < SHORT_LIVED):
            self._failed(why)
        else:
            self._pump()
            self._maintain()

    def _expire(self, lookup: _Lookup) -> None:
        lookup.timer = None
        if lookup.done:
            return
        for conn in self.conns:
            if conn.lookup is lookup:
                answer = conn.core.timed_out()
                self._remove(conn)
                if answer is not None:
                    self._answered(conn, answer)
                self._pump()
                self._maintain()
                return
        try:
            self.queue.remove(lookup)
        except ValueError:
            pass
        why = "no connection free" if self.conns else "no connection"
        self._deliver(lookup, MapResult(Status.TEMP, reason=f"socket map {self.name}: {why} within {self.timeout:g}s"))

    def _answered(self, conn: _Conn, answer: Answer) -> None:
        lookup = answer.request
        conn.lookup = None
        if answer.retry and not lookup.retried and not lookup.done:
            lookup.retried = True
            self.queue.appendleft(lookup)
            self._pump()
            return
        result = answer.result
        if result is None:
            result = MapResult(Status.TEMP, reason=f"socket map {self.name}: {conn.core.why}")
        self._deliver(lookup, result)

    def _remove(self, conn: _Conn) -> None:
        conn.shut()
        if conn in self.conns:
            self.conns.remove(conn)

    def _deliver(self, lookup: _Lookup, result: MapResult) -> None:
        if lookup.done:
            return
        self._forget(lookup)
        try:
            lookup.callback(result)
        except Exception:
            log.exception("socket map %s: a lookup's callback failed", self.name)

    @staticmethod
    def _forget(lookup: _Lookup) -> None:
        lookup.done = True
        if lookup.timer is not None:
            lookup.timer.cancel()
            lookup.timer = None
