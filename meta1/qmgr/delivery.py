"""qmgr's delivery half: the scheduler driven by smar's routes and smtpc's results, and
what it decides written down — IBDB done records, DEFEDB, DSNs, content removal.

Responsibilities
    :class:`DeliveryManager` is the I/O shell around the pure
    :class:`~meta1.qmgr.scheduler.Scheduler` (spec/scheduler.md): it turns records from
    smar (``RouteResult``) and smtpc (``DeliveryResult``, ``IdleClosed``), commits from
    smtps and the replay at start into scheduler events, carries the scheduler's actions
    out in the order given, and keeps the one timer the scheduler asks for.

Where each decision goes (durability, DESIGN.md "Message life")
    * ``RecordDone`` → an IBDB ``RecipientsDone`` through qmgr's group commit (the same
      flush as incoming transactions); once durable, the recipient's DEFEDB record (if
      any) is removed. A crash before the flush repeats the delivery: the one duplicate
      the durability rule allows.
    * ``RecordDeferred`` → DEFEDB (SQLite, its own worker thread and group commit). Not
      waited for: a crash before it is written leaves the recipient undone in IBDB
      without a DEFEDB record, so it is retried at once after the restart — an early
      retry, never a loss.
    * ``Bounce`` → the DSN (spec/dsn.md) is built from the queued content, written as a
      new content file and committed to IBDB like a received message (session id
      ``dsn`` or ``double-bounce``, D-DLV-5); the ``RecipientsDone`` of the bounced
      recipients are requested only when that commit succeeded, so a DSN is never lost
      while its recipients count as done. A crash in between gives one duplicate DSN.
      A DSN that cannot be queued (disk full) leaves the recipients without done records
      and keeps the content: the restart's replay delivers and bounces them again.
    * ``DelayWarning`` → a "delayed" DSN (RFC 3464 Action: delayed) queued the same way;
      the recipients stay deferred. One that cannot be queued is logged and not retried.
    * ``RecordHold`` → the transaction's envelope in DEFEDB with ``held`` set or cleared, so
      a hold survives a restart (``mailq`` shows it). Every DEFEDB write of an envelope
      carries the current hold.
    * ``TransactionDone`` → when every done record of the transaction is durable, its
      content file is removed (off the loop) and its DEFEDB rows with it.

Next hops
    A recipient's next hop is the one smar resolved at RCPT (``Recipient.nexthop``,
    D-POL-21; spec/delivery-path.md "Next hops"): a domain or ``[host]`` is asked of
    smar (``RouteRequest``); ``lmtp:PATH`` is its own route (the socket); ``error:REPLY``,
    ``file:`` and ``program:`` are bounced at once (``RouteFailed`` permanent). A
    recipient without one — a DSN qmgr made — goes by its domain, the host's own names
    to the LMTP socket (D-DLV-6).

Remote-MTA
    A recipient's reply from a server goes to the scheduler with the exchanger's name
    (the host of the ``Target`` smtpc reached), kept in DEFEDB with the reply, and named in
    the DSN's Remote-MTA field (RFC 3464 §2.3.5: MUST for an attempt over SMTP).

Connection limits and timers (spec/policy.md "Connection limits", D-POL-28)
    With ``qmgr { config_map }`` (:mod:`meta1.qmgr.limits`): a route from smar reaches the
    scheduler only once its addresses' ``oci:``/``ocm:``/``ocr:``/``oct:`` and
    ``smtpc_session_conf:`` are known (a failed lookup or an entry that does not parse
    defers its recipients, 451 4.3.0), the scheduler reads ``oci:``/``ocm:``/``ocr:`` per
    address, and each ``Target`` carries ``oct:`` and the entry's ``IO_timeout`` and
    ``final_dot_timeout`` to smtpc — qmgr chose the address, so qmgr, not smtpc, asks
    the map, and smtpc needs no round trip per connection. smtps' connect checks are
    admitted first (``icm:``/``icr:``, :mod:`meta1.qmgr.admission`) by :class:`PolicyRelay`.

Peers
    smar: qmgr connects (``smar/smarqmgr``, LinkClient, D-DLV-1). Route requests made
    while smar is away wait and are sent when it is back; those in flight when the link
    goes are answered ``RouteFailed`` temporary, so no recipient waits for an answer
    that cannot come. smtpc: connects to qmgr (``qmgr/smtpcqmgr``). Deliveries wait for
    an smtpc; one that goes away with deliveries in flight is ``DeliveryAgentLost`` (one
    smtpc process is assumed; mcp starts one).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Callable

from meta1.eventloop import Alarm, GroupCommit, WorkerPool
from meta1.ids import IdGenerator
from meta1.ipc.records import (Delivery, DeliveryResult, IdleClosed, PolicyVerdict, RecipientsDone, Recipient,
                               RouteRequest, RouteResult, Target, Transaction)
from meta1.policy.route import ERROR_NEXTHOP, LMTP_NEXTHOP
from meta1.policy.service import asks_smar
from meta1.qmgr.limits import open_config_map
from meta1.qmgr.policy import PolicyRelay
from meta1.qmgr.dsn import Action, MessageKind, NoDsn, Original, RecipientReport, build_dsn, plan_dsn
from meta1.qmgr.scheduler import (Bounce, DeliveryAgentLost, DeliveryEnded, DelayWarning, Exchanger, Final,
                                  RecipientEntry, RecipientOutcome, RecordDeferred, RecordDone, RecordHold,
                                  ResolveRoute, RouteFailed, RouteResolved, Scheduler, SchedulerConfig,
                                  RateHeld, SchedulerError, SessionClosed, StartDelivery, Status, Tick,
                                  TransactionArrived, TransactionDone)
from meta1.queue.cdb import ContentWriter, iter_content
from meta1.queue.defedb import (DeferredRecipient, DeferredTransaction, PutRecipient, PutTransaction,
                                RecipientState, RemoveRecipient, RemoveTransaction, open_defedb)
from meta1.queue.idstate import IdState
from meta1.runtime.link import LinkClient, LinkServer, RecordLink
from meta1.runtime.process import local_hostname, trace_sink

log = logging.getLogger("meta1.qmgr")

#: Next hops meta1 has no delivery agent for (D-POL-12): their recipients bounce.
NO_AGENT = {f"{kind}:": f"550 5.3.5 meta1 has no delivery agent for {kind} deliveries (an alias to a {kind})"
            for kind in ("file", "program")}

#: The process index in the ids of messages qmgr generates (DSNs): smtps uses 00–FE.
QMGR_ID_INDEX = 0xFF
SECOND = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def nexthop_of(address: str, local_host: str) -> str:
    """The next hop of a recipient: its domain, lower-cased (an address literal as written);
    the local host for a bare ``Postmaster`` (RFC 5321 §4.1.1.3)."""
    at = address.rfind("@")
    return address[at + 1:].lower() if at >= 0 else local_host.lower()


def split_reply(reply: str) -> tuple[int, str, str]:
    """``"451 4.4.1 text"`` → (451, "4.4.1", "text"); a reply without a status gets the
    class's generic one (RFC 3463: X.0.0)."""
    code_text, _, rest = reply.partition(" ")
    code = int(code_text) if code_text.isdigit() and len(code_text) == 3 else 451
    status, _, text = rest.partition(" ")
    if not (status[:1] in "245" and status.count(".") == 2 and status.replace(".", "").isdigit()):
        status, text = f"{code // 100}.0.0", rest
    return code, status, text


def kind_of(transaction: Transaction) -> MessageKind:
    """A generated message carries its kind as session id (D-DLV-5)."""
    for kind in (MessageKind.DSN, MessageKind.DOUBLE_BOUNCE):
        if transaction.session_id == kind.value:
            return kind
    return MessageKind.ORIGINAL


class DeliveryManager:
    """See the module docstring. ``manager`` is the QueueManager (its loop, layout,
    incoming transactions and IBDB group commit)."""

    def __init__(self, manager, config):
        self.manager = manager
        self.loop = manager.loop
        self.layout = manager.layout
        self.hostname = local_hostname(config.hostname)
        self.port = config.smtpc.remote_port
        lmtp_socket = config.smtpc.LMTP_socket
        # D-DLV-6: with an LMTP socket, mail for the host's own domain is delivered there.
        self.queue_directory = config.queue_directory
        self.lmtp_nexthop = (f"lmtp:{os.path.join(config.queue_directory, lmtp_socket)}"
                             if isinstance(lmtp_socket, str) and lmtp_socket else None)
        trace = trace_sink(config)
        # qmgr's configuration map (icm: icr: oci: ocm: ocr: oct: smtpc_session_conf:), None without one.
        self.config_map = open_config_map(config, self.loop, self.hostname, trace=trace)
        outgoing = self.config_map.outgoing if self.config_map is not None else None
        self.scheduler = Scheduler(SchedulerConfig.from_config(config), trace=trace,
                                   limits=outgoing.connection_limits if outgoing is not None else None)
        self.defedb, quarantined = open_defedb(self.layout, now=now_us())
        for path in quarantined:
            log.error("DEFEDB was damaged and is quarantined as %s: deferred recipients in it are "
                      "retried from IBDB at once", path)
        self.defedb_pool = WorkerPool(self.loop, threads=1, name="defedb")
        self.defedb_commits: GroupCommit[object] = GroupCommit(self.defedb_pool, self.defedb.apply, name="defedb")
        self.cleanup_pool = WorkerPool(self.loop, threads=1, name="cleanup")
        id_state = IdState(self.layout.qmgr / "idstate")
        self.ids = IdGenerator(id_state.start(now_us()), QMGR_ID_INDEX, reserve=id_state.reserve)
        self.smar = LinkClient(self.loop, self.layout.smar_socket, role="qmgr", peer_role="smar",
                               on_ready=self._smar_ready, on_record=self._smar_record, on_lost=self._smar_lost)
        # smtps' policy checks, passed to smar; new sessions admitted first (icm:, icr:)
        self.policy = PolicyRelay(self.smar, forwards=asks_smar(config),
                                  admission=self.config_map.admission if self.config_map is not None else None)
        self.route_requests: dict[int, str] = {}       # sent to smar: request id -> next hop
        self.routes_unsent: list[str] = []
        self._request_ids = iter(range(1, 1 << 62))
        self.in_flight: dict[int, tuple[RecordLink, Delivery]] = {}
        self.unsent: deque[Delivery] = deque()
        self.smtpc = LinkServer(self.loop, self.layout.smtpc_socket, role="qmgr", peer_role="smtpc",
                                on_record=self._smtpc_record, on_ready=self._smtpc_ready,
                                on_lost=self._smtpc_lost)
        self.kinds: dict[str, MessageKind] = {}
        self.in_defedb: set[str] = set()               # transactions with a DEFEDB row
        self.held: set[str] = set()                    # transactions held (qmgrctl hold)
        self.bounced_waiting: dict[str, list[RecordDone]] = {}
        self.writes_pending: dict[str, int] = {}        # done records not yet durable, per ta
        self.completing: set[str] = set()
        self.alarm = Alarm(self.loop, now_us, lambda: self.handle(Tick()))
        self.closed = False

    # -- events in ------------------------------------------------------------------------

    def handle(self, event: object) -> None:
        if self.closed:
            return
        try:
            actions = self.scheduler.handle(event, now_us())
        except SchedulerError as error:
            log.error("scheduler refused %s: %s", type(event).__name__, error)
            return
        for action in actions:
            self._carry_out(action)
        self.alarm.set(self.scheduler.next_wakeup)

    def _entries(self, transaction: Transaction, done: set[str], deferred: dict[str, DeferredRecipient]):
        entries = []
        for recipient in transaction.recipients:
            if recipient.rcpt_id in done:
                continue
            state = deferred.get(recipient.rcpt_id)
            nexthop = self.nexthop(recipient)
            if state is None or state.state is not RecipientState.DEFERRED:
                entries.append(RecipientEntry(recipient.rcpt_id, nexthop))
            else:
                last = f"{state.reply_code or 451} {state.status or '4.0.0'} {state.reply_text or ''}".strip()
                entries.append(RecipientEntry(recipient.rcpt_id, nexthop, state.attempts, state.next_try,
                                              last, state.warned, state.remote_mta or ""))
        return tuple(entries)

    def nexthop(self, recipient: Recipient) -> str:
        """The scheduler's next hop of a recipient: the one smar resolved at RCPT
        (D-POL-21), an LMTP socket made absolute (``lmtp:`` alone: smtpc's
        ``LMTP_socket``); for a recipient nobody routed (a DSN qmgr made) or ``lmtp:``
        without an LMTP socket, the address's domain — the host's own names to the LMTP
        socket (D-DLV-6)."""
        nexthop = recipient.nexthop
        if nexthop.startswith(LMTP_NEXTHOP):
            path = nexthop[len(LMTP_NEXTHOP):]
            if path:
                return LMTP_NEXTHOP + os.path.join(self.queue_directory, path)
            nexthop = self.lmtp_nexthop or ""
        if nexthop:
            return nexthop
        domain = nexthop_of(recipient.address, self.hostname)
        if self.lmtp_nexthop is not None and domain in (self.hostname.lower(), "localhost"):
            return self.lmtp_nexthop       # D-DLV-6
        return domain

    def arrived(self, transaction: Transaction, done: frozenset[str] = frozenset(),
                deferred: dict[str, DeferredRecipient] | None = None, held: bool = False) -> None:
        """A transaction is in IBDB (committed now, or replayed): hand it to the scheduler."""
        kind = self.kinds.setdefault(transaction.ta_id, kind_of(transaction))
        entries = self._entries(transaction, set(done), deferred or {})
        if entries:
            self.handle(TransactionArrived(transaction.ta_id, transaction.sender, transaction.arrival, entries,
                                           held=held, kind=kind))

    def replay(self, incoming: dict[str, Transaction], done: dict[str, set[str]], completed: list[str]) -> None:
        """At start: the replayed IBDB transactions with their DEFEDB state."""
        deferred: dict[str, tuple[DeferredTransaction, dict[str, DeferredRecipient]]] = {}
        stale = []
        for transaction, recipients in self.defedb.load():
            if transaction.ta_id not in incoming:
                stale.append(RemoveTransaction(transaction.ta_id))
                continue
            deferred[transaction.ta_id] = (transaction, {r.rcpt_id: r for r in recipients})
            self.in_defedb.add(transaction.ta_id)
        for ta_id in completed:
            self._remove_content(ta_id, self.layout.content_relpath(ta_id))
        if stale:
            self._defedb(stale)
        for ta_id, transaction in incoming.items():
            envelope, recipients = deferred.get(ta_id, (None, {}))
            if envelope is not None:
                self.kinds[ta_id] = envelope.kind
                if envelope.held:
                    self.held.add(ta_id)
            self.arrived(transaction, frozenset(done.get(ta_id, ())), recipients,
                         held=envelope.held if envelope is not None else False)

    # -- actions out ----------------------------------------------------------------------

    def _carry_out(self, action: object) -> None:
        if isinstance(action, ResolveRoute):
            self._resolve(action.nexthop)
        elif isinstance(action, StartDelivery):
            self._start_delivery(action)
        elif isinstance(action, RecordDone):
            waiting = self.bounced_waiting.get(action.ta_id)
            if waiting is not None and action.outcome is Final.BOUNCED:
                waiting.append(action)
            else:
                if action.outcome is Final.BOUNCED and self._null_sender(action.ta_id):
                    # The scheduler sends no Bounce for <> (RFC 5321 §6.1); say so (T13).
                    log.info("%s: no DSN: the sender is <> (RFC 5321 §6.1)", action.rcpt_id)
                self._record_done(action)
        elif isinstance(action, RecordDeferred):
            self._record_deferred(action)
        elif isinstance(action, Bounce):
            self._bounce(action)
        elif isinstance(action, TransactionDone):
            self.completing.add(action.ta_id)
            self._maybe_complete(action.ta_id)
        elif isinstance(action, DelayWarning):
            self._warn(action)
        elif isinstance(action, RecordHold):
            self._record_hold(action)
        elif isinstance(action, RateHeld):
            wait = max(0, action.until - now_us()) / 1e6
            log.info("%s: ocr: %d new connection%s a minute used up; deliveries to it wait %.0f s",
                     action.address, action.rate, "" if action.rate == 1 else "s", wait)


    # -- smar --------------------------------------------------------------------------------

    def _resolve(self, nexthop: str) -> None:
        if nexthop.startswith(LMTP_NEXTHOP):     # local delivery: the socket is the route
            self.loop.call_soon(lambda: self.handle(RouteResolved(
                nexthop, (Exchanger(0, "lmtp", (nexthop[len(LMTP_NEXTHOP):],)),), now_us() + 86400 * SECOND)))
            return
        failure = NO_AGENT.get(nexthop) or (nexthop[len(ERROR_NEXTHOP):] if nexthop.startswith(ERROR_NEXTHOP)
                                            else None)
        if failure is not None:
            # A copy that cannot be delivered (an alias target that failed at RCPT, or a
            # file or program the aliases flags allow): bounced with smar's reply.
            self.loop.call_soon(lambda: self.handle(RouteFailed(nexthop, True, failure)))
            return
        if not self.smar.ready:
            self.routes_unsent.append(nexthop)
            return
        request_id = next(self._request_ids)
        self.route_requests[request_id] = nexthop
        self.smar.send(RouteRequest(request_id, nexthop))

    def _smar_ready(self, link: RecordLink) -> None:
        unsent, self.routes_unsent = self.routes_unsent, []
        for nexthop in unsent:
            self._resolve(nexthop)

    def _smar_record(self, link: RecordLink, record: object) -> None:
        if isinstance(record, PolicyVerdict):
            self.policy.verdict(record)
            return
        if not isinstance(record, RouteResult):
            log.error("unexpected record %s from smar; closing the link", type(record).__name__)
            link.close()
            return
        nexthop = self.route_requests.pop(record.request_id, None)
        if nexthop is None:
            log.error("smar answered request %d, which was not asked", record.request_id)
            return
        if record.outcome == "ok":
            exchangers = tuple(Exchanger(x.preference, x.host, tuple(x.addresses)) for x in record.exchangers)
            resolved = RouteResolved(nexthop, exchangers, now_us() + record.ttl * SECOND)
            if self.config_map is None:
                self.handle(resolved)
            else:        # the scheduler needs the addresses' oci:/ocm:/ocr: at once, and each
                         # Target their timers (meta1.qmgr.limits)
                self.config_map.outgoing.route_ready(
                    (address for x in exchangers for address in x.addresses),
                    lambda failure: self._route_ready(resolved, failure))
        else:
            permanent = record.outcome == "permanent"
            code = 550 if permanent else 451
            self.handle(RouteFailed(nexthop, permanent, f"{code} {record.status} {record.reason}"))

    def _route_ready(self, resolved: RouteResolved, failure: str | None) -> None:
        if failure is None:
            self.handle(resolved)
        else:           # B33: no delivery with limits or timers the map did not give
            log.warning("%s: route deferred: %s", resolved.nexthop, failure)
            self.handle(RouteFailed(resolved.nexthop, False, f"451 4.3.0 {failure}"))

    def _smar_lost(self, link: RecordLink, exc: BaseException | None) -> None:
        self.policy.smar_lost()
        pending, self.route_requests = self.route_requests, {}
        for nexthop in pending.values():
            self.handle(RouteFailed(nexthop, False, "451 4.4.3 the address resolver (smar) is not reachable"))

    # -- smtpc -------------------------------------------------------------------------------

    def _smtpc_ready(self, link: RecordLink) -> None:
        while self.unsent:
            self._send_delivery(self.unsent.popleft())

    def _start_delivery(self, action: StartDelivery) -> None:
        transaction = self.manager.incoming[action.ta_id]
        wanted = set(action.rcpt_ids)
        cut = dataclasses.replace(transaction, recipients=tuple(r for r in transaction.recipients
                                                                if r.rcpt_id in wanted))
        lmtp = action.nexthop.startswith(LMTP_NEXTHOP)
        targets = tuple(Target(exchanger.host, address, 0 if lmtp else self.port, exchanger.preference,
                               *self._target_timeouts(address))
                        for address, exchanger in zip(action.addresses, action.targets))
        log.info("%s: scheduled: delivery %d of %d recipient%s to %s via %s%s", action.ta_id, action.delivery_id,
                 len(action.rcpt_ids), "" if len(action.rcpt_ids) == 1 else "s", action.nexthop,
                 ", ".join(f"{t.host} [{t.address}]" for t in targets), " (reusing a session)" if action.reuse else "")
        self._send_delivery(Delivery(action.delivery_id, cut, targets, lmtp, action.reuse))

    def _target_timeouts(self, address: str) -> tuple[int, int, int]:
        """The connect, reply and final-dot timers of ``address`` from the configuration
        map (``oct:``, ``smtpc_session_conf:``); 0: smtpc's own."""
        return self.config_map.outgoing.target_timeouts(address) if self.config_map is not None else (0, 0, 0)

    def _send_delivery(self, delivery: Delivery) -> None:
        links = [link for link in self.smtpc.links if link.ready]
        if not links:
            self.unsent.append(delivery)
            return
        link = links[delivery.delivery_id % len(links)]
        self.in_flight[delivery.delivery_id] = (link, delivery)
        link.send(delivery)

    def _smtpc_record(self, link: RecordLink, record: object) -> None:
        if isinstance(record, DeliveryResult):
            _, delivery = self.in_flight.pop(record.delivery_id, (None, None))
            if delivery is None:
                log.error("smtpc reported delivery %d, which is not in flight", record.delivery_id)
                return
            remote = next((t.host for t in delivery.targets if t.address == record.address), record.address)
            outcomes = tuple(RecipientOutcome(r.rcpt_id, _status(r.code), f"{r.code} {r.status} {r.text}".strip(),
                                              remote if record.address else "")
                             for r in record.results)
            failed = tuple(a for a in dict.fromkeys(record.tried) if a != record.address)
            self.handle(DeliveryEnded(record.delivery_id, record.address or None, record.kept_open, outcomes,
                                      failed))
        elif isinstance(record, IdleClosed):
            self.handle(SessionClosed(record.address))
        else:
            log.error("unexpected record %s from smtpc; closing the link", type(record).__name__)
            link.close()

    def _smtpc_lost(self, link: RecordLink, exc: BaseException | None) -> None:
        lost = [i for i, (owner, _) in self.in_flight.items() if owner is link]
        for delivery_id in lost:
            del self.in_flight[delivery_id]
        if link.peer is not None:
            self.handle(DeliveryAgentLost())

    # -- writing decisions -------------------------------------------------------------------

    def _null_sender(self, ta_id: str) -> bool:
        transaction = self.manager.incoming.get(ta_id)
        return transaction is not None and transaction.sender == ""

    def _record_done(self, action: RecordDone) -> None:
        ta_id = action.ta_id
        log.info("%s: %s: %s", action.rcpt_id, action.outcome.value, action.reply)
        record = RecipientsDone(ta_id, (action.rcpt_id,), action.outcome.value, now_us())
        self.writes_pending[ta_id] = self.writes_pending.get(ta_id, 0) + 1

        def durable(exc: BaseException | None) -> None:
            self.writes_pending[ta_id] -= 1
            if exc is not None:
                log.error("%s: IBDB done record not written: %s (delivered again after a restart)",
                          action.rcpt_id, exc)
            elif action.was_deferred or ta_id in self.in_defedb:
                self._defedb([RemoveRecipient(ta_id, int(action.rcpt_id.rsplit("-", 1)[1], 16))])
            self._maybe_complete(ta_id)

        self.manager.commits.request(record, durable)

    def _record_deferred(self, action: RecordDeferred) -> None:
        transaction = self.manager.incoming.get(action.ta_id)
        if transaction is None:
            return
        recipient = next(r for r in transaction.recipients if r.rcpt_id == action.rcpt_id)
        code, status, text = split_reply(action.last_reply)
        log.info("%s: deferred (attempt %d): %s", action.rcpt_id, action.attempts, action.last_reply)
        now = now_us()
        # The envelope goes with every recipient row: DEFEDB removes a transaction whose
        # last recipient row went (another recipient delivered on its retry) while this
        # one was still on its first attempt, and a recipient row needs its transaction.
        self._defedb([self._envelope(transaction), PutRecipient(DeferredRecipient(
            action.ta_id, int(action.rcpt_id.rsplit("-", 1)[1], 16), recipient.address, recipient.notify,
            recipient.orcpt_type, recipient.orcpt, RecipientState.DEFERRED, action.attempts, action.next_try,
            first_fail=now, last_attempt=now, reply_code=code, status=status, reply_text=text,
            remote_mta=action.remote_mta or None, warned=action.warned))])

    def _envelope(self, transaction: Transaction) -> PutTransaction:
        """The DEFEDB change that writes ``transaction``'s envelope with its kind and hold."""
        ta_id = transaction.ta_id
        self.in_defedb.add(ta_id)
        return PutTransaction(DeferredTransaction.from_transaction(
            transaction, self.kinds.get(ta_id, MessageKind.ORIGINAL), held=ta_id in self.held))

    def _record_hold(self, action: RecordHold) -> None:
        (self.held.add if action.held else self.held.discard)(action.ta_id)
        log.info("%s: %s", action.ta_id, "held" if action.held else "released")
        transaction = self.manager.incoming.get(action.ta_id)
        if transaction is not None:
            self._defedb([self._envelope(transaction)])

    def _defedb(self, changes: list) -> None:
        def written(exc: BaseException | None) -> None:
            if exc is not None:
                log.error("DEFEDB write failed: %s (the recipients are retried from IBDB after a restart)", exc)
        for change in changes:
            self.defedb_commits.request(change, written)

    def _bounce(self, action: Bounce) -> None:
        """One DSN (Action: failed) for the bounced recipients; their done records wait
        until it is durable in IBDB."""
        ta_id = action.ta_id
        reports = [self._report(ta_id, failed.rcpt_id, failed.reply, failed.remote_mta, Action.FAILED)
                   for failed in action.recipients]
        self.bounced_waiting[ta_id] = []
        self.writes_pending[ta_id] = self.writes_pending.get(ta_id, 0) + 1

        def queued(exc: BaseException | None) -> None:
            waiting = self.bounced_waiting.pop(ta_id, [])
            if exc is not None:
                # No done records and the content stays (the transaction never completes in
                # this run): after a restart the replay tries these recipients again.
                log.error("%s: the failed recipients stay queued until qmgr restarts", ta_id)
                return
            self.writes_pending[ta_id] -= 1
            for done in waiting:
                self._record_done(done)
            self._maybe_complete(ta_id)

        if not self._queue_dsn(ta_id, reports, queued):
            del self.bounced_waiting[ta_id]
            self.writes_pending[ta_id] -= 1

    def _warn(self, action: DelayWarning) -> None:
        """One DSN (Action: delayed) for recipients deferred longer than ``delay_warning``."""
        transaction = self.manager.incoming.get(action.ta_id)
        if transaction is None:
            return
        until = transaction.arrival + self.scheduler.config.queue_lifetime
        reports = [dataclasses.replace(self._report(action.ta_id, delayed.rcpt_id, delayed.reply,
                                                    delayed.remote_mta, Action.DELAYED),
                                       will_retry_until=until)
                   for delayed in action.recipients]
        self._queue_dsn(action.ta_id, reports, lambda exc: None)

    def _report(self, ta_id: str, rcpt_id: str, reply: str, remote_mta: str, action: Action) -> RecipientReport:
        """What a DSN says of one recipient: its RCPT parameters, the last reply and who gave it."""
        recipient = next(r for r in self.manager.incoming[ta_id].recipients if r.rcpt_id == rcpt_id)
        _, status, _ = split_reply(reply)
        if action is Action.DELAYED and status[0] != "4":
            status = "4.0.0"
        elif action is Action.FAILED and status[0] == "2":
            status = "5.0.0"
        return RecipientReport(recipient.address, action, status, recipient.notify, recipient.orcpt_type,
                               recipient.orcpt, remote_mta=remote_mta or None, diagnostic=reply,
                               diagnostic_type="smtp", last_attempt=now_us(), log_id=rcpt_id)

    def _queue_dsn(self, ta_id: str, reports: list[RecipientReport],
                   queued: Callable[[BaseException | None], None]) -> bool:
        """Build the DSN ``reports`` of ``ta_id`` call for (spec/dsn.md) from the queued
        content, write it as a new content file and commit it to IBDB like a received
        message, then hand it to the scheduler. False when no DSN is owed (logged);
        otherwise ``queued`` is called once: with None when the DSN is durable, with the
        error when it could not be written or committed."""
        transaction = self.manager.incoming[ta_id]
        kind = self.kinds.get(ta_id, MessageKind.ORIGINAL)
        plan = plan_dsn(Original.of(transaction, kind), reports)
        if isinstance(plan, NoDsn):
            log.info("%s: no DSN: %s", ta_id, plan.reason)
            return False
        what = "delay warning" if reports[0].action is Action.DELAYED else "DSN"
        now = now_us()
        try:
            dsn = build_dsn(plan, iter_content(self.layout.root / transaction.content), hostname=self.hostname,
                            now=now)
            generated = self._write_generated(dsn, now)
        except (OSError, ValueError) as error:
            log.error("%s: %s not queued: %s", ta_id, what, error)
            self.loop.call_soon(queued, error)
            return True

        def committed(exc: BaseException | None) -> None:
            if exc is not None:
                log.error("%s: %s %s not queued: %s", ta_id, what, generated.ta_id, exc)
            else:
                self.manager.incoming[generated.ta_id] = generated
                log.info("%s: %s %s queued to <%s>", ta_id, what, generated.ta_id, dsn.recipient)
            queued(exc)
            if exc is None:
                self.kinds[generated.ta_id] = dsn.kind
                self.arrived(generated)

        self.manager.commits.request(generated, committed)
        return True

    def _write_generated(self, dsn, now: int) -> Transaction:
        """The DSN as a content file and the Transaction that names it (not yet committed)."""
        ta_id = self.ids.new_id()
        writer = ContentWriter(self.layout, ta_id, created=now)
        try:
            writer.write(dsn.message)
            size = writer.finish()
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return Transaction(ta_id=ta_id, session_id=dsn.kind.value, arrival=now, sender="", size=size,
                           body=dsn.body, smtputf8=dsn.smtputf8, ret=None, envid=None, auth=None,
                           client_address="", client_port=0, helo=self.hostname,
                           recipients=(Recipient(f"{ta_id}-0000", dsn.recipient, None, None, None),),
                           content=writer.relpath)

    def _maybe_complete(self, ta_id: str) -> None:
        if ta_id not in self.completing or self.writes_pending.get(ta_id, 0) > 0:
            return
        self.completing.discard(ta_id)
        self.writes_pending.pop(ta_id, None)
        self.kinds.pop(ta_id, None)
        self.held.discard(ta_id)
        transaction = self.manager.incoming.pop(ta_id, None)
        if ta_id in self.in_defedb:
            self.in_defedb.discard(ta_id)
            self._defedb([RemoveTransaction(ta_id)])
        if transaction is not None:
            self._remove_content(ta_id, transaction.content)
        self.manager.transaction_complete(ta_id)
        log.info("%s: removed (every recipient is done)", ta_id)

    def _remove_content(self, ta_id: str, relpath: str) -> None:
        path = self.layout.root / relpath

        def unlink() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        self.cleanup_pool.submit(unlink, lambda _result, exc: exc and log.error("%s: removing %s: %s",
                                                                                ta_id, path, exc))

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.config_map is not None:
            self.config_map.start()
        self.smtpc.start()
        self.smar.start()

    def stop(self) -> None:
        self.closed = True
        self.alarm.cancel()
        self.smtpc.close()
        self.smar.stop()

    def close(self) -> None:
        """After the loop: finish the worker threads, close DEFEDB."""
        self.cleanup_pool.shutdown(wait=True)
        self.defedb_pool.shutdown(wait=True)
        self.defedb.close()
        if self.config_map is not None:
            self.config_map.close()


def _status(code: int) -> Status:
    if code < 400:
        return Status.DELIVERED
    return Status.TEMPORARY if code < 500 else Status.PERMANENT
