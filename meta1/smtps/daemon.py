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

from meta1.eventloop import (Connection, EventLoop, Listener, Protocol, WorkerPool,
                             listen_tcp, listen_unix)
from meta1.ipc.records import Commit, CommitResult, PolicyVerdict, Transaction
from meta1.queue.cdb import ContentWriter
from meta1.queue.idstate import IdState
from meta1.queue.layout import QueueLayout
from meta1.runtime.link import LinkClient, RecordLink
from meta1.runtime.fdpass import receive_listen_sockets
from meta1.runtime.process import (announce_ready, exit_with_parent, forget_supervisor, local_hostname, run_loop,
                                  supervised, tell_supervisor, trace_sink)
from meta1.smtp import R
from meta1.ids import IdGenerator, IdUnavailable
from meta1.policy.service import asks_smar, qmgr_admits
from meta1.smtps.policy import PolicyClient
from meta1.smtps.session import (Close, CommitContent, DiscardContent, OpenContent, Send,
                                 Session, Settings, WriteContent)

log = logging.getLogger("meta1.smtps")

#: Content held in memory while its file is being created; past it reading pauses.
PENDING_LIMIT = 256 * 1024


class QmgrClient:
    """smtps' end of the link to qmgr: commits out, results back; reconnects (LinkClient)."""

    def __init__(self, loop: EventLoop, socket_path: Path, instance: int, commit_timeout: float):
        self.loop = loop
        self.commit_timeout = commit_timeout
        self.pending: dict[str, tuple[object, object]] = {}
        self.on_verdict = lambda record: None       # the PolicyClient's, set by the server
        self.on_link_lost = lambda: None
        self.client = LinkClient(loop, socket_path, role="smtps", peer_role="qmgr", instance=instance,
                                 on_record=self._record, on_lost=self._lost)

    @property
    def ready(self) -> bool:
        return self.client.ready

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()

    def commit(self, transaction: Transaction, done) -> bool:
        """Send ``transaction``; ``done(ok, reason, uncertain)`` follows. False: not sent."""
        if not self.ready:
            return False
        timer = self.loop.call_later(self.commit_timeout,
                                     lambda: self._finish(transaction.ta_id, False,
                                                          "no answer from qmgr", True))
        self.pending[transaction.ta_id] = (done, timer)
        self.client.send(Commit(transaction=transaction))
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
        elif isinstance(record, PolicyVerdict):
            self.on_verdict(record)
        else:
            log.error("unexpected record from qmgr: %s; closing the link", type(record).__name__)
            link.close()

    def _lost(self, link: RecordLink, exc: BaseException | None) -> None:
        for ta_id in list(self.pending):
            self._finish(ta_id, False, "connection to qmgr lost", True)
        self.on_link_lost()


class SmtpServerConnection(Protocol):
    """One client connection: a session, its content file, its timer."""

    def __init__(self, server: "SmtpServer"):
        self.server = server
        self.conn: Connection | None = None
        self.session: Session | None = None
        self.writer: ContentWriter | None = None
        self.write_error: str | None = None
        self.opening: str | None = None
        self.pending = bytearray()
        self.waiting_commit: Transaction | None = None
        self._open_token = None
        self.timer = None
        self.deadline: float | None = None

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
        self.server.by_session[self.session.id] = self
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
            self.server.session_ended(self)

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
                if effect.linger:
                    conn.close_when_flushed()
                else:
                    conn.close_when_flushed(linger=0)
                if self.session.state.name != "COMMITTING":
                    self.server.session_ended(self)
        if conn.closing or conn.closed:
            return
        self._update_reading()
        self._arm_timer()

    def _arm_timer(self) -> None:
        # One timer per connection, moved lazily: activity only pushes the deadline, and
        # a timer that fires early re-arms itself for the rest (no heap push per command).
        timeout = self.session.idle_timeout
        if timeout is None:
            self.deadline = None
            return
        loop = self.server.loop
        self.deadline = loop.time() + timeout
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        if self.deadline is None or self.session is None:
            return
        if self.server.loop.time() < self.deadline:
            self.timer = self.server.loop.call_at(self.deadline, self._timer_fired)
            return
        self.deadline = None
        self.apply(self.session.timeout())

    # -- the content file ----------------------------------------------------------------
    #
    # Creating a file waits on the file system's journal, which qmgr's group commits keep
    # busy (py-spy: about a quarter of the loop's time under smtp-source went to open()).
    # So the file is created by one opener thread, asked for at MAIL (OpenContent), and
    # is normally ready when the content comes two round trips later; content that
    # arrives before it is held in memory (bounded: reading pauses past PENDING_LIMIT).
    # Removing a file (a transaction that ends without a commit) is the opener's job too.

    def _open(self, ta_id: str) -> None:
        self._discard()
        self.write_error = None
        token = self._open_token = object()
        self.opening = ta_id
        created = self.server.now_us()
        self.server.opener.submit(
            lambda: ContentWriter(self.server.layout, ta_id, created=created),
            lambda writer, exc: self._opened(token, ta_id, writer, exc))

    def _opened(self, token, ta_id: str, writer, exc) -> None:
        if token is not self._open_token:
            if writer is not None:       # the transaction ended meanwhile
                self.server.remove_content(writer)
            return
        self.opening = None
        if exc is not None:
            self._failed_write(ta_id, exc)
        else:
            self.writer = writer
        pending, self.pending = bytes(self.pending), bytearray()
        if pending:
            self._write(pending)
        if self.waiting_commit is not None:
            transaction, self.waiting_commit = self.waiting_commit, None
            self._commit(transaction)
        elif self.conn is not None and not (self.conn.closed or self.conn.closing):
            self._update_reading()

    def _update_reading(self) -> None:
        if self.session.wants_input and len(self.pending) < PENDING_LIMIT:
            self.conn.resume_reading()
        else:
            self.conn.pause_reading()

    def _write(self, data: bytes) -> None:
        if self.opening is not None:
            self.pending += data
            return
        if self.writer is None:
            return
        try:
            self.writer.write(data)
        except OSError as error:
            self._failed_write(self.writer.path.name, error)
            self.server.remove_content(self.writer)
            self.writer = None

    def _failed_write(self, ta_id: str, error: BaseException) -> None:
        # Keep reading the data to its end (the client is still sending it), answer 451
        # then (reliability R2); the partial file is removed.
        self.write_error = f"content file: {getattr(error, 'strerror', None) or error}"
        log.error("%s: ta=%s %s", self.session.id, ta_id, self.write_error)

    def _discard(self) -> None:
        self._open_token = None
        self.opening = None
        self.pending = bytearray()
        self.waiting_commit = None
        if self.writer is not None:
            self.server.remove_content(self.writer)
            self.writer = None

    def _commit(self, transaction: Transaction) -> None:
        if self.opening is not None:
            self.waiting_commit = transaction      # the file is still being created
            return
        writer, self.writer = self.writer, None
        if writer is None:
            self._commit_done(False, self.write_error or "no content file")
            return
        try:
            writer.finish()
            writer.close()
        except OSError as error:
            self.server.remove_content(writer)
            self._commit_done(False, f"content file: {error.strerror or error}")
            return
        transaction = dataclasses.replace(transaction, content=writer.relpath)

        def answered(ok: bool, reason: str, uncertain: bool) -> None:
            if not ok and not uncertain:
                self.server.remove_content(writer)
            self._commit_done(ok, reason)

        if not self.server.qmgr.commit(transaction, answered):
            self.server.remove_content(writer)
            self._commit_done(False, "qmgr not connected")

    def _commit_done(self, ok: bool, reason: str) -> None:
        self.apply(self.session.commit_result(ok, reason))
        if self.conn.closed or self.session.state.name == "CLOSING":
            self.server.session_ended(self)


def bind(node) -> list[socket.socket]:
    """The listen socket of an smtps section: from mcp (start_action = pass, when mcp
    started this smtps: spec/mcp.md), else bound here."""
    if supervised() and node.start_action == "pass":
        return receive_listen_sockets(str(node.pass_fd_socket), lambda: tell_supervisor("want-fds"))
    listen = node.listen_socket
    if listen.type == "unix":
        return [listen_unix(str(listen.path))]
    address = listen.address if isinstance(listen.address, str) else "0.0.0.0"
    return [listen_tcp(address, listen.port)]


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
        self.name = name                 # the smtps section (None: the unnamed one)
        self.node = config.smtps[name]
        self.loop = loop or EventLoop()
        self.layout = QueueLayout(config.queue_directory, config.cdb_base_directory)
        self.layout.ensure()
        self.settings = Settings.from_config(self.node, local_hostname(config.hostname))
        self.instance = instance
        self.trace = trace
        self.min_free_space = self.node.min_free_space
        self.sessions: set[SmtpServerConnection] = set()
        id_state = IdState(self.id_state)
        self.ids = IdGenerator(id_state.start(self.now_us()), instance, reserve=id_state.reserve)
        self.opener = WorkerPool(self.loop, threads=1, name="smtps-opener")
        self.qmgr = QmgrClient(self.loop, self.layout.smtps_socket, instance,
                               commit_timeout=float(self.node.io_timeout))
        self.policy_client = PolicyClient(self, asks_smar(config), qmgr_admits(config))
        self.qmgr.on_verdict = self.policy_client.verdict
        self.qmgr.on_link_lost = self.policy_client.link_lost
        self.by_session: dict[str, SmtpServerConnection] = {}
        self.listen_sockets = listen_sockets if listen_sockets is not None else bind(self.node)
        self.listeners: list[Listener] = []
        self.stopping = False
        self.on_shutdown = None

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

    def policy(self, session: Session, check):
        """Services.policy: the verdict, from :class:`PolicyClient`."""
        return self.policy_client.check(session, check)

    def remove_content(self, writer: ContentWriter) -> None:
        """Remove a content file off the event loop (unlink waits on the journal too)."""
        self.opener.submit(writer.abort, lambda _r, _exc: None)

    # -- ids that survive restarts -----------------------------------------------------------

    @property
    def id_state(self) -> Path:
        """This process index's id reservation: ``smtps/idstate`` for index 0, else
        ``smtps/idstate.NN`` (each index counts on its own; the index keeps ids apart)."""
        path = self.layout.id_state
        return path if self.instance == 0 else path.with_name(f"{path.name}.{self.instance:02X}")

    # -- sockets -------------------------------------------------------------------------------

    def listening_on(self) -> list[str]:
        names = []
        for sock in self.listen_sockets:
            name = sock.getsockname()
            names.append(f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name))
        return names

    def _refuse(self, sock: socket.socket) -> None:
        log.warning("max_sessions (%d) reached: refusing a connection", self.node.max_sessions)
        try:
            sock.send(R.TOO_MANY_SESSIONS.format(hostname=self.settings.hostname).encode())
        except OSError:
            pass
        sock.close()

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        self.qmgr.start()
        for sock in self.listen_sockets:
            self.listeners.append(Listener(self.loop, sock, lambda: SmtpServerConnection(self),
                                           max_connections=self.node.max_sessions,
                                           on_refused=self._refuse))
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_signal_handler(signal.SIGINT, self.shutdown)
        announce_ready(log, "listening on %s", ", ".join(self.listening_on()))

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: %d sessions open", len(self.sessions))
        if self.on_shutdown is not None:
            self.on_shutdown()
        for listener in self.listeners:
            listener.close()
        for connection in list(self.sessions):
            connection.apply(connection.session.shutdown())
        timeout = float(self.config.mcp.shutdown_timeout) if self.config.mcp else 60.0
        self.loop.call_later(timeout, self.loop.stop)
        self._stop_when_idle()

    def session_ended(self, connection: "SmtpServerConnection") -> None:
        self.sessions.discard(connection)
        if connection.session is not None and self.by_session.pop(connection.session.id, None) is not None:
            self.policy_client.session_ended(connection.session)
        self._stop_when_idle()

    def connection_of(self, session_id: str) -> "SmtpServerConnection | None":
        """The connection of a session still going on (a policy verdict's addressee)."""
        return self.by_session.get(session_id)

    def _stop_when_idle(self) -> None:
        # Called at shutdown and whenever a session ends: the last one stops the loop.
        if self.stopping and not self.sessions:
            self.loop.stop()

    def run(self) -> None:
        self.start()
        run_loop(self.loop, self._close, log)

    def _close(self) -> None:
        self.qmgr.stop()
        self.opener.shutdown(wait=True)


def serve(config, name: str | None = None, instance: int = 0, *,
          relog=None) -> int:
    """Run the smtps section ``name``: ``processes`` processes sharing its listen socket.

    The socket is bound once, then the process forks one child per extra process, each
    with the next process index (ids stay unique: the index is part of every id). The
    parent serves too, and passes SIGTERM on to its children and waits for them. The
    children are created before any thread or event loop exists (``fork`` copies only
    the calling thread). Supervising them — restarting one that dies — is mcp's work.
    ``relog(index)`` sets up logging again in a child (its pid is in every line).
    """
    count = config.smtps[name].processes
    sockets = bind(config.smtps[name])
    children: list[int] = []
    index = instance
    parent = os.getpid()
    for offset in range(1, count):
        pid = os.fork()
        if pid == 0:
            children = []
            index = instance + offset
            exit_with_parent(parent)
            forget_supervisor()
            if relog is not None:
                relog(index)
            break
        children.append(pid)
    server = SmtpServer(config, name, instance=index, listen_sockets=sockets, trace=trace_sink(config))
    if children:
        def stop_children() -> None:
            for child in children:
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        server.on_shutdown = stop_children
    try:
        server.run()
    finally:
        for child in children:
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
    if not children and index != instance:
        os._exit(0)      # a child: no atexit handlers of the parent's interpreter state
    return 0
