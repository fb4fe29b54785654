"""A record link: one end of an inter-daemon UNIX-socket connection.

Responsibilities
    Both ends of every daemon-to-daemon connection (smtps↔qmgr now; smtpc↔qmgr and
    qmgr↔smar later) speak the same way: a ``Hello`` each way first (protocol version,
    role, pid, instance), then framed, typed records (:mod:`meta1.ipc.codec`). This
    protocol class does that part once, for every daemon:

    * it sends its own ``Hello`` on connect and checks the peer's (wrong version or
      role: protocol error, connection closed);
    * it decodes frames and hands each record to ``on_record``; a malformed frame is a
      protocol error that closes the connection and is logged — it never raises into
      the daemon (DESIGN.md: "malformed input is a protocol error, never a crash");
    * it batches output: records sent during one loop iteration leave in one write
      (DESIGN.md: "one IPC record per transaction … batched when several are ready" —
      an unbatched request/response between Python processes costs ~48 µs of CPU, a
      batched one ~6 µs).
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from meta1.eventloop import Connection, EventLoop, Listener, Protocol, connect_unix, listen_unix
from meta1.ipc.codec import FrameDecoder, ProtocolError, frame
from meta1.ipc.records import PROTOCOL_VERSION, Hello, handshake_check

log = logging.getLogger("meta1.ipc")


class RecordLink(Protocol):
    """One end of a record connection; see the module docstring."""

    def __init__(self, loop: EventLoop, *, role: str, peer_role: str, instance: int = 0,
                 on_ready: Callable[["RecordLink"], None] | None = None,
                 on_record: Callable[["RecordLink", object], None] | None = None,
                 on_lost: Callable[["RecordLink", BaseException | None], None] | None = None):
        self.loop = loop
        self.role = role
        self.peer_role = peer_role
        self.instance = instance
        self.on_ready = on_ready
        self.on_record = on_record
        self.on_lost = on_lost
        self.conn: Connection | None = None
        self.peer: Hello | None = None
        self.decoder = FrameDecoder()
        self.closed = False
        self._outbox: list[bytes] = []

    @property
    def ready(self) -> bool:
        return self.peer is not None and not self.closed

    def connection_made(self, conn: Connection) -> None:
        self.conn = conn
        conn.write(frame(Hello(version=PROTOCOL_VERSION, role=self.role, pid=os.getpid(),
                               instance=self.instance)))

    def send(self, record: object) -> None:
        """Queue ``record``; everything queued in this loop iteration leaves in one write."""
        if self.closed:
            return
        if not self._outbox:
            self.loop.call_soon(self._flush)
        self._outbox.append(frame(record))

    def _flush(self) -> None:
        if self.conn is not None and self._outbox and not self.closed:
            self.conn.write(b"".join(self._outbox))
        self._outbox.clear()

    def data_received(self, data: bytes) -> None:
        try:
            records = self.decoder.feed(data)
            for record in records:
                if self.peer is None:
                    self.peer = handshake_check(record, self.peer_role)
                    if self.on_ready is not None:
                        self.on_ready(self)
                elif self.on_record is not None:
                    self.on_record(self, record)
        except ProtocolError as error:
            log.error("protocol error from %s: %s; closing the connection", self.peer_role, error)
            self.close()

    def eof_received(self) -> None:
        self.close()

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self._flush()
            self.conn.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(self, exc)


#: Seconds between connection attempts to a peer that is not (yet) there; the last repeats.
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class LinkClient:
    """The connecting end of a record link, reconnecting until stopped.

    smtps and smtpc connect to qmgr, qmgr connects to smar; each keeps trying while its
    peer is down (a daemon may start before the one it talks to, or outlive its
    restart), with :data:`RECONNECT_DELAYS` between attempts and a warning on the first
    failure and when the delays reach their longest. ``on_ready(link)``,
    ``on_record(link, record)`` and ``on_lost(link, exc)`` are the owner's; ``link`` is
    the current link (None between connections) and ``ready`` says whether records can
    be sent.
    """

    def __init__(self, loop: EventLoop, socket_path, *, role: str, peer_role: str, instance: int = 0,
                 on_ready: Callable[[RecordLink], None] | None = None,
                 on_record: Callable[[RecordLink, object], None] | None = None,
                 on_lost: Callable[[RecordLink, BaseException | None], None] | None = None):
        self.loop = loop
        self.socket_path = socket_path
        self.role = role
        self.peer_role = peer_role
        self.instance = instance
        self.on_ready = on_ready
        self.on_record = on_record
        self.on_lost = on_lost
        self.link: RecordLink | None = None
        self._attempt = 0
        self._stopped = False

    @property
    def ready(self) -> bool:
        return self.link is not None and self.link.ready

    def start(self) -> None:
        self._connect()

    def stop(self) -> None:
        self._stopped = True
        if self.link is not None:
            self.link.close()

    def send(self, record: object) -> bool:
        """Queue ``record`` on the current link; False when there is none ready."""
        if not self.ready:
            return False
        self.link.send(record)
        return True

    def _connect(self) -> None:
        if self._stopped:
            return
        try:
            sock = connect_unix(str(self.socket_path))
        except OSError as error:
            self._retry(f"cannot connect to {self.peer_role} at {self.socket_path}: {error.strerror}")
            return
        self.link = RecordLink(self.loop, role=self.role, peer_role=self.peer_role, instance=self.instance,
                               on_ready=self._ready, on_record=self.on_record, on_lost=self._lost)
        Connection(self.loop, sock, self.link)

    def _retry(self, why: str) -> None:
        delay = RECONNECT_DELAYS[min(self._attempt, len(RECONNECT_DELAYS) - 1)]
        if self._attempt in (0, len(RECONNECT_DELAYS)):
            log.warning("%s; retrying", why)
        self._attempt += 1
        self.loop.call_later(delay, self._connect)

    def _ready(self, link: RecordLink) -> None:
        self._attempt = 0
        log.info("connected to %s (pid %d)", self.peer_role, link.peer.pid)
        if self.on_ready is not None:
            self.on_ready(link)

    def _lost(self, link: RecordLink, exc: BaseException | None) -> None:
        if link is self.link:
            self.link = None
        if link.peer is not None:
            log.warning("connection to %s lost%s", self.peer_role, f": {exc}" if exc else "")
        if self.on_lost is not None:
            self.on_lost(link, exc)
        if not self._stopped:
            self._retry(f"{self.peer_role} not reachable")


class LinkServer:
    """The listening end of record links (the counterpart of :class:`LinkClient`).

    qmgr listens for smtps, smtpc and qmgrctl, smar for qmgr: one UNIX socket each, one
    :class:`RecordLink` per peer that connects, kept in ``links`` (in connection order)
    until it is lost. Connects and disconnects of peer daemons are logged (``quiet``
    for short-lived command-line peers). ``on_record``, ``on_ready`` and ``on_lost`` are
    the owner's; ``on_lost`` runs after the link has left ``links``.
    """

    def __init__(self, loop: EventLoop, socket_path, *, role: str, peer_role: str,
                 on_record: Callable[[RecordLink, object], None],
                 on_ready: Callable[[RecordLink], None] | None = None,
                 on_lost: Callable[[RecordLink, BaseException | None], None] | None = None,
                 quiet: bool = False, mode: int = 0o660):
        self.loop = loop
        self.socket_path = socket_path
        self.mode = mode
        self.role = role
        self.peer_role = peer_role
        self.on_record = on_record
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.quiet = quiet
        self.links: list[RecordLink] = []
        self.listener: Listener | None = None

    def start(self) -> None:
        self.listener = Listener(self.loop, listen_unix(str(self.socket_path), mode=self.mode), self._accept)

    def stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def close(self) -> None:
        """Stop listening and close every link (what was sent on them is written first)."""
        self.stop_listening()
        for link in list(self.links):
            link.close()

    def _accept(self) -> RecordLink:
        link = RecordLink(self.loop, role=self.role, peer_role=self.peer_role, on_ready=self._ready,
                          on_record=self.on_record, on_lost=self._lost)
        self.links.append(link)
        return link

    def _ready(self, link: RecordLink) -> None:
        if not self.quiet:
            log.info("%s connected (pid %d)", self.peer_role, link.peer.pid)
        if self.on_ready is not None:
            self.on_ready(link)

    def _lost(self, link: RecordLink, exc: BaseException | None) -> None:
        if link in self.links:
            self.links.remove(link)
        if link.peer is not None and not self.quiet:
            log.info("%s (pid %d) disconnected", self.peer_role, link.peer.pid)
        if self.on_lost is not None:
            self.on_lost(link, exc)
