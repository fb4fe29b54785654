"""A real socket map server for the tests: threads, blocking sockets, UNIX or TCP on loopback.

Written independently of meta1's codec (its own netstring reader), so the client is
tested against the protocol as the smap manual states it, not against itself::

    with SockmapServer(handler, unix=path) as server:      # or tcp=True
        ... SocketMapClient(loop, "m", path=server.path) ...
        server.requests   # [(mapname, key), ...] in arrival order

``handler(mapname, key)`` returns the reply *payload* (``"OK root"``, framed by the
server), raw bytes to send as they are (for malformed replies), :data:`STALL` (never
answer: the connection waits until the test releases it or the server stops), or
:data:`CLOSE` (close the connection without answering).
"""

from __future__ import annotations

import os
import socket
import threading
import time

STALL = object()
CLOSE = object()


def frame(payload: str) -> bytes:
    data = payload.encode("utf-8")
    return str(len(data)).encode() + b":" + data + b","


def until(loop, predicate, wait: float = 10.0) -> bool:
    """Run ``loop`` in slices of at most 10 ms until ``predicate()`` (False after ``wait`` s).

    Not ``loop.run_until``: that waits for the loop's own events, and these predicates also
    watch the server's threads (``open_now``, ``requests``), which wake no loop."""
    deadline = time.monotonic() + wait
    while not predicate():
        if time.monotonic() > deadline:
            return False
        loop.run_once(0.01)
    return True


def table_handler(table: dict[str, str]):
    """A handler answering OK/NOTFOUND from ``table`` (whatever the map name)."""
    def handler(mapname: str, key: str):
        return f"OK {table[key]}" if key in table else "NOTFOUND"
    return handler


class SockmapServer:
    def __init__(self, handler, *, unix: str | None = None, tcp: bool = False) -> None:
        assert (unix is None) == tcp
        self.handler = handler
        self.path = unix
        if unix is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
        self.address, self.port = ("127.0.0.1", self.sock.getsockname()[1]) if tcp else (None, None)
        self.sock.listen(64)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.accepted = 0
        self.open_now = 0
        self.max_open = 0
        self.release = threading.Event()       # set: stalled connections are closed
        self.stopping = False
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> SockmapServer:
        self.acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait (in the test's thread) until ``predicate(self)`` holds."""
        pause = threading.Event()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            pause.wait(0.005)
        return False

    def drop_connections(self) -> None:
        """Close every open connection from the server's side."""
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping = True
        self.release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.drop_connections()
        self.acceptor.join(5)
        for thread in list(self.threads):
            thread.join(5)
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open_now += 1
                self.max_open = max(self.max_open, self.open_now)
                self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while not self.stopping:
                request, buffer = self._read_netstring(conn, buffer)
                if request is None:
                    return
                mapname, _, key = request.decode("utf-8", "surrogateescape").partition(" ")
                with self.lock:
                    self.requests.append((mapname, key))
                action = self.handler(mapname, key)
                if action is STALL:
                    self.release.wait()
                    return
                if action is CLOSE:
                    return
                conn.sendall(action if isinstance(action, bytes) else frame(action))
        except OSError:
            return
        finally:
            with self.lock:
                self.open_now -= 1
                if conn in self.conns:
                    self.conns.remove(conn)
            conn.close()

    def _read_netstring(self, conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
        while b":" not in buffer:
            data = conn.recv(4096)
            if not data:
                return None, buffer
            buffer += data
        digits, _, rest = buffer.partition(b":")
        if not digits.isdigit():
            self.errors.append(f"bad request length {digits!r}")
            return None, b""
        length = int(digits)
        while len(rest) < length + 1:
            data = conn.recv(4096)
            if not data:
                return None, b""
            rest += data
        if rest[length:length + 1] != b",":
            self.errors.append("request not followed by ','")
            return None, b""
        return rest[:length], rest[length + 1:]
