"""lmtpd, meta1's local delivery agent: LMTP on a UNIX socket, mail into Maildirs.

Responsibilities
    The I/O shell around :class:`meta1.lmtpd.session.Session` and
    :class:`meta1.lmtpd.maildir.MaildirWriter`. It listens on the ``lmtpd`` section's
    ``socket`` (relative to ``queue_directory``), runs one session per connection,
    carries out its effects — bytes to the client, and for each finished message the
    Maildir writes — and feeds the outcomes back, which the session turns into one reply
    per recipient. It logs one line per recipient and delivery: the recipient and the
    file in its Maildir's ``new/``, or why the message is not there.

    MeTA1 itself ships no delivery agent and hands local mail to an external one over
    LMTP (smtpc's ``LMTP_socket``); lmtpd is that agent for installations that want mail
    in Maildirs and nothing more (spec/lmtpd.md).

Strategies
    * The Maildir writes block on ``fsync``: they run in a :class:`WorkerPool` of
      :data:`WORKER_THREADS` threads, never on the event loop, so one slow disk does not
      stop other sessions from being read and answered. A session waits for its own
      writes (it reads nothing meanwhile; its pipelined commands stay buffered).
    * Timeouts: ``IO_timeout``-like idle limit of :data:`IO_TIMEOUT` seconds per session
      (RFC 5321 §4.5.3.2's server timeout); none while the writes run.
    * SIGTERM/SIGINT: stop listening (the socket file is removed), answer ``421`` to idle
      sessions, let sessions in DATA or waiting for their writes finish and answer, exit
      when all are gone or after mcp's ``shutdown_timeout``. Writes already handed to a
      worker are completed before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from meta1.eventloop import Connection, EventLoop, Listener, Protocol, WorkerPool, listen_unix
from meta1.lmtpd.maildir import MaildirWriter
from meta1.lmtpd.mailbox import DeliveryRequest, Outcome
from meta1.lmtpd.session import Close, Deliver, Send, Session, Settings
from meta1.lmtpd.states import State
from meta1.queue.layout import DIRECTORY_MODE
from meta1.runtime.process import announce_ready, local_hostname, run_loop, trace_sink
from meta1.smtp.text import printable

log = logging.getLogger("meta1.lmtpd")

#: Threads doing Maildir writes: deliveries of different sessions sync in parallel.
WORKER_THREADS = 4
#: Seconds a session may stay silent outside a delivery (RFC 5321 §4.5.3.2: >= 5 minutes).
IO_TIMEOUT = 300.0


class LmtpConnection(Protocol):
    """One client connection: its session and its idle timer."""

    def __init__(self, server: "LmtpServer"):
        self.server = server
        self.conn: Connection | None = None
        self.session: Session | None = None
        self.timer = None

    # -- connection events --------------------------------------------------------------

    def connection_made(self, conn: Connection) -> None:
        self.conn = conn
        self.session = Session(self.server.settings, self.server.new_session_id(),
                               clock=self.server.loop.time, trace=self.server.trace)
        self.server.sessions.add(self)
        self.apply(self.session.start())

    def data_received(self, data: bytes) -> None:
        self.apply(self.session.receive(data))

    def eof_received(self) -> None:
        self.apply(self.session.eof())

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.info("%s: read error: %s", self.session.id, exc)
        if self.session.state is not State.CLOSING and not self.session.peer_gone:
            self.apply(self.session.eof())      # in DELIVERING the writes still finish
        self._cancel_timer()
        if self.session.state is not State.DELIVERING:
            self.server.session_ended(self)

    # -- effects ---------------------------------------------------------------------------

    def apply(self, effects) -> None:
        conn = self.conn
        for effect in effects:
            if isinstance(effect, Send):
                conn.write(effect.data)
            elif isinstance(effect, Deliver):
                self.server.deliver(self.session.id, effect.request, self._delivered)
            elif isinstance(effect, Close):
                self._cancel_timer()
                if effect.linger:
                    conn.close_when_flushed()
                else:
                    conn.close_when_flushed(linger=0)
                if self.session.state is not State.DELIVERING:
                    self.server.session_ended(self)
        if conn.closing or conn.closed:
            return
        if self.session.wants_input:
            conn.resume_reading()
        else:
            conn.pause_reading()
        self._arm_timer()

    def _delivered(self, outcomes: tuple[Outcome, ...]) -> None:
        self.apply(self.session.delivered(outcomes))
        if self.conn.closed or self.session.state is State.CLOSING:
            self.server.session_ended(self)

    # -- the idle timer ----------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._cancel_timer()
        timeout = self.session.idle_timeout
        if timeout is not None:
            self.timer = self.server.loop.call_later(timeout, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        self.apply(self.session.timeout())


class LmtpServer:
    """The lmtpd process: the listener, the sessions, the Maildir workers."""

    def __init__(self, config, *, loop: EventLoop | None = None):
        node = config.lmtpd
        if node is None:
            raise ValueError(f"{config.filename}: no lmtpd section")
        self.config = config
        self.loop = loop or EventLoop()
        queue = Path(config.queue_directory)
        self.socket_path = queue / node.socket
        self.hostname = local_hostname(config.hostname)
        self.settings = Settings(hostname=self.hostname, io_timeout=IO_TIMEOUT)
        self.maildirs = MaildirWriter(queue / node.mail_directory, self.hostname)
        self.workers = WorkerPool(self.loop, threads=WORKER_THREADS, name="lmtpd-maildir")
        self.sessions: set[LmtpConnection] = set()
        self.listener: Listener | None = None
        self.trace = trace_sink(config)
        self.stopping = False
        self._session_count = 0

    def new_session_id(self) -> str:
        self._session_count += 1
        return f"L{self._session_count:06X}"

    # -- deliveries ------------------------------------------------------------------------------

    def deliver(self, session_id: str, request: DeliveryRequest, done) -> None:
        """Run the Maildir writes of ``request`` in a worker; ``done(outcomes)`` follows in
        the loop thread, after one log line per recipient."""
        def finished(outcomes: tuple[Outcome, ...] | None, exc: BaseException | None) -> None:
            if exc is not None:     # a bug, not a disk error (those are outcomes)
                log.error("%s: delivery failed: %r", session_id, exc)
                outcomes = tuple(Outcome(False, repr(exc)) for _ in request.recipients)
            for recipient, outcome in zip(request.recipients, outcomes):
                if outcome.durable:
                    log.info("%s: to=<%s> mailbox=%s delivered: %s", session_id,
                             printable(recipient.address), recipient.mailbox, outcome.where)
                else:
                    log.error("%s: to=<%s> mailbox=%s not delivered: %s", session_id,
                              printable(recipient.address), recipient.mailbox,
                              printable(outcome.where))
            done(outcomes)

        self.workers.submit(lambda: self.maildirs.deliver(request), finished)

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.socket_path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        sock = listen_unix(str(self.socket_path))
        self.listener = Listener(self.loop, sock, lambda: LmtpConnection(self))
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_signal_handler(signal.SIGINT, self.shutdown)
        announce_ready(log, "listening on %s", self.socket_path)

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: %d sessions open", len(self.sessions))
        self._stop_listening()
        for connection in list(self.sessions):
            connection.apply(connection.session.shutdown())
        timeout = float(self.config.mcp.shutdown_timeout) if self.config.mcp else 60.0
        self.loop.call_later(timeout, self.loop.stop)
        self._stop_when_idle()

    def _stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass

    def session_ended(self, connection: LmtpConnection) -> None:
        self.sessions.discard(connection)
        self._stop_when_idle()

    def _stop_when_idle(self) -> None:
        if self.stopping and not self.sessions:
            self.loop.stop()

    def run(self) -> None:
        self.start()
        run_loop(self.loop, self._close, log)

    def _close(self) -> None:
        self._stop_listening()
        self.workers.shutdown(wait=True)


def serve(config) -> int:
    """Run the ``lmtpd`` section of ``config`` until SIGTERM; 0 after a clean stop."""
    LmtpServer(config).run()
    return 0
