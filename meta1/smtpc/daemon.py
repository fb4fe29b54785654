"""smtpc, the SMTP/LMTP client daemon: deliveries from qmgr, results back, no durable state.

Responsibilities
    * Connect to qmgr (``qmgr/smtpcqmgr``; reconnecting, :class:`~meta1.runtime.link.LinkClient`)
      and take :class:`~meta1.ipc.records.Delivery` records: one transaction (cut down to the
      recipients of this delivery) and the ordered server addresses (``targets``) qmgr got
      from smar.
    * Per delivery, walk the addresses with the MX/address plan (:mod:`meta1.smtpc.plan`:
      preference order, random among equals, on after connect failures and 4xx greetings,
      stop on 5xx, bounded), run one client session (:mod:`meta1.smtpc.session`) per
      connection, stream the content from the CDB file, and answer qmgr with one
      :class:`~meta1.ipc.records.DeliveryResult`: one reply per recipient.
    * Keep a connection that finished its transaction open for a few seconds and reuse it
      for the next delivery to the same address (RSET was already sent when needed, so an
      idle session holds no transaction); QUIT it when unused.

What smtpc decides and what it does not
    The reply class decides nothing here: every recipient's reply goes back to qmgr,
    which delivers, defers or bounces (DESIGN.md: smtpc keeps no durable state). The only
    retry smtpc makes itself is for recipients a session left unanswered — the connection
    was lost, a timer ran out, the server broke the protocol (the session gives them a
    local 4xx) — on the plan's next address, as RFC 5321 §5.1 asks for MX fallback.

Timers (RFC 5321 §4.5.3.2)
    ``IO_timeout`` for the greeting and each reply, ``final_dot_timeout`` for the reply to
    the end of data, ``IO_timeout`` for a connect too — unless qmgr's configuration map
    gives the server address others: ``oct:`` for the connect, ``smtpc_session_conf:``
    for the replies (D-POL-28), carried in the delivery's ``Target`` because qmgr chose
    the address and has its entries at hand. A connection takes the reply timers of the
    delivery it serves (:meth:`ClientConnection.serve`): those of the delivery that opened
    it, then — when it is kept and reused — those of the later delivery, so a changed
    entry holds from the next delivery on. An idle cached connection is closed after
    :data:`IDLE_REUSE_SECONDS`.

Content
    Read from the CDB file with :func:`meta1.queue.cdb.iter_content` when the session asks
    for it and handed over in 64 KiB pieces; the session dot-stuffs or frames BDAT. A
    content file that cannot be read gives every open recipient ``451 4.3.0``.
"""

from __future__ import annotations

import logging
import random
import signal
from collections import defaultdict

from meta1.eventloop import Connection, EventLoop, Protocol, connect_stream
from meta1.ipc.records import Delivery, DeliveryResult, IdleClosed, RecipientResult
from meta1.queue.cdb import iter_content
from meta1.queue.layout import QueueLayout
from meta1.runtime.link import LinkClient, RecordLink
from meta1.runtime.process import announce_ready, local_hostname, run_loop, trace_sink
from meta1.smtp.replies import Reply
from meta1.smtp.text import printable
from meta1.smtpc import session as sessions
from meta1.smtpc.plan import AddressPlan, Candidate
from meta1.smtpc.session import Session, Settings, Wait

log = logging.getLogger("meta1.smtpc")

#: Seconds an idle connection is kept for another delivery to the same address.
IDLE_REUSE_SECONDS = 5.0


def _local_reply(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, (printable(text)[:400],))


CONTENT_UNREADABLE = Reply(451, "4.3.0", ("content file unreadable: message not sent",))


class ClientConnection(Protocol):
    """One connection to a server: a session, its timer, the attempt it works for."""

    def __init__(self, client: "MailClient", candidate: Candidate, port: int, lmtp: bool):
        self.client = client
        self.candidate = candidate
        self.port = port
        self.lmtp = lmtp
        self.key = (candidate.address, port, lmtp)
        client.sessions_made += 1      # the trace's instance id: one per connection
        self.session = Session(Settings(helo_name=client.hostname, lmtp=lmtp),
                               instance=f"{candidate.address}:{port}/{client.sessions_made}", trace=client.trace)
        self.conn: Connection | None = None
        self.attempt: DeliveryAttempt | None = None
        self.io_timeout = client.io_timeout                # until a delivery says otherwise
        self.final_dot_timeout = client.final_dot_timeout
        self.timer = None
        self.ended = False
        self.idle = False           # reported kept_open to qmgr, not taken by a delivery since

    @property
    def where(self) -> str:
        return f"{self.candidate.host} [{self.candidate.address}]:{self.port}"

    # -- the connection -------------------------------------------------------------------

    def connection_made(self, conn: Connection) -> None:
        self.conn = conn
        self.apply(self.session.connected())

    def data_received(self, data: bytes) -> None:
        self.apply(self.session.receive(data))

    def eof_received(self) -> None:
        self.apply(self.session.closed())

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.ended:
            self.apply(self.session.closed())
        self._cancel_timer()
        self.client.forget_idle(self)
        if self.idle:
            self.idle = False
            self.client.qmgr.send(IdleClosed(self.candidate.address))

    # -- effects --------------------------------------------------------------------------

    def apply(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, sessions.Send):
                self.conn.write(effect.data)
            elif isinstance(effect, sessions.Close):
                self.conn.close_when_flushed(linger=0)
            elif isinstance(effect, sessions.NeedContent):
                self.apply(self._content())
            elif isinstance(effect, sessions.TransactionResult):
                if self.attempt is not None:
                    self.attempt.transaction_done(self, effect)
            elif isinstance(effect, sessions.Ready):
                self._ready()
            elif isinstance(effect, sessions.SessionEnded):
                self.ended = True
                attempt, self.attempt = self.attempt, None
                if attempt is not None:
                    attempt.session_ended(self, effect)
        self._arm_timer()

    def _content(self) -> list:
        path = self.client.layout.root / self.attempt.record.transaction.content
        effects: list = []
        try:
            pieces = iter_content(path)
            piece = next(pieces, b"")
            while self.session.wants_content:
                following = next(pieces, None)
                effects += self.session.content(piece, last=following is None)
                piece = following if following is not None else b""
        except (OSError, ValueError) as error:
            log.error("%s: content %s: %s", self.attempt.record.transaction.ta_id, path, error)
            self.attempt.content_failed()
            effects += self.session.abort()
        return effects

    def _ready(self) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is not None and attempt.waiting_for_session:
            self.attempt = attempt
            attempt.greeted(self)
            return
        kept = self.client.keep_idle(self)
        if attempt is not None and attempt.answered:
            attempt.report(kept_open=kept)

    def serve(self, attempt: "DeliveryAttempt") -> None:
        """Work for ``attempt`` from now on, with the reply timers of its target for this
        connection's address."""
        self.attempt = attempt
        self.io_timeout, self.final_dot_timeout = attempt.reply_timeouts(self.candidate.address)

    def send(self, attempt: "DeliveryAttempt", delivery: sessions.Delivery) -> None:
        self.serve(attempt)
        self._cancel_timer()
        self.apply(self.session.send(delivery))

    def quit(self) -> None:
        self.apply(self.session.quit())

    # -- timers ---------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._cancel_timer()
        waiting = self.session.waiting_for
        if waiting is Wait.REPLY:
            delay = self.io_timeout
        elif waiting is Wait.FINAL_REPLY:
            delay = self.final_dot_timeout
        elif waiting is Wait.TRANSACTION and self.attempt is None:
            delay = IDLE_REUSE_SECONDS
        else:
            return
        self.timer = self.client.loop.call_later(delay, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        if self.session.waiting_for is Wait.TRANSACTION:
            self.client.forget_idle(self)
            self.quit()
        else:
            self.apply(self.session.timeout())


class DeliveryAttempt:
    """One Delivery record: the address plan, the sessions it uses, the results."""

    def __init__(self, client: "MailClient", record: Delivery):
        self.client = client
        self.record = record
        recipients = record.transaction.recipients
        self.results: dict[str, RecipientResult] = {}
        self.open = list(recipients)           # not yet answered by a server
        exchangers: dict[tuple[int, str], list[str]] = defaultdict(list)
        for target in record.targets:
            exchangers[(target.preference, target.host)].append(target.address)
        self.targets = {t.address: t for t in record.targets}
        self.plan = AddressPlan([(pref, host, addresses) for (pref, host), addresses in exchangers.items()],
                                client.rng, instance=f"{record.transaction.ta_id}/{record.delivery_id}",
                                trace=client.trace)    # a transaction may be in several deliveries at once
        self.tried: list[str] = []
        self.where = ""
        self.address = ""                      # of the session that carried the transaction
        self.answered = False                  # every recipient has its result
        self.waiting_for_session = False
        self.last_reason: Reply | None = None
        self.pending = None

    @property
    def ta_id(self) -> str:
        return self.record.transaction.ta_id

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        candidate = self.plan.next_address()
        if candidate is None:
            reason = self.plan.outcome.reason if self.plan.finished and self.plan.outcome else None
            self._finish(reason or self.last_reason or _local_reply(451, "4.4.1", "no server reachable"))
            return
        target = self.targets[candidate.address]        # the plan holds the targets' addresses
        port = target.port
        self.tried.append(candidate.address)
        self.waiting_for_session = True
        idle = None
        if self.record.reuse and len(self.tried) == 1:
            idle = self.client.take_idle((candidate.address, port, self.record.lmtp))
        if idle is not None:
            self.where = idle.where
            self.greeted(idle)
            return
        timeout = target.connect_timeout or self.client.io_timeout          # oct:
        self.pending = connect_stream(self.client.loop, candidate.address, port, timeout,
                                      lambda sock, why: self._connected(candidate, port, sock, why))

    def _connected(self, candidate: Candidate, port: int, sock, why: str) -> None:
        self.pending = None
        if sock is None:
            log.info("%s: connect to %s [%s]:%d failed: %s", self.ta_id, candidate.host, candidate.address,
                     port, why)
            self.last_reason = _local_reply(451, "4.4.1", f"connect to {candidate.host} failed: {why}")
            self.plan.connect_failed(self.last_reason)
            self._next()
            return
        connection = ClientConnection(self.client, candidate, port, self.record.lmtp)
        connection.serve(self)
        self.where = connection.where
        Connection(self.client.loop, sock, connection)

    def reply_timeouts(self, address: str) -> tuple[float, float]:
        """Seconds to wait for a reply, and for the reply to the final dot, on a session with
        ``address``: its target's (qmgr's ``smtpc_session_conf:``), else smtpc's own."""
        target = self.targets[address]
        return target.io_timeout or self.client.io_timeout, target.final_dot_timeout or self.client.final_dot_timeout

    def greeted(self, connection: ClientConnection) -> None:
        """The session is ready for our transaction (first Ready, or a reused session)."""
        self.waiting_for_session = False
        self.address = connection.candidate.address
        self.plan.greeted()
        delivery = sessions.Delivery.from_transaction(self.record.transaction, tuple(self.open))
        connection.send(self, delivery)

    def transaction_done(self, connection: ClientConnection, result: sessions.TransactionResult) -> None:
        retry = []
        for item in result.results:
            if item.local and item.temporary:
                retry.append(item.recipient)     # the session lost them: try the next address
                self.last_reason = item.reply
            self._store(item.recipient.rcpt_id, item.reply)
        self.open = retry
        if not retry:
            # Reported at the session's next Ready (kept open) or its end (closed).
            self.answered = True
            self.plan.delivered()

    def session_ended(self, connection: ClientConnection, ended: sessions.SessionEnded) -> None:
        if self.record.delivery_id not in self.client.attempts:
            return
        if self.answered or not self.open:
            self.report(kept_open=False)
            return
        reason = ended.reply or _local_reply(451, "4.4.2", "connection closed")
        self.last_reason = reason
        if self.waiting_for_session:             # never got to our transaction
            if ended.greeted or ended.local:
                self.plan.connect_failed(reason)
            else:
                self.plan.greeting(reason)
        else:
            self.plan.session_ended(reason)
        self._next()

    def content_failed(self) -> None:
        for recipient in self.open:
            self._store(recipient.rcpt_id, CONTENT_UNREADABLE)
        self.open = []
        self.report(kept_open=False)

    def _store(self, rcpt_id: str, reply: Reply) -> None:
        self.results[rcpt_id] = RecipientResult(rcpt_id, reply.code, reply.status or "",
                                                " ".join(reply.lines))

    def _finish(self, reason: Reply) -> None:
        for recipient in self.open:
            self._store(recipient.rcpt_id, reason)
        self.open = []
        self.report(kept_open=False)

    def report(self, kept_open: bool) -> None:
        if self.client.attempts.pop(self.record.delivery_id, None) is None:
            return
        results = tuple(self.results[r.rcpt_id] for r in self.record.transaction.recipients)
        for result in results:
            log.info("%s: to=<%s> relay=%s code=%d status=%s %s", result.rcpt_id,
                     next(r.address for r in self.record.transaction.recipients if r.rcpt_id == result.rcpt_id),
                     self.where or "none", result.code, result.status, result.text)
        self.client.qmgr.send(DeliveryResult(self.record.delivery_id, results, self.address,
                                             tuple(self.tried), kept_open))


class MailClient:
    """The smtpc process: the qmgr link, the deliveries in progress, idle connections."""

    def __init__(self, config, *, loop: EventLoop | None = None, rng: random.Random | None = None):
        self.config = config
        self.loop = loop or EventLoop()
        self.layout = QueueLayout(config.queue_directory, config.cdb_base_directory)
        self.hostname = local_hostname(config.hostname)
        self.io_timeout = float(config.smtpc.IO_timeout)
        self.final_dot_timeout = float(config.smtpc.final_dot_timeout)
        self.rng = rng or random.SystemRandom()
        self.trace = trace_sink(config)
        self.sessions_made = 0
        self.attempts: dict[int, DeliveryAttempt] = {}
        self.idle: dict[tuple, list[ClientConnection]] = defaultdict(list)
        self.qmgr = LinkClient(self.loop, self.layout.smtpc_socket, role="smtpc", peer_role="qmgr",
                               on_record=self._record, on_lost=self._lost)
        self.stopping = False

    def _record(self, link: RecordLink, record: object) -> None:
        if not isinstance(record, Delivery):
            log.error("unexpected record %s from qmgr; closing the link", type(record).__name__)
            link.close()
            return
        attempt = DeliveryAttempt(self, record)
        self.attempts[record.delivery_id] = attempt
        attempt.start()

    def _lost(self, link: RecordLink, exc: BaseException | None) -> None:
        # qmgr forgets what it handed out when the link goes; results would go nowhere.
        for attempt in list(self.attempts.values()):
            if attempt.pending is not None:
                attempt.pending.cancel()
        self.attempts.clear()

    # -- idle connections -----------------------------------------------------------------

    def keep_idle(self, connection: ClientConnection) -> bool:
        """Keep ``connection`` for reuse (True), or QUIT it when stopping (False)."""
        if self.stopping or not self.qmgr.ready:
            connection.quit()
            return False
        connection.idle = True
        self.idle[connection.key].append(connection)
        return True

    def take_idle(self, key: tuple) -> ClientConnection | None:
        pool = self.idle.get(key)
        if not pool:
            return None
        connection = pool.pop()
        connection.idle = False
        return connection

    def forget_idle(self, connection: ClientConnection) -> None:
        pool = self.idle.get(connection.key)
        if pool and connection in pool:
            pool.remove(connection)

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        self.qmgr.start()
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_signal_handler(signal.SIGINT, self.shutdown)
        announce_ready(log, "helo name %s; qmgr socket %s", self.hostname, self.layout.smtpc_socket)

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: %d deliveries in progress", len(self.attempts))
        for pool in self.idle.values():
            for connection in list(pool):
                connection.quit()
        self.idle.clear()
        self.qmgr.stop()
        self.loop.call_soon(self.loop.stop)

    def run(self) -> None:
        self.start()
        run_loop(self.loop, lambda: None, log)


def serve(config) -> int:
    MailClient(config).run()
    return 0
