"""A blocking stand-in for one end of a record link, for tests of a single daemon.

``RecordPeer(sock, role=..., expect=...)`` sends its Hello, checks the daemon's, then
``send(record)`` and ``read()`` (the next record; fails if the daemon closes)."""

from __future__ import annotations

import os
import socket

from meta1.ipc.codec import FrameDecoder, frame
from meta1.ipc.records import PROTOCOL_VERSION, Hello


class RecordPeer:
    def __init__(self, sock: socket.socket, *, role: str, expect: str, timeout: float = 30) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.decoder = FrameDecoder()
        self.pending: list[object] = []
        self.send(Hello(PROTOCOL_VERSION, role, os.getpid(), 0))
        hello = self.read()
        assert isinstance(hello, Hello) and hello.role == expect, hello

    def send(self, record: object) -> None:
        self.sock.sendall(frame(record))

    def read(self) -> object:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the daemon closed the link"
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()
