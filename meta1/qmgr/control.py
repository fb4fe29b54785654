"""qmgr's control socket: the operator's ``meta1 qmgrctl`` flush, hold, release and delete.

Responsibilities
    Both ends of one small protocol (spec/qmgrctl.md):

    * in qmgr, :class:`ControlServer` listens on ``qmgr/ctl`` in the queue directory
      (:func:`control_socket`), takes one command record at a time from each
      ``qmgrctl`` connection, turns it into the scheduler's operator event (``Flush``,
      ``Hold``, ``Release``, ``Delete`` of :mod:`meta1.qmgr.scheduler`) through
      :meth:`DeliveryManager.handle <meta1.qmgr.delivery.DeliveryManager.handle>` and
      answers one :class:`~meta1.ipc.records.ControlResult` per command, in order;
    * for the command line, :func:`request_for` builds the record for a command and
      :func:`send_command` sends it and waits for the answer over a plain blocking
      socket (a one-shot tool needs no event loop).

Protocol
    A record link (``meta1/runtime/link.py``) like every other: ``Hello`` both ways (the
    client's role is ``qmgrctl``), then ``FlushQueue(nexthop | None)``,
    ``HoldMessage(ta_id)``, ``ReleaseMessage(ta_id)`` or ``DeleteMessage(ta_id)``, each
    answered by ``ControlResult(ok, text)``. ``ok=False`` means nothing was done: an
    unknown or malformed id (the scheduler raises ``KeyError`` for an id it does not
    hold, before it changes anything), or qmgr shutting down. Any other record is a
    protocol error that closes the connection, as on every link.

What the commands mean (spec/scheduler.md D-SCHED-10..12)
    ``flush`` makes deferred recipients due now (all, or those of one next hop) and
    changes nothing durable; ``hold`` stops everything of a message not already in
    flight; ``release`` makes its held recipients due at once; ``delete`` ends every
    recipient not in flight as ``deleted`` (IBDB ``RecipientsDone``, no DSN) and the
    content file goes with the last of them; a delivery in flight finishes and a
    success stands. The answer says when recipients in flight are left to finish.

Access
    The socket lives in ``qmgr/``, which ``QueueLayout.ensure`` creates with mode 0750:
    who may enter the queue's qmgr directory may command qmgr, as with ``postqueue``'s
    public/ directory being the operator's business in Postfix.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket

from meta1.ids import ID_PATTERN
from meta1.ipc.codec import FrameDecoder, ProtocolError, frame
from meta1.ipc.records import (PROTOCOL_VERSION, ControlResult, DeleteMessage, FlushQueue, Hello, HoldMessage,
                               ReleaseMessage, handshake_check)
from meta1.qmgr.scheduler import Delete, Flush, Hold, Release
from meta1.qmgr.states import State
from meta1.queue.layout import QueueLayout
from meta1.runtime.link import LinkServer, RecordLink

log = logging.getLogger("meta1.qmgr")

CONTROL_SOCKET = "ctl"
CLIENT_ROLE = "qmgrctl"
#: Seconds the command line waits for qmgr's answer (qmgr answers within one loop turn).
ANSWER_TIMEOUT = 30.0

MessageCommand = HoldMessage | ReleaseMessage | DeleteMessage
Command = FlushQueue | MessageCommand

_EVENTS = {HoldMessage: Hold, ReleaseMessage: Release, DeleteMessage: Delete}
_DONE = {HoldMessage: "held", ReleaseMessage: "released", DeleteMessage: "deleted"}


def control_socket(layout: QueueLayout) -> pathlib.Path:
    """``<queue>/qmgr/ctl``."""
    return layout.qmgr / CONTROL_SOCKET


def request_for(action: str, argument: str | None = None) -> Command:
    """The record for ``qmgrctl ACTION [ARGUMENT]``: ``flush [DOMAIN]``, ``hold ID``,
    ``release ID``, ``delete ID``. Ids are upper-cased (they are hex), domains
    lower-cased (next hops are); ValueError for an unknown action or a missing id."""
    if action == "flush":
        return FlushQueue(argument.lower().rstrip(".") if argument else None)
    kinds = {"hold": HoldMessage, "release": ReleaseMessage, "delete": DeleteMessage}
    if action not in kinds:
        raise ValueError(f"unknown command {action!r}")
    if not argument:
        raise ValueError(f"{action} needs a queue id")
    return kinds[action](argument.upper())


# -- qmgr's side ------------------------------------------------------------------------------

class ControlServer:
    """The control socket in qmgr; ``manager`` is the QueueManager (its loop, layout,
    incoming transactions and ``delivery``, the DeliveryManager)."""

    def __init__(self, manager):
        self.manager = manager
        self.path = control_socket(manager.layout)
        # Owner only (and root): the operator's socket, not the other daemons' (D-CTL-6).
        self.server = LinkServer(manager.loop, self.path, role="qmgr", peer_role=CLIENT_ROLE,
                                 on_record=self._record, quiet=True, mode=0o600)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.close()

    def _record(self, link: RecordLink, record: object) -> None:
        if not isinstance(record, (FlushQueue, HoldMessage, ReleaseMessage, DeleteMessage)):
            log.error("unexpected record %s from qmgrctl; closing the link", type(record).__name__)
            link.close()
            return
        result = self.execute(record)
        log.info("qmgrctl %s: %s%s", _describe(record), "" if result.ok else "refused: ", result.text)
        link.send(result)

    def execute(self, command: Command) -> ControlResult:
        """Carry ``command`` out through the scheduler; the answer for the operator."""
        delivery = self.manager.delivery
        if delivery.closed or self.manager.stopping:
            return ControlResult(False, "qmgr is shutting down")
        if isinstance(command, FlushQueue):
            return self._flush(command)
        ta_id = command.ta_id
        if not ID_PATTERN.match(ta_id):
            return ControlResult(False, f"{ta_id!r} is not a queue id")
        try:
            delivery.handle(_EVENTS[type(command)](ta_id))
        except KeyError:
            return ControlResult(False, f"{ta_id}: no such message in the queue")
        text = f"{ta_id}: {_DONE[type(command)]}"
        in_flight = self._in_flight(ta_id)
        if in_flight and not isinstance(command, ReleaseMessage):
            text += (f"; {in_flight} recipient{'s' if in_flight != 1 else ''} in a delivery now "
                     f"finish{'es' if in_flight == 1 else ''} first")
        return ControlResult(True, text)

    def _flush(self, command: FlushQueue) -> ControlResult:
        scheduler = self.manager.delivery.scheduler
        waiting = sum(1 for view in scheduler.recipients()
                      if view.state is State.DEFERRED and command.nexthop in (None, view.nexthop))
        self.manager.delivery.handle(Flush(command.nexthop))
        where = f" for {command.nexthop}" if command.nexthop else ""
        return ControlResult(True, f"flushed: {waiting} deferred recipient{'s' if waiting != 1 else ''}{where} "
                                   f"due now")

    def _in_flight(self, ta_id: str) -> int:
        """Recipients of ``ta_id`` in a delivery (active) right now."""
        transaction = self.manager.incoming.get(ta_id)
        if transaction is None:
            return 0
        state_of = self.manager.delivery.scheduler.state_of
        return sum(1 for r in transaction.recipients if state_of(r.rcpt_id) is State.ACTIVE)


def _describe(command: Command) -> str:
    if isinstance(command, FlushQueue):
        return f"flush {command.nexthop}" if command.nexthop else "flush"
    return f"{type(command).__name__.removesuffix('Message').lower()} {command.ta_id}"


# -- the command line's side ------------------------------------------------------------------

class ControlError(Exception):
    """No answer from qmgr (the command may or may not have been carried out)."""


class QmgrNotRunning(ControlError):
    """Nobody listens on the control socket."""


def send_command(path: str | os.PathLike, command: Command, *, timeout: float = ANSWER_TIMEOUT) -> ControlResult:
    """Send ``command`` to the qmgr listening on ``path`` and return its answer.

    QmgrNotRunning when no socket is there or nobody listens (a qmgr killed leaves its
    socket file behind: connecting is refused); ControlError when qmgr does not answer
    properly within ``timeout`` seconds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise QmgrNotRunning(f"qmgr is not running (nobody listens on {path})") from None
        except OSError as error:
            raise ControlError(f"cannot connect to qmgr at {path}: {error.strerror or error}") from None
        try:
            sock.sendall(frame(Hello(PROTOCOL_VERSION, CLIENT_ROLE, os.getpid(), 0)) + frame(command))
            decoder = FrameDecoder()
            records: list[object] = []
            while len(records) < 2:
                data = sock.recv(65536)
                if not data:
                    raise ControlError("qmgr closed the connection without an answer")
                records += decoder.feed(data)
            handshake_check(records[0], "qmgr")
        except socket.timeout:
            raise ControlError(f"qmgr did not answer within {timeout:g} s") from None
        except ProtocolError as error:
            raise ControlError(f"protocol error from qmgr: {error}") from None
        except OSError as error:
            raise ControlError(f"talking to qmgr: {error.strerror or error}") from None
    if not isinstance(records[1], ControlResult):
        raise ControlError(f"qmgr answered {type(records[1]).__name__}, not ControlResult")
    return records[1]
