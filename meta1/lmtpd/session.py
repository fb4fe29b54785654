"""One LMTP server session, without I/O.

Responsibilities
    Everything lmtpd says and decides for one client connection (RFC 2033): the
    greeting, LHLO and its extensions, the envelope (MAIL, then RCPT for each recipient,
    each checked against the mailbox rules of :mod:`meta1.lmtpd.mailbox`), the content
    (DATA, dot-unstuffed), and after the final dot one reply per accepted recipient, in
    RCPT order (§4.2). The protocol order is the transition table in
    :mod:`meta1.lmtpd.states`; the verbs are the command table in
    :mod:`meta1.lmtpd.commands`; replies, paths, parameters and framing come from
    :mod:`meta1.smtp`, the same code smtps uses.

The interface (sans-I/O)
    The daemon feeds events in and carries out the effects that come back, in order::

        session.start()                -> the greeting
        session.receive(bytes)         -> replies; at the end of the data a Deliver
        session.delivered(outcomes)    -> the replies to the final dot, one per recipient
        session.timeout() / eof() / shutdown()

    Effects: ``Send`` (bytes for the client) and ``Close`` (after the output is written)
    — smtps' effects, from :mod:`meta1.smtp.server`, whose engine both sessions use — and
    :class:`Deliver`: store
    ``request.content`` for each of ``request.recipients``, then call
    :meth:`Session.delivered` with one :class:`~meta1.lmtpd.mailbox.Outcome` per
    recipient, in the same order. The session never touches a socket, a file or the
    clock; the daemon passes its session id in.

Strategies
    * Framing is byte-exact and CRLF-only (RFC 5321 §2.3.8), with the framers smtps uses:
      command lines from a :class:`~meta1.smtp.framing.LineFramer` (an overlong line is
      one error, a bare LF closes the session), DATA from a
      :class:`~meta1.smtp.framing.DataDecoder`, for which only ``<CRLF>.<CRLF>`` ends the
      message — a bare LF or CR never does (SMTP smuggling). Content is kept as the
      decoder returns it; its line ends are the Maildir writer's business (D-LMTPD-3).
    * While the Maildir writes run the session reads nothing (``wants_input`` is False):
      pipelined commands wait in the framer and are answered after the per-recipient
      replies, in order (RFC 2920 §3.2).
    * A recipient is refused at RCPT, never after the data: ``550 5.1.1`` when its
      local part names no valid mailbox. After the data a recipient gets ``250`` only
      when its message is durable in its Maildir's ``new/``, else ``451 4.3.0``; the
      outcomes decide, one each (DESIGN.md's durability rule, applied per recipient).
    * The content is held in memory until the final dot: lmtpd's clients are local
      (smtpc, over a UNIX socket in the queue directory) and send what smtps accepted,
      which ``max_message_size`` bounds (spec/lmtpd.md, D-LMTPD-6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from meta1.lmtpd.commands import COMMANDS, Command, split_command
from meta1.lmtpd.mailbox import DeliveryRequest, LocalRecipient, Outcome, mailbox_for
from meta1.lmtpd.states import COMMAND_STATES, TABLE, Input, State
from meta1.machine import Machine, TraceSink
from meta1.smtp import (DataDecoder, Extensions, LineFramer, MailArgs, R, Reply, SMTPError,
                        parse_mail, parse_rcpt, printable)
from meta1.smtp.server import Close, Send, ServerSession

log = logging.getLogger("meta1.lmtpd")

__all__ = ["Close", "Deliver", "Effect", "Send", "Session", "Settings"]


@dataclass(frozen=True)
class Deliver:
    """Store ``request`` in its recipients' Maildirs, then call ``Session.delivered``."""

    request: DeliveryRequest


Effect = Send | Close | Deliver

#: What LHLO offers (RFC 2033 §4.1 lists ESMTP's extensions as LMTP's). MAIL may carry
#: BODY= and SMTPUTF8 (D-LMTPD-4); SIZE, DSN and AUTH parameters are unknown (555).
EXTENSIONS = Extensions(size=False, eightbitmime=True, smtputf8=True, dsn=False, auth=False)
LHLO_KEYWORDS = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8")


@dataclass(frozen=True)
class Settings:
    """What one session obeys."""

    hostname: str
    #: Longest wait for the client's next command or data (RFC 5321 §4.5.3.2: >= 5m).
    io_timeout: float = 300.0
    #: Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: >= 512).
    max_command_line_length: int = 2048


@dataclass
class _Transaction:
    """The envelope and content of the transaction in progress."""

    mail: MailArgs
    recipients: list[LocalRecipient] = field(default_factory=list)
    content: list[bytes] = field(default_factory=list)


class Session(ServerSession):
    """One client connection's LMTP session (see the module docstring)."""

    log = log
    inputs = Input
    waiting_states = (State.DELIVERING, State.CLOSING)

    def __init__(self, settings: Settings, session_id: str, *, trace: TraceSink | None = None,
                 clock: Callable[[], float] | None = None):
        self.settings = settings
        self.id = session_id
        self.machine: Machine[State, Input] = Machine(
            "lmtpd-session", TABLE, State.CONNECTED, instance=session_id, daemon="lmtpd",
            trace=trace, clock=clock)
        self.framer = LineFramer(settings.max_command_line_length)
        self.tx: _Transaction | None = None
        self.transactions = 0
        self.peer_gone = False
        self.shutdown_pending = False
        self._decoder: DataDecoder | None = None
        self._effects: list[Effect] = []
        self._bad_line_reply: Reply = R.SYNTAX

    # -- public interface ---------------------------------------------------------------

    # state, wants_input, idle_timeout: ServerSession's (no reading and no timer while
    # the Maildir writes run or the session is closing).

    def start(self) -> list[Effect]:
        log.info("%s: connect", self.id)
        self._fire(Input.START)
        return self._take()

    def receive(self, data: bytes) -> list[Effect]:
        if self.state is State.CLOSING:
            return []
        if self.state is State.DATA:
            self._read_data(data)
        else:
            self.framer.feed(data)
        self._process()
        return self._take()

    def delivered(self, outcomes: Sequence[Outcome]) -> list[Effect]:
        """The result of the last :class:`Deliver`: one outcome per recipient, in order."""
        if self.state is not State.DELIVERING:
            raise RuntimeError(f"{self.id}: delivered() in state {self.state.name}")
        assert self.tx is not None
        if len(outcomes) != len(self.tx.recipients):
            raise ValueError(f"{self.id}: {len(outcomes)} outcomes for "
                             f"{len(self.tx.recipients)} recipients")
        self._fire(Input.DELIVERED, outcomes)
        self._process()
        return self._take()

    # -- the engine (ServerSession: timeout, eof, shutdown, _take, _emit, _send, _fire) --

    def _process(self) -> None:
        """Answer buffered command lines as far as the current state allows."""
        while self.state in COMMAND_STATES:
            item = self.framer.pop()
            if item is None:
                return
            self._line(item)
            if self.state is State.DATA:
                # Bytes pipelined after DATA are content: they never pass the command
                # framer again (reliability §3.2).
                self._read_data(self.framer.take_rest())

    def _read_data(self, data: bytes) -> None:
        decoder, tx = self._decoder, self.tx
        assert decoder is not None and tx is not None
        content = decoder.feed(data)
        if content:
            tx.content.append(content)
        if decoder.done:
            self._decoder = None
            self._fire(Input.DATA_END)
            self.framer.feed(decoder.rest)

    def _line(self, item) -> None:
        if self._framing_error(item):
            return
        # surrogateescape keeps 8-bit bytes: the path parsers refuse them, replies and
        # logs show them made printable.
        verb, argument = split_command(item.text.decode("utf-8", "surrogateescape"))
        command = COMMANDS.get(verb)
        if command is None:
            self._fire(Input.UNKNOWN)
        else:
            self._command(command, argument)

    def _command(self, command: Command, argument: str | None) -> None:
        row = self.machine.row(command.input)
        if row is None:
            # A pair missing from the table: out of order (RFC 5321 §4.1.4, RFC 2033 §4.2).
            self._error(R.BAD_SEQUENCE, command.verb)
            return
        if row.action.startswith("refuse_"):
            self._fire(command.input, argument)
            return
        parse = getattr(self, "_parse_" + command.verb.lower(), None)
        try:
            if command.argument == "none" and argument is not None:
                raise SMTPError(R.NO_PARAMETERS)
            if command.argument == "required" and argument is None:
                raise SMTPError(R.LHLO_SYNTAX if command.input is Input.LHLO else R.SYNTAX)
            parsed = parse(argument) if parse is not None else argument
        except SMTPError as error:
            self._error(error.reply, command.verb)
            return
        self._fire(command.input, parsed)

    def _error(self, reply: Reply, verb: str = "") -> None:
        """Answer a refused command."""
        log.info("%s: reject%s: %s", self.id, f" {verb}" if verb else "",
                 reply.encode().decode("ascii", "replace").rstrip())
        self._send(reply)

    # -- argument parsers and checks ----------------------------------------------------------

    def _parse_lhlo(self, argument: str) -> str:
        # Recorded for the log only; like smtps, never used to decide anything.
        name = argument.strip()
        if not name or " " in name:
            raise SMTPError(R.LHLO_SYNTAX)
        return name

    def _parse_mail(self, argument: str) -> MailArgs:
        return parse_mail(argument, EXTENSIONS)

    def _parse_rcpt(self, argument: str) -> LocalRecipient:
        assert self.tx is not None
        path = parse_rcpt(argument, EXTENSIONS, smtputf8=self.tx.mail.smtputf8).path
        assert path.mailbox is not None
        mailbox = mailbox_for(path.mailbox.local_part)
        if mailbox is None:
            raise SMTPError(R.NO_SUCH_MAILBOX.format(address=path.address))
        return LocalRecipient(address=path.address, mailbox=mailbox)

    # -- actions (named by the transition table; those lmtpd shares with smtps — rset,
    #    noop, vrfy, quit, refuse_unknown/bad_line/unframeable, timeout, hangup,
    #    shutdown, shutdown_later, ignore — are ServerSession's) ------------------------------

    def _do_greet(self, _):
        self._send(R.LMTP_GREETING.format(hostname=self.settings.hostname))

    def _do_lhlo(self, name: str):
        self._discard_transaction()
        log.info("%s: lhlo %s", self.id, printable(name))
        self._send(R.HELO.with_lines(self.settings.hostname, *LHLO_KEYWORDS))

    def _do_refuse_not_lmtp(self, _):
        self._error(R.NOT_LMTP)

    def _do_mail(self, mail: MailArgs):
        self.tx = _Transaction(mail=mail)
        log.info("%s: mail from=%s", self.id, printable(str(mail.path)))
        self._send(R.SENDER_OK.format(address=mail.path.address))

    def _do_rcpt(self, recipient: LocalRecipient):
        assert self.tx is not None
        self.tx.recipients.append(recipient)
        log.info("%s: rcpt to=<%s> mailbox=%s", self.id, printable(recipient.address),
                 recipient.mailbox)
        self._send(R.RECIPIENT_OK.format(address=recipient.address))

    def _do_data(self, _):
        self._decoder = DataDecoder()
        self._send(R.START_DATA)

    def _do_deliver(self, _):
        tx = self.tx
        assert tx is not None
        mail = tx.mail
        self._emit(Deliver(DeliveryRequest(
            sender=mail.path.address, recipients=tuple(tx.recipients),
            content=b"".join(tx.content), utf8=mail.smtputf8)))
        tx.content.clear()

    def _do_delivered(self, outcomes: Sequence[Outcome]):
        tx = self.tx
        assert tx is not None
        # RFC 2033 §4.2: one reply per recipient that got a 250 to its RCPT, in RCPT order.
        for recipient, outcome in zip(tx.recipients, outcomes):
            self._send((R.DELIVERED if outcome.durable else R.MAILBOX_WRITE_ERROR)
                       .format(address=recipient.address))
        self.transactions += 1
        self.tx = None
        return self._after_transaction()

    def _do_hangup_while_delivering(self, _):
        self.peer_gone = True
        log.info("%s: lost connection while delivering", self.id)

    # -- helpers ----------------------------------------------------------------------------

    def _discard_transaction(self) -> None:
        self.tx = None
        self._decoder = None

    def _close(self, reason: str, linger: bool = True) -> None:
        log.info("%s: disconnect (%s) transactions=%d", self.id, reason, self.transactions)
        self._emit(Close(linger))
