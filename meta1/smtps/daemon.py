"""smtps, the SMTP server daemon: sockets, content files and the link to qmgr.

Responsibilities
    The I/O shell around :class:`meta1.smtps.session.Session`. For each client connection
    it runs one session and carries out its effects: bytes to the client, the content
    file in the CDB (:class:`meta1.queue.cdb.ContentWriter`), and the commit. It owns no
    envelope state: transactions go to qmgr over the record link, and a session's 250
    waits for qmgr's answer (DESIGN.md, the durability rule).

The commit path (spec/receive-path.md)
    1. content streams into the content file as it arrives (the event loop writes it;
       64 KiB records, so a 5 KB message is one write);
    2. at the end of the data the file gets its End record and is closed — no fsync
       here: the transaction goes to qmgr at once (one record, batched with others of
       the same loop iteration);
    3. qmgr makes the content and then the envelope durable in one group commit
       (``fdatasync`` of every content file of the batch, ``fsync`` of their
       directories, the IBDB append and its ``fdatasync``) and answers;
    4. only then does the session answer ``250``.
    Why qmgr syncs the content (D-RCV-1): a Python process that syncs in worker threads
    pays for every syscall with a GIL hand-off (strace under smtp-source showed about
    60 futex calls per message); qmgr syncs a whole batch in one thread while its own
    loop is idle, and in a journaling file system the first sync of a batch commits the
    others' data too.
    A failure before qmgr answered removes the content file and answers ``451 4.3.0``.
    A failure after the record left (qmgr's connection lost, no answer within
    ``IO_timeout``) also answers 451 but keeps the file: qmgr may have committed it, and
    its replay decides (a delivered duplicate in window W1 is allowed, a loss is not;
    an unreferenced file is removed by qmgr's orphan collection).

Other duties
    Ids that keep growing across restarts (``smtps/idstate``, :mod:`meta1.ids`),
    the free-space reserve checked at MAIL, ``max_sessions`` (the next client gets 421),
    per-state timeouts, and SIGTERM: stop listening, answer 421 to idle sessions, let
    sessions in DATA or in a commit finish, exit when all are gone or after
    ``shutdown_timeout``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from pathlib import Path

from meta1.eventloop import (Connection, EventLoop, Listener, Protocol, connect_unix,
                             listen_tcp, listen_unix)
from meta1.ipc.records import Commit, CommitResult, Transaction
from meta1.queue.cdb import ContentWriter, fsync_directories
from meta1.queue.layout import QueueLayout
from meta1.runtime.link import RecordLink
from meta1.runtime.process import local_hostname
from meta1.smtp import R
from meta1.ids import IdGenerator, IdUnavailable
from meta1.smtps.session import (Close, CommitContent, DiscardContent, OpenContent, Send,
                                 Session, Settings, WriteContent)

log = logging.getLogger("meta1.smtps")

RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class QmgrClient:
    """smtps' end of the link to qmgr: commits out, results back, reconnects."""

    def __init__(self, loop: EventLoop, socket_path: Path, instance: int, commit_timeout: float):
        self.loop = loop
        self.socket_path = socket_path
        self.instance = instance
        self.commit_timeout = commit_timeout
        self.link: RecordLink | None = None
        self.pending: dict[str, tuple[object, object]] = {}
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

    def _connect(self) -> None:
        if self._stopped:
            return
        try:
            sock = connect_unix(str(self.socket_path))
        except OSError as error:
            self._retry(f"cannot connect to qmgr at {self.socket_path}: {error.strerror}")
            return
        link = RecordLink(self.loop, role="smtps", peer_role="qmgr", instance=self.instance,
                          on_ready=self._ready, on_record=self._record, on_lost=self._lost)
        self.link = link
        Connection(self.loop, sock, link)

    def _retry(self, why: str) -> None:
        delay = RECONNECT_DELAYS[min(self._attempt, len(RECONNECT_DELAYS) - 1)]
        if self._attempt in (0, len(RECONNECT_DELAYS)):
            log.warning("%s; retrying", why)
        self._attempt += 1
        self.loop.call_later(delay, self._connect)

    def _ready(self, link: RecordLink) -> None:
        self._attempt = 0
        log.info("connected to qmgr (pid %d)", link.peer.pid)

    def commit(self, transaction: Transaction, done) -> bool:
        """Send ``transaction``; ``done(ok, reason, uncertain)`` follows. False: not sent."""
        if not self.ready:
            return False
        timer = self.loop.call_later(self.commit_timeout,
                                     lambda: self._finish(transaction.ta_id, False,
                                                          "no answer from qmgr", True))
        self.pending[transaction.ta_id] = (done, timer)
        self.link.send(Commit(transaction=transaction))
        return True

    def _finish(self, ta_id: str, ok: bool, reason: str, uncertain: bool) -> None:
        entry = self.pending.pop(ta_id, None)
        if entry is None:
            return
        done, timer = entry
        timer.cancel()
        done(ok, reason, uncertain)

    def _record(self, link: RecordLink, record: object) -> None:
        if isinstance(record, CommitResult):
            self._finish(record.ta_id, record.ok, record.reason, False)
        else:
            log.error("unexpected record from qmgr: %s; closing the link", type(record).__name__)
            link.close()

    def _lost(self, link: RecordLink, exc: BaseException | None) -> None:
        if link is self.link:
            self.link = None
        if link.peer is not None:
            log.warning("connection to qmgr lost%s", f": {exc}" if exc else "")
        for ta_id in list(self.pending):
            self._finish(ta_id, False, "connection to qmgr lost", True)
        self._retry("qmgr not reachable")


class SmtpServerConnection(Protocol):
    """One client connection: a session, its content file, its timer."""

    def __init__(self, server: "SmtpServer"):
        self.server = server
        self.conn: Connection | None = None
        self.session: Session | None = None
        self.writer: ContentWriter | None = None
        self.write_error: str | None = None
        self.timer = None

    # -- connection events --------------------------------------------------------------

    def connection_made(self, conn: Connection) -> None:
        self.conn = conn
        address, port = _peer(conn.sock)
        try:
            self.session = Session(self.server.settings, self.server, client_address=address,
                                   client_port=port, trace=self.server.trace,
                                   clock=self.server.loop.time)
        except IdUnavailable as error:
            # No id, no session (every log line needs one): tell the client to come back.
            log.error("connection from [%s]:%d refused: %s", address, port, error)
            conn.write(R.LOCAL_ERROR.format(hostname=self.server.settings.hostname).encode())
            conn.close_when_flushed()
            return
        self.server.sessions.add(self)
        self.apply(self.session.start())

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.apply(self.session.receive(data))

    def eof_received(self) -> None:
        if self.session is not None:
            self.apply(self.session.eof())

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.session is None:
            return      # refused before a session existed
        if exc is not None:
            # MeTA1 2014-01-16: read errors in smtps are logged at NOTICE (B54) — INFO here.
            log.info("%s: read error: %s", self.session.id, exc)
        if self.session.wants_input:
            self.apply(self.session.eof())
        self._cancel_timer()
        if self.session.state.name != "COMMITTING":
            self._discard()
            self.server.sessions.discard(self)

    # -- effects -------------------------------------------------------------------------

    def apply(self, effects) -> None:
        conn = self.conn
        for effect in effects:
            if isinstance(effect, Send):
                conn.write(effect.data)
            elif isinstance(effect, WriteContent):
                self._write(effect.data)
            elif isinstance(effect, OpenContent):
                self._open(effect.ta_id)
            elif isinstance(effect, CommitContent):
                self._commit(effect.transaction)
            elif isinstance(effect, DiscardContent):
                self._discard()
            elif isinstance(effect, Close):
                self._cancel_timer()
                conn.close_when_flushed()
                if self.session.state.name != "COMMITTING":
                    self.server.sessions.discard(self)
        if conn.closing or conn.closed:
            return
        if self.session.wants_input:
            conn.resume_reading()
        else:
            conn.pause_reading()
        self._arm_timer()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        timeout = self.session.idle_timeout
        if timeout is not None:
            self.timer = self.server.loop.call_later(timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self.apply(self.session.timeout())

    # -- the content file ----------------------------------------------------------------

    def _open(self, ta_id: str) -> None:
        self._discard()
        self.write_error = None
        try:
            self.writer = ContentWriter(self.server.layout, ta_id, created=self.server.now_us())
        except OSError as error:
            self._failed_write(ta_id, error)

    def _write(self, data: bytes) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(data)
        except OSError as error:
            self._failed_write(self.writer.path.name, error)
            self.writer.abort()
            self.writer = None

    def _failed_write(self, ta_id: str, error: OSError) -> None:
        # Keep reading the data to its end (the client is still sending it), answer 451
        # then (reliability R2); the partial file is gone already.
        self.write_error = f"content file: {error.strerror or error}"
        log.error("%s: ta=%s %s", self.session.id, ta_id, self.write_error)

    def _discard(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def _commit(self, transaction: Transaction) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            self._commit_done(False, self.write_error or "no content file")
            return
        try:
            writer.finish()
            writer.close()
        except OSError as error:
            writer.abort()
            self._commit_done(False, f"content file: {error.strerror or error}")
            return
        transaction = dataclasses.replace(transaction, content=writer.relpath)

        def answered(ok: bool, reason: str, uncertain: bool) -> None:
            if not ok and not uncertain:
                writer.abort()
            self._commit_done(ok, reason)

        if not self.server.qmgr.commit(transaction, answered):
            writer.abort()
            self._commit_done(False, "qmgr not connected")

    def _commit_done(self, ok: bool, reason: str) -> None:
        self.apply(self.session.commit_result(ok, reason))
        if self.conn.closed or self.session.state.name == "CLOSING":
            self.server.sessions.discard(self)


def _peer(sock: socket.socket) -> tuple[str, int]:
    try:
        peer = sock.getpeername()
    except OSError:
        return "unknown", 0
    if isinstance(peer, tuple):
        address = peer[0]
        if address.startswith("::ffff:") and "." in address:
            address = address[7:]
        return address, peer[1]
    return "unix", 0


class SmtpServer:
    """The smtps process: listeners, sessions, the qmgr link, the sync workers."""

    def __init__(self, config, name: str | None = None, *, loop: EventLoop | None = None,
                 instance: int = 0, listen_sockets: list[socket.socket] | None = None,
                 trace=None):
        self.config = config
        self.node = config.smtps[name]
        self.loop = loop or EventLoop()
        self.layout = QueueLayout(config.queue_directory, config.cdb_base_directory)
        self.layout.ensure()
        self.settings = Settings.from_config(self.node, local_hostname(config.hostname))
        self.instance = instance
        self.trace = trace
        self.min_free_space = self.node.min_free_space
        self.sessions: set[SmtpServerConnection] = set()
        self.ids = IdGenerator(self._id_start(), instance, reserve=self._reserve_ids)
        self.qmgr = QmgrClient(self.loop, self.layout.smtps_socket, instance,
                               commit_timeout=float(self.node.io_timeout))
        self.listen_sockets = listen_sockets if listen_sockets is not None else self._bind()
        self.listeners: list[Listener] = []
        self.stopping = False

    # -- Services for the sessions ---------------------------------------------------------

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def new_id(self) -> str:
        return self.ids.new_id()

    def storage_ok(self) -> bool:
        try:
            st = os.statvfs(self.layout.root)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= self.min_free_space

    # -- ids that survive restarts -----------------------------------------------------------

    def _id_start(self) -> int:
        stored = 0
        try:
            stored = int(self.layout.id_state.read_text().strip(), 16)
        except FileNotFoundError:
            pass
        except ValueError:
            log.warning("%s is damaged; ids continue from the clock", self.layout.id_state)
        return max(stored, self.now_us())

    def _reserve_ids(self, ceiling: int) -> None:
        path = self.layout.id_state
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, f"{ceiling:016X}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_directories([path.parent])

    # -- sockets -------------------------------------------------------------------------------

    def _bind(self) -> list[socket.socket]:
        listen = self.node.listen_socket
        if listen.type == "unix":
            return [listen_unix(str(listen.path))]
        address = listen.address if isinstance(listen.address, str) else "0.0.0.0"
        return [listen_tcp(address, listen.port)]

    def listening_on(self) -> list[str]:
        names = []
        for sock in self.listen_sockets:
            name = sock.getsockname()
            names.append(f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name))
        return names

    def _refuse(self, sock: socket.socket) -> None:
        log.warning("max_sessions (%d) reached: refusing a connection", self.settings_max_sessions)
        try:
            sock.send(R.TOO_MANY_SESSIONS.format(hostname=self.settings.hostname).encode())
        except OSError:
            pass
        sock.close()

    @property
    def settings_max_sessions(self) -> int:
        return self.node.max_sessions

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        self.qmgr.start()
        for sock in self.listen_sockets:
            self.listeners.append(Listener(self.loop, sock, lambda: SmtpServerConnection(self),
                                           max_connections=self.node.max_sessions,
                                           on_refused=self._refuse))
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_signal_handler(signal.SIGINT, self.shutdown)
        log.info("ready: listening on %s", ", ".join(self.listening_on()))

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: %d sessions open", len(self.sessions))
        for listener in self.listeners:
            listener.close()
        for connection in list(self.sessions):
            connection.apply(connection.session.shutdown())
        timeout = float(self.config.mcp.shutdown_timeout) if self.config.mcp else 60.0
        self.loop.call_later(timeout, self.loop.stop)
        self._stop_when_idle()

    def _stop_when_idle(self) -> None:
        if not self.sessions:
            self.loop.stop()
        else:
            self.loop.call_later(0.05, self._stop_when_idle)

    def run(self) -> None:
        self.start()
        try:
            self.loop.run()
        finally:
            self.qmgr.stop()
            log.info("stopped")


def serve(config, name: str | None = None, instance: int = 0) -> int:
    server = SmtpServer(config, name, instance=instance)
    server.run()
    return 0
