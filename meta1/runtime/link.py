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

from meta1.eventloop import Connection, EventLoop, Protocol
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
