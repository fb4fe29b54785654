"""Connections, listeners and socket helpers (meta1.eventloop.connection), on real sockets."""

from __future__ import annotations

import errno
import gc
import logging
import os
import resource
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from meta1.eventloop import Connection, EventLoop, Listener, Protocol, connect_unix, listen_tcp, listen_unix


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


class Recorder(Protocol):
    """Records what the connection reports; subclasses decide how to answer."""

    instances: list[Recorder]

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: list[BaseException | None] = []
        self.drained = 0

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def output_drained(self) -> None:
        self.drained += 1


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.conn is not None
        self.conn.write(data)


class LineEcho(Recorder):
    """Echoes every line with its own write: many small writes."""

    def __init__(self) -> None:
        super().__init__()
        self.partial = b""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.conn is not None
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self.conn.write(line + b"\n")


class Greeter(Echo):
    def connection_made(self, conn: Connection) -> None:
        super().connection_made(conn)
        conn.write(b"220 ready\r\n")


class Peer:
    """The client side of a test: a non-blocking socket with an output queue and everything received."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.out = bytearray()
        self.received = bytearray()
        self.eof = False
        self.sent = 0

    @classmethod
    def connect(cls, address: tuple[str, int], rcvbuf: int | None = None) -> Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(address)
        return cls(sock)

    def send_some(self) -> bool:
        """Send what the kernel takes; False when it took nothing."""
        if not self.out:
            return True
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return False
        del self.out[:sent]
        self.sent += sent
        return True

    def read_some(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
            self.received += data

    def close(self) -> None:
        self.sock.close()


def drive(loop: EventLoop, until: Callable[[], bool], step: Callable[[], object] = lambda: None,
          seconds: float = 20) -> None:
    """Alternate ``step()`` (the client's part) with loop iterations until ``until()``."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        step()
        loop.run_once(0.01)


def pattern(offset: int, size: int) -> bytes:
    """Bytes ``offset .. offset+size`` of an endless, non-repeating-at-buffer-sizes stream."""
    block = bytes(i % 251 for i in range(offset % 251, offset % 251 + 251))
    return (block * (size // 251 + 2))[:size]


@pytest.fixture
def server(loop: EventLoop) -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def start(factory: Callable[[], Protocol], **kwargs: object) -> Listener:
        listener = Listener(loop, listen_tcp("127.0.0.1", 0), factory, **kwargs)
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        for conn in list(listener.connections):
            conn.close()
        listener.close()


def accept_one(loop: EventLoop, listener: Listener, rcvbuf: int | None = None) -> tuple[Peer, Connection]:
    before = set(listener.connections)
    peer = Peer.connect(listener.sock.getsockname(), rcvbuf)
    assert loop.run_until(lambda: len(listener.connections) > len(before), timeout=5)
    (conn,) = listener.connections - before
    return peer, conn


def test_echo_and_many_small_writes_arrive_in_order(loop: EventLoop, server: Callable[..., Listener]) -> None:
    listener = server(LineEcho)
    peer, conn = accept_one(loop, listener)
    lines = b"".join(b"line %d\n" % i for i in range(20000))
    peer.out += lines
    # The client sends everything before it reads anything: the replies pile up in small writes.
    drive(loop, lambda: not peer.out, peer.send_some)
    drive(loop, lambda: len(peer.received) == len(lines), peer.read_some)
    assert peer.received == lines
    assert conn.buffered == 0
    assert isinstance(conn.peer, tuple) and conn.peer[0] == "127.0.0.1"
    assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    peer.close()


def test_a_client_that_never_reads_pauses_reading_and_bounds_memory(loop: EventLoop,
                                                                    server: Callable[..., Listener]) -> None:
    limit, read_size = 64 * 1024, 16 * 1024

    class SmallBufferEcho(Echo):
        def connection_made(self, conn: Connection) -> None:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            super().connection_made(conn)

    listener = server(SmallBufferEcho, output_limit=limit, read_size=read_size)
    peer, conn = accept_one(loop, listener, rcvbuf=4096)
    protocol = conn.protocol
    assert isinstance(protocol, Echo)
    largest = 0

    def send_and_watch() -> bool:
        nonlocal largest
        if len(peer.out) < 65536:
            peer.out += pattern(peer.sent + len(peer.out), 65536)
        took = peer.send_some()
        largest = max(largest, conn.buffered)
        return took

    drive(loop, lambda: conn.output_full, send_and_watch)
    assert not conn.reading
    # Keep pushing until the kernel buffers on both sides are full too: nothing more is read.
    drive(loop, lambda: not send_and_watch())
    read_so_far = len(protocol.received)
    for _ in range(5):
        send_and_watch()
        loop.run_once(0.02)
    assert len(protocol.received) == read_so_far
    assert conn.output_full and not conn.reading
    assert limit < largest <= limit + read_size

    # The client reads: the buffer drains below half the limit and reading resumes.
    drive(loop, lambda: conn.reading, peer.read_some)
    assert conn.buffered <= limit // 2 and protocol.drained >= 1
    drive(loop, lambda: len(peer.received) == peer.sent + len(peer.out) and not peer.out,
          lambda: (peer.send_some(), peer.read_some()))
    assert peer.received == pattern(0, peer.sent)
    peer.close()


def test_explicit_pause_is_independent_of_the_output_pause(loop: EventLoop, server: Callable[..., Listener]) -> None:
    listener = server(Recorder, output_limit=10)
    peer, conn = accept_one(loop, listener)
    protocol = conn.protocol
    assert isinstance(protocol, Recorder)
    conn.pause_reading()
    peer.out += b"hello"
    peer.send_some()
    loop.run_once(0.05)
    assert protocol.received == b"" and not conn.reading
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while not conn.output_full:  # fill the output while the client does not read
        conn.write(b"x" * 65536)
    drive(loop, lambda: not conn.output_full, peer.read_some)
    assert not conn.reading  # the protocol's pause still applies
    conn.resume_reading()
    assert conn.reading
    drive(loop, lambda: protocol.received == b"hello")
    peer.close()


def test_eof_closes_by_default_and_reaches_an_overriding_protocol(loop: EventLoop,
                                                                  server: Callable[..., Listener]) -> None:
    class HalfClose(Recorder):
        eofs = 0

        def connection_made(self, conn: Connection) -> None:
            self.connection = conn  # no super(): the default must not depend on it

        def eof_received(self) -> None:
            self.eofs += 1
            self.connection.write(b"bye\r\n")
            self.connection.close_when_flushed()

    for factory in (Recorder, HalfClose):
        listener = server(factory)
        peer, conn = accept_one(loop, listener)
        peer.sock.shutdown(socket.SHUT_WR)
        drive(loop, lambda: peer.eof and not listener.connections, peer.read_some)
        protocol = conn.protocol
        assert isinstance(protocol, Recorder)
        assert loop.run_until(lambda: protocol.lost == [None], timeout=5)
        if isinstance(protocol, HalfClose):
            assert protocol.eofs == 1 and peer.received == b"bye\r\n"
        peer.close()


def test_a_reset_by_the_peer_is_reported_once_and_write_does_not_raise(loop: EventLoop,
                                                                       server: Callable[..., Listener]) -> None:
    listener = server(Recorder)
    for writes_first in (False, True):
        peer, conn = accept_one(loop, listener)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # linger 0
        peer.close()  # RST
        if writes_first:
            for _ in range(3):
                conn.write(b"x" * 100000)
        protocol = conn.protocol
        assert isinstance(protocol, Recorder)
        assert loop.run_until(lambda: bool(protocol.lost), timeout=5)
        loop.run_once(0.01)
        assert len(protocol.lost) == 1
        assert isinstance(protocol.lost[0], (ConnectionResetError, BrokenPipeError))
        assert conn.closed and conn not in listener.connections
        conn.write(b"ignored")  # writes after close are ignored


def test_close_discards_output_and_reports_once(loop: EventLoop, server: Callable[..., Listener]) -> None:
    listener = server(Recorder)
    peer, conn = accept_one(loop, listener)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.write(b"x" * 1_000_000)
    assert conn.buffered > 0
    conn.close()
    conn.close()
    assert conn.closed and conn.buffered == 0
    protocol = conn.protocol
    assert isinstance(protocol, Recorder)
    assert protocol.lost == []  # reported from the loop, not from inside close()
    loop.run_once()
    assert protocol.lost == [None]
    peer.close()


def test_close_when_flushed_sends_everything_then_closes(loop: EventLoop, server: Callable[..., Listener]) -> None:
    listener = server(Recorder)
    peer, conn = accept_one(loop, listener)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = pattern(0, 500_000)
    conn.write(payload)
    conn.close_when_flushed()
    assert conn.closing and not conn.closed and not conn.reading
    conn.write(b"too late")
    drive(loop, lambda: peer.eof, peer.read_some)
    assert peer.received == payload
    peer.close()  # the lingering close ends as soon as the peer closes
    protocol = conn.protocol
    assert isinstance(protocol, Recorder)
    assert loop.run_until(lambda: protocol.lost == [None], timeout=5)
    assert not listener.connections


def test_lingering_close_keeps_the_last_reply_from_a_reset(loop: EventLoop, server: Callable[..., Listener]) -> None:
    class Quit(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.conn is not None
            self.conn.write(b"221 bye\r\n")
            self.conn.close_when_flushed(linger=0.2)

    listener = server(Quit, read_size=8)
    peer, conn = accept_one(loop, listener)
    peer.out += b"QUIT\r\n" + b"NOOP\r\n" * 20000  # pipelined input the server will never read
    drive(loop, lambda: conn.closing, peer.send_some)
    drive(loop, lambda: peer.eof, lambda: (peer.send_some(), peer.read_some()))
    assert peer.received == b"221 bye\r\n"
    protocol = conn.protocol
    assert isinstance(protocol, Recorder)
    assert protocol.received == b"QUIT\r\nNO"  # what came after was discarded, never delivered
    # The peer never closes: the linger time ends the connection.
    assert loop.run_until(lambda: conn.closed, timeout=5)
    peer.close()


def test_an_exception_in_the_protocol_closes_the_connection(loop: EventLoop, server: Callable[..., Listener],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise KeyError("bug")

    listener = server(Broken)
    peer, conn = accept_one(loop, listener)
    peer.out += b"x"
    with caplog.at_level(logging.ERROR, logger="meta1.eventloop"):
        drive(loop, lambda: conn.closed, peer.send_some)
    protocol = conn.protocol
    assert isinstance(protocol, Recorder)
    assert loop.run_until(lambda: bool(protocol.lost), timeout=5)
    assert isinstance(protocol.lost[0], KeyError)
    assert any(record.exc_info for record in caplog.records)
    peer.close()


def test_max_connections_hands_extra_sockets_to_on_refused(loop: EventLoop, server: Callable[..., Listener]) -> None:
    refused: list[socket.socket] = []

    def refuse(sock: socket.socket) -> None:
        refused.append(sock)
        sock.send(b"421 busy\r\n")
        sock.close()

    listener = server(Greeter, max_connections=2, on_refused=refuse)
    peers = [accept_one(loop, listener)[0] for _ in range(2)]
    extra = Peer.connect(listener.sock.getsockname())
    assert loop.run_until(lambda: bool(refused), timeout=5)
    drive(loop, lambda: extra.eof, extra.read_some)
    assert extra.received == b"421 busy\r\n"
    assert len(listener.connections) == 2
    # Without on_refused the extra socket is just closed; after one leaves, a new one is served.
    listener.on_refused = None
    second_extra = Peer.connect(listener.sock.getsockname())
    drive(loop, lambda: second_extra.eof, second_extra.read_some)
    assert second_extra.received == b""
    peers[0].close()
    assert loop.run_until(lambda: len(listener.connections) == 1, timeout=5)
    peers.append(accept_one(loop, listener)[0])
    drive(loop, lambda: peers[-1].received == b"220 ready\r\n", peers[-1].read_some)
    for peer in (*peers, extra, second_extra):
        peer.close()


def open_fds() -> int:
    # Sockets that earlier tests dropped without closing are closed by the garbage
    # collector whenever it happens to run; collect first, so only this test's fds count.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_two_thousand_idle_connections_in_one_process(loop: EventLoop) -> None:
    count = 2000
    needed = 2 * count + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fds_before = open_fds()
    lost: list[BaseException | None] = []

    class Session(Greeter):
        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    listener = Listener(loop, listen_tcp("127.0.0.1", 0), Session)
    address = listener.sock.getsockname()
    clients: list[socket.socket] = []
    try:
        while len(clients) < count:  # in batches, so the listen backlog never overflows
            for _ in range(200):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                clients.append(client)
                client.setblocking(False)
                assert client.connect_ex(address) in (0, errno.EINPROGRESS)
            assert loop.run_until(lambda: len(listener.connections) == len(clients), timeout=20)
        for client in clients:
            client.settimeout(5)
            assert client.recv(100) == b"220 ready\r\n"
        assert all(conn.reading and conn.buffered == 0 for conn in listener.connections)

        newcomer = Peer.connect(address)
        newcomer.out += b"still served\r\n"
        drive(loop, lambda: newcomer.received == b"220 ready\r\nstill served\r\n",
              lambda: (newcomer.send_some(), newcomer.read_some()))
        clients.append(newcomer.sock)
    finally:
        for client in clients:
            client.close()
    assert loop.run_until(lambda: not listener.connections and len(lost) == count + 1, timeout=30)
    assert lost == [None] * (count + 1)
    listener.close()
    assert open_fds() == fds_before


def test_listen_unix_removes_a_stale_socket_and_refuses_a_live_one(loop: EventLoop, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "qmgr.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays behind, nobody listens
    os.chmod(path, 0o777)
    sock = listen_unix(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660      # its own mode, not the stale file's
    with pytest.raises(OSError) as excinfo:
        listen_unix(path)
    assert excinfo.value.errno == errno.EADDRINUSE

    listener = Listener(loop, sock, Echo)
    client = connect_unix(path)
    assert not client.getblocking()
    assert loop.run_until(lambda: len(listener.connections) == 1, timeout=5)
    (conn,) = listener.connections
    assert conn.peer == ""
    received = bytearray()

    class Collect(Recorder):
        def data_received(self, data: bytes) -> None:
            received.extend(data)

    mine = Connection(loop, client, Collect())
    mine.write(b"record")
    assert loop.run_until(lambda: received == b"record", timeout=5)
    mine.close()
    assert loop.run_until(lambda: not listener.connections, timeout=5)
    listener.close()

    plain = os.path.join(str(tmp_path), "not-a-socket")
    with open(plain, "w", encoding="ascii"):
        pass
    with pytest.raises(FileExistsError):
        listen_unix(plain)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_listen_tcp_by_address_family(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = listen_tcp(host, 0)
    except OSError as exc:
        pytest.skip(f"cannot bind {host}: {exc}")
    with sock:
        assert sock.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
        assert sock.getsockname()[1] != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not sock.getblocking()


def test_connect_stream_tcp_unix_refused_and_cancelled(tmp_path) -> None:
    """connect_stream: connected sockets for TCP and UNIX, the error for a closed port,
    and no callback after cancel()."""
    from meta1.eventloop import connect_stream
    loop = EventLoop()
    listener = listen_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    unix_listener = listen_unix(str(tmp_path / "sock"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]   # bound, never listening: refused
        results: dict[str, tuple] = {}

        def note(name):
            def done(sock, why):
                results[name] = (sock is not None, why)
                if sock is not None:
                    sock.close()
                if len(results) == 3:
                    loop.stop()
            return done

        connect_stream(loop, "127.0.0.1", port, 5.0, note("tcp"))
        connect_stream(loop, str(tmp_path / "sock"), 0, 5.0, note("unix"))
        connect_stream(loop, "127.0.0.1", closed_port, 5.0, note("refused"))
        pending = connect_stream(loop, "127.0.0.1", port, 5.0, note("cancelled"))
        pending.cancel()
        loop.run()
    loop.close()
    listener.close()
    unix_listener.close()
    assert results == {"tcp": (True, ""), "unix": (True, ""), "refused": (False, "Connection refused")}


def test_a_pause_without_input_costs_no_selector_change() -> None:
    """pause_reading()/resume_reading() with no input in between leave the socket
    registered (no epoll_ctl); input arriving while paused unregisters it and is not read."""
    loop = EventLoop()
    calls: list[str] = []
    selector = loop._selector
    for name in ("register", "unregister", "modify"):
        original = getattr(selector, name)
        setattr(selector, name, lambda *a, _n=name, _o=original, **k: (calls.append(_n), _o(*a, **k))[1])
    ours, theirs = socket.socketpair()
    received: list[bytes] = []

    class Collect(Protocol):
        def data_received(self, data: bytes) -> None:
            received.append(data)

    conn = Connection(loop, ours, Collect())
    assert calls == ["register"]
    conn.pause_reading()
    conn.resume_reading()
    conn.pause_reading()
    assert calls == ["register"]                     # nothing changed in the selector
    theirs.sendall(b"early")
    loop._run_once(0.5)
    assert received == [] and calls == ["register", "unregister"]
    conn.resume_reading()
    loop._run_once(0.5)
    assert received == [b"early"]
    conn.close()
    theirs.close()
    loop._run_once(0)
    loop.close()
