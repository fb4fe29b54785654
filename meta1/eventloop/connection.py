"""Buffered non-blocking stream connections, listeners, and socket helpers.

Responsibilities
    :class:`Connection` joins one connected stream socket (TCP or UNIX) to one
    :class:`Protocol`: it reads whatever arrives and hands it to ``data_received``, takes
    the protocol's ``write`` calls, buffers what the kernel does not accept at once and
    sends it as the socket becomes writable, and reports the end exactly once through
    ``connection_lost``. :class:`Listener` accepts connections and makes one Connection
    with a fresh protocol for each. ``listen_tcp``, ``listen_unix`` and ``connect_unix``
    create the sockets the daemons need.

Data it owns
    The output buffer: a ``deque`` of chunks. Small writes are appended to a ``bytearray``
    tail chunk (up to :data:`CHUNK_SIZE`), so a session that answers a thousand pipelined
    commands holds a few chunks, not a thousand objects; large writes are kept as a
    ``memoryview`` of the caller's ``bytes`` with no copy. Sent bytes are consumed from
    the front (``del bytearray[:n]`` is O(1) in CPython, a memoryview is sliced), so
    nothing is copied twice and nothing is quadratic. Up to :data:`SENDMSG_CHUNKS` chunks
    leave in one ``sendmsg`` call.

Backpressure (reliability T42)
    Reading happens only when neither pause applies: the protocol's explicit
    ``pause_reading`` (e.g. while a commit is pending), and the output pause, which begins
    when ``buffered`` exceeds ``output_limit`` and ends when it drains to
    ``output_limit // 2`` or less. A client that pipelines commands and never reads the
    replies therefore stops being read once its replies fill the buffer: the kernel's
    receive window closes and our memory stays at ``output_limit`` plus what the replies
    to one read (``read_size`` bytes of input) add. ``output_drained`` tells a producer
    when it may write again.

Ending a connection
    * ``close()``: at once; buffered output is discarded.
    * ``close_when_flushed()``: stop reading, send what is buffered, then a lingering
      close: ``shutdown(SHUT_WR)`` and discard input until the peer closes or ``linger``
      seconds pass. Closing a TCP socket with unread input makes the kernel send a RST,
      which can destroy our last reply (a ``421``) before the peer read it; a pipelining
      client almost always has unread input on its way. Lingering avoids that.
    * Peer errors (ECONNRESET, EPIPE, ...) on read or write end the connection with
      ``connection_lost(exc)``; ``write`` never raises because the peer vanished.
    * An exception escaping a protocol callback is logged and ends the connection with
      ``connection_lost(exc)``: the protocol's state is unknown after it.
    * End of input calls ``eof_received``; the default closes the connection.
    ``connection_lost`` is always called through ``call_soon``, never from inside a
    ``write`` or ``close`` the protocol itself called.

Listener
    Accepts up to :data:`ACCEPT_BATCH` connections per readiness event (fair to the other
    descriptors, cheap under a connection burst), makes them non-blocking, sets
    ``TCP_NODELAY`` on TCP (SMTP replies are small and latency-bound). Over
    ``max_connections`` the socket goes to ``on_refused`` (which may write a ``421`` and
    close it) or is closed. An accept error other than the peer giving up — typically
    running out of descriptors (EMFILE/ENFILE) or memory (ENOBUFS/ENOMEM) — pauses accepting for :data:`ACCEPT_RETRY_DELAY` seconds instead of spinning on a
    listening socket that stays readable.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from meta1.eventloop.loop import EventLoop, Timer

logger = logging.getLogger("meta1.eventloop")

#: A write shorter than this is copied into the buffer's bytearray tail instead of being kept as its own chunk.
COALESCE_LIMIT = 4096
#: The largest bytearray tail chunk small writes are collected into.
CHUNK_SIZE = 64 * 1024
#: How many buffered chunks one ``sendmsg`` call sends at most (well below IOV_MAX).
SENDMSG_CHUNKS = 64
#: Connections accepted per readiness event of a listening socket.
ACCEPT_BATCH = 64
#: Seconds a listener stops accepting after running out of descriptors or memory.
ACCEPT_RETRY_DELAY = 1.0
#: Seconds ``close_when_flushed`` waits for the peer to close after our output is sent.
DEFAULT_LINGER = 2.0


class Protocol:
    """What a connection calls; every method is a no-op except ``eof_received``.

    ``connection_made`` stores the connection as ``self.conn``; the default
    ``eof_received`` closes it (a subclass that overrides ``connection_made`` without
    calling ``super()`` still gets that default: the connection then closes itself).
    """

    conn: Connection | None = None

    def connection_made(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        """The peer closed its sending side. Default: close the connection."""
        if self.conn is not None:
            self.conn.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def output_drained(self) -> None:
        pass


class Connection:
    """One connected, non-blocking stream socket driven by the loop; see the module documentation."""

    def __init__(self, loop: EventLoop, sock: socket.socket, protocol: Protocol, *,
                 output_limit: int = 256 * 1024, read_size: int = 64 * 1024,
                 peer: tuple[Any, ...] | str | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.output_limit = output_limit
        self.read_size = read_size
        self._low_water = output_limit // 2
        if peer is None:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = ""
        self.peer: tuple[Any, ...] | str = peer
        self.closing = False
        self.closed = False
        self._buffer: deque[bytearray | memoryview] = deque()
        self._buffered = 0
        self._output_full = False     # above output_limit: reading is paused
        self._output_high = False     # above the low-water mark: output_drained is owed
        self._paused_by_protocol = False
        self._eof = False
        self._reading = False         # wanted: input is read when it comes
        self._watching = False        # registered with the loop (lags _reading, see below)
        self._linger = DEFAULT_LINGER
        self._linger_timer: Timer | None = None
        self._lingering = False
        self._close_hooks: list[Callable[[Connection], object]] = []
        sock.setblocking(False)
        self._update_reading()
        self._call_protocol(protocol.connection_made, self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "closing" if self.closing else "open"
        return f"<Connection fd={self.sock.fileno()} peer={self.peer!r} {state} buffered={self._buffered}>"

    # -- state seen by protocols and tests ----------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes written by the protocol and not yet accepted by the kernel."""
        return self._buffered

    @property
    def output_full(self) -> bool:
        """True while reading is paused because ``buffered`` exceeded ``output_limit``."""
        return self._output_full

    @property
    def reading(self) -> bool:
        """True while the connection waits for input (no pause applies, not closing)."""
        return self._reading

    # -- reading --------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading until :meth:`resume_reading` (independent of the output pause)."""
        self._paused_by_protocol = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._paused_by_protocol = False
        self._update_reading()

    def _update_reading(self) -> None:
        # Pausing is lazy: the socket stays registered and is only removed from the
        # selector if it becomes readable while paused. The common pause — a session
        # waiting for its commit while the client waits for the reply — then costs no
        # epoll_ctl() at all, instead of an unregister and a register per message.
        if self.closed:
            want = False
        elif self._lingering:
            want = True
        else:
            want = not (self.closing or self._eof or self._paused_by_protocol or self._output_full)
        self._reading = want
        if want and not self._watching:
            self._watching = True
            self.loop.add_reader(self.sock, self._on_readable)
        elif self.closed and self._watching:
            self._watching = False
            self.loop.remove_reader(self.sock)

    def _on_readable(self) -> None:
        if not self._reading:   # paused since it was registered: now stop watching
            self._watching = False
            self.loop.remove_reader(self.sock)
            return
        try:
            data = self.sock.recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._teardown(None if self._lingering else exc)
            return
        if self._lingering:
            if not data:
                self._teardown(None)
            return  # input after our last word is discarded
        if data:
            self._call_protocol(self.protocol.data_received, data)
            return
        self._eof = True
        self._update_reading()
        if type(self.protocol).eof_received is Protocol.eof_received:
            self.close()
        else:
            self._call_protocol(self.protocol.eof_received)

    # -- writing --------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``: at once if nothing is buffered, else after what is. Ignored once closing."""
        if self.closing or not data:
            return
        if not self._buffer:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._teardown(exc)
                return
            if sent == len(data):
                return
            self.loop.add_writer(self.sock, self._on_writable)
            data = memoryview(data)[sent:]
        self._append(data)
        if self._buffered > self._low_water:
            self._output_high = True
            if self._buffered > self.output_limit and not self._output_full:
                self._output_full = True
                self._update_reading()

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        self._buffered += size
        buffer = self._buffer
        if size < COALESCE_LIMIT:
            if buffer and isinstance(buffer[-1], bytearray) and len(buffer[-1]) + size <= CHUNK_SIZE:
                buffer[-1] += data
            else:
                buffer.append(bytearray(data))
        elif isinstance(data, bytes):
            buffer.append(memoryview(data))
        elif isinstance(data, memoryview) and isinstance(data.obj, bytes):
            buffer.append(data.cast("B"))
        else:
            buffer.append(memoryview(bytes(data)))  # the caller may reuse a mutable buffer

    def _on_writable(self) -> None:
        buffer = self._buffer
        try:
            if len(buffer) == 1:
                sent = self.sock.send(buffer[0])
            else:
                sent = self.sock.sendmsg(list(islice(buffer, SENDMSG_CHUNKS)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._teardown(exc)
            return
        self._consume(sent)
        if not buffer:
            self.loop.remove_writer(self.sock)
            if self.closing:
                self._flushed()
                return
        if self._buffered <= self._low_water:
            if self._output_full:
                self._output_full = False
                self._update_reading()
            if self._output_high:
                self._output_high = False
                if not self.closing:
                    self._call_protocol(self.protocol.output_drained)

    def _consume(self, sent: int) -> None:
        self._buffered -= sent
        buffer = self._buffer
        while sent:
            head = buffer[0]
            size = len(head)
            if sent >= size:
                buffer.popleft()
                sent -= size
            elif isinstance(head, bytearray):
                del head[:sent]
                return
            else:
                buffer[0] = head[sent:]
                return

    # -- ending ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close now, discarding buffered output; ``connection_lost(None)`` follows."""
        self._teardown(None)

    def close_when_flushed(self, linger: float = DEFAULT_LINGER) -> None:
        """Stop reading, send what is buffered, then close (lingering up to ``linger`` seconds)."""
        if self.closing:
            return
        self.closing = True
        self._linger = linger
        self._update_reading()
        if not self._buffer:
            self._flushed()

    def _flushed(self) -> None:
        if self._eof or self._linger <= 0:
            self._teardown(None)
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._teardown(None)
            return
        self._lingering = True
        self._linger_timer = self.loop.call_later(self._linger, self.close)
        self._update_reading()

    def _teardown(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closing = self.closed = True
        self._lingering = False
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._update_reading()
        if self._buffer:
            self.loop.remove_writer(self.sock)
            self._buffer.clear()
        self._buffered = 0
        try:
            self.sock.close()
        except OSError:
            pass
        for hook in self._close_hooks:
            hook(self)
        if exc is not None:
            logger.debug("%r lost: %s", self, exc)
        if not self.loop.closed:
            self.loop.call_soon(lambda: self.protocol.connection_lost(exc))

    def _call_protocol(self, method: Callable[..., object], *args: Any) -> None:
        try:
            method(*args)
        except Exception as exc:
            logger.exception("%r: protocol %s raised; closing", self, method.__qualname__)
            self._teardown(exc)


class Listener:
    """Accepts connections on a listening socket, one :class:`Connection` and protocol each."""

    def __init__(self, loop: EventLoop, sock: socket.socket, protocol_factory: Callable[[], Protocol], *,
                 max_connections: int | None = None,
                 on_refused: Callable[[socket.socket], None] | None = None,
                 **connection_kwargs: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.max_connections = max_connections
        self.on_refused = on_refused
        self.connection_kwargs = connection_kwargs
        self.connections: set[Connection] = set()
        self.closed = False
        self._retry_timer: Timer | None = None
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        sock.setblocking(False)
        loop.add_reader(sock, self._on_acceptable)

    def close(self) -> None:
        """Stop accepting and close the listening socket; open connections are left alone."""
        if self.closed:
            return
        self.closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self.loop.remove_reader(self.sock)
        self.sock.close()

    def _on_acceptable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while queued; take the next one
            except OSError as exc:
                # Out of descriptors or memory (or anything unexpected): the socket stays
                # readable, so waiting for the next event would spin. Pause instead.
                logger.warning("accept on %s: %s; not accepting for %.1f s",
                               self.sock.getsockname(), exc, ACCEPT_RETRY_DELAY)
                self.loop.remove_reader(self.sock)
                self._retry_timer = self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)
                return
            self._accepted(client, address)

    def _resume_accepting(self) -> None:
        self._retry_timer = None
        if not self.closed:
            self.loop.add_reader(self.sock, self._on_acceptable)

    def _accepted(self, client: socket.socket, address: Any) -> None:
        try:
            client.setblocking(False)
            if self._tcp:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.max_connections is not None and len(self.connections) >= self.max_connections:
                if self.on_refused is None:
                    client.close()
                else:
                    self.on_refused(client)
                return
            conn = Connection(self.loop, client, self.protocol_factory(), peer=address, **self.connection_kwargs)
        except Exception:
            logger.exception("setting up a connection from %r failed", address)
            client.close()
            return
        if not conn.closed:
            self.connections.add(conn)
            conn._close_hooks.append(self.connections.discard)


def listen_tcp(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A non-blocking listening TCP socket on ``host`` (an IPv4 or IPv6 literal) and ``port``.

    ``SO_REUSEADDR`` lets a restarted daemon bind while old connections sit in TIME_WAIT.
    An IPv6 socket is IPv6-only, so ``::`` and ``0.0.0.0`` can be listened on side by side
    as two configured addresses. ``port`` 0 picks a free port (``getsockname()`` tells it).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 else socket.AF_INET
    address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0,
                                 socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0][4]
    options = [(socket.SOL_SOCKET, socket.SO_REUSEADDR)]
    if family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return _listening(family, address, backlog, options)


def listen_unix(path: str, backlog: int = 128, mode: int = 0o660) -> socket.socket:
    """A non-blocking listening UNIX-domain socket at ``path``, its file mode ``mode``.

    A socket file left behind by a dead process is removed first; one somebody still
    listens on is not (``EADDRINUSE``), and neither is a file that is not a socket.
    Connecting needs write permission on the socket file (Linux unix(7)): ``mode`` 0660
    lets the socket directory's group in — how the daemons' sockets are shared when mcp
    runs them as different users (spec/mcp.md, "Who may do what") — 0600 only the owner.
    """
    try:
        existing = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
        if _unix_socket_alive(path):
            raise OSError(errno.EADDRINUSE, "a process listens on it", path)
        os.unlink(path)
    sock = _listening(socket.AF_UNIX, path, backlog)
    try:
        os.chmod(path, mode)
    except BaseException:
        sock.close()
        raise
    return sock


def _listening(family: socket.AddressFamily, address: Any, backlog: int,
               options: list[tuple[int, int]] | None = None) -> socket.socket:
    """A bound, listening, non-blocking stream socket with the boolean ``options`` set."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for level, option in options or ():
            sock.setsockopt(level, option, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket_alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except TimeoutError:
        return True  # a listener with a full backlog
    except OSError:
        return False  # ECONNREFUSED: nobody listens
    finally:
        probe.close()
    return True


def connect_unix(path: str) -> socket.socket:
    """A UNIX-domain stream socket connected to ``path`` (blocking connect), then non-blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class PendingConnect:
    """A non-blocking connect in progress (:func:`connect_stream`); ``cancel()`` ends it."""

    def __init__(self, loop: EventLoop, sock: socket.socket, timeout: float,
                 callback: Callable[[socket.socket | None, str], None]):
        self.loop = loop
        self.sock: socket.socket | None = sock
        self.callback = callback
        self.timer = loop.call_later(timeout, lambda: self._finish(False, "connect timed out"))
        loop.add_writer(sock, self._writable)

    def _writable(self) -> None:
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(error == 0, os.strerror(error) if error else "")

    def _finish(self, ok: bool, why: str) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self.timer.cancel()
        self.loop.remove_writer(sock)
        if not ok:
            sock.close()
        self.callback(sock if ok else None, why)

    def cancel(self) -> None:
        """Stop connecting; the callback is not called."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self.timer.cancel()
            self.loop.remove_writer(sock)
            sock.close()


def connect_stream(loop: EventLoop, address: str, port: int, timeout: float,
                   callback: Callable[[socket.socket | None, str], None]) -> PendingConnect | None:
    """Connect to ``address``:``port`` over TCP (IPv4 or IPv6 address, no name), or to the
    UNIX socket ``address`` when it starts with ``/``, without blocking.

    ``callback(sock, "")`` follows with the connected non-blocking socket, or
    ``callback(None, why)`` — never from inside this call. Returns the pending connect
    (for ``cancel()``), or None when it failed at once (the callback is still called,
    through ``call_soon``).
    """
    unix = address.startswith("/")
    family = socket.AF_UNIX if unix else (socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if not unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(address if unix else (address, port))
    except OSError as exc:
        error = exc.errno or 0
    if error in (0, errno.EINPROGRESS, errno.EAGAIN):
        return PendingConnect(loop, sock, timeout, callback)
    sock.close()
    why = os.strerror(error)
    loop.call_soon(lambda: callback(None, why))
    return None
