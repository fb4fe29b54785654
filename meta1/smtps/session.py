"""One SMTP server session, without I/O.

Responsibilities
    Everything smtps says and decides for one client connection: the greeting, EHLO and
    its extensions, the envelope (MAIL, RCPT with their ESMTP parameters), the content
    (DATA with dot-unstuffing, BDAT chunks), the limits, and what goes to the queue. The
    protocol order is the transition table in :mod:`meta1.smtps.states`; the verbs and
    their argument rules are the command table in :mod:`meta1.smtps.commands`; replies,
    paths, parameters and framing come from :mod:`meta1.smtp`.

The interface (sans-I/O)
    The daemon feeds events in and carries out the :class:`Effect` objects that come back,
    in order::

        session.start()                  -> greeting
        session.receive(bytes)           -> replies, content effects, possibly a commit
        session.commit_result(ok, why)   -> the reply to the final dot / last chunk
        session.policy_result(outcome, reply, routes, settings)
                                         -> the answer a CheckPolicy waited for
        session.timeout() / eof() / shutdown()

    Effects: :class:`Send` (bytes for the client), :class:`Close` (after the output is
    written), :class:`OpenContent` (at MAIL) / :class:`WriteContent` /
    :class:`DiscardContent` (the CDB content file), :class:`CommitContent` (make the content durable, hand the
    transaction to qmgr, then call ``commit_result``). A policy verdict is asked of the
    injected :class:`Services` (``policy(session, check)``): it answers at once, or
    returns None and the daemon calls ``policy_result`` later. The session never touches a
    socket, a file or the clock: "now" and new ids come from the injected
    :class:`Services`, so tests run it on a manual clock and fixed ids.

Strategies
    * Framing is byte-exact and CRLF-only (RFC 5321 §2.3.8): command lines come from a
      :class:`~meta1.smtp.framing.LineFramer` that reads an overlong line through to its
      real CRLF as one error, and DATA from a :class:`~meta1.smtp.framing.DataDecoder`
      for which only ``<CRLF>.<CRLF>`` ends the message. Bytes a client pipelines after a
      command stay buffered in the framer, in order, whatever state comes next — nothing
      is ever re-parsed or dropped (reliability §3.2, T01–T06).
    * Content checks (size, line length, bare CR/LF, NUL in the header, hop count) run on
      the unstuffed content as it streams to disk; a failed check is answered only after
      the real end of the data, so the session stays in step with the client (T10).
    * While a commit or a policy verdict is pending the session reads nothing more
      (``wants_input`` is False): pipelined commands wait in the buffer and are answered
      after it, in order (RFC 2920 §3.2, B55).
    * Policy (spec/policy.md): the client is checked before the greeting, the sender
      after MAIL has parsed, each recipient after RCPT has parsed; the verdict's refusal
      is the reply. Where and how the verdict is reached (smar's maps, ``delay_checks``)
      is not the session's business: it asks, waits and answers.
    * An accepted recipient's verdict carries its routes, one per copy (an alias expands
      into several): each is queued as a recipient with its next hop; a copy already
      queued for that address and next hop is not queued again (D-POL-21).
    * A client with an ``smtps_session_conf:`` entry gets its own :class:`Settings` with the
      connect verdict (D-POL-26): they replace the server's before the greeting, so EHLO's
      keywords, SIZE, the limits and the timeout are the entry's for the whole session.
      Without PIPELINING advertised a client must not pipeline (RFC 2920 §3); one that
      does anyway is still read and answered in order, one reply per command, like
      any client whose commands arrive together.
    * Every reply of class 4 or 5 to a command counts toward ``max_errors_per_session``,
      except 452 for too many recipients, which is flow control (RFC 5321 §4.5.3.1.10).
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from meta1.ipc.records import Recipient, ResolvedRecipient, SessionConf, Transaction
from meta1.machine import Machine, TraceSink
from meta1.policy.sessionconf import session_values
from meta1.smtp import (ContentScanner, DataDecoder, Extensions, LineFramer, MailArgs, R,
                        Reply, SMTPError, comment_safe, format_date,
                        parse_mail, parse_rcpt, printable)
from meta1.smtp.address import Mailbox
from meta1.smtps.commands import COMMANDS, Command, split_command
from meta1.smtp.server import Close, Send, ServerSession
from meta1.ids import MAX_RECIPIENT_INDEX, IdUnavailable, recipient_id
from meta1.smtps.states import CHECKING_STATES, TABLE, Input, State

log = logging.getLogger("meta1.smtps")

# -- effects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenContent:
    ta_id: str


@dataclass(frozen=True)
class WriteContent:
    data: bytes


@dataclass(frozen=True)
class DiscardContent:
    """Remove the transaction's content file, if one was opened."""


@dataclass(frozen=True)
class CommitContent:
    """Finish and sync the content, commit ``transaction`` to qmgr, then ``commit_result``.

    ``transaction.content`` is empty here: the content file's path is the daemon's
    business and is filled in by it.
    """

    transaction: Transaction


@dataclass(frozen=True)
class CheckPolicy:
    """A question for the policy: the verdict on ``stage`` — ``"connect"`` (the client),
    ``"mail"`` (the sender, ``sender``) or ``"rcpt"`` (``recipient``)."""

    stage: str
    sender: str | None = None
    recipient: str | None = None
    mailbox: Mailbox | None = None     # the recipient as parsed here, for a check made in smtps


class Outcome(enum.Enum):
    """A policy verdict as the session acts on it."""

    OK = "ok"                # go on
    REFUSED = "refused"      # answer the verdict's reply (4xx/5xx); at connect: 554, then QUIT only
    CLOSE = "close"          # answer the verdict's reply (421) and close
    DISCARD = "discard"      # go on, but the transaction is accepted and thrown away


Effect = Send | Close | OpenContent | WriteContent | DiscardContent | CommitContent
#: (outcome, reply), (outcome, reply, routes) or (outcome, reply, routes, settings): an
#: accepted recipient's copies, each with its next hop (D-POL-21; without routes the
#: recipient is queued as given, unrouted); an accepted client's own settings (D-POL-26).
Verdict = (tuple[Outcome, "Reply | None"] | tuple[Outcome, "Reply | None", tuple[ResolvedRecipient, ...]]
           | tuple[Outcome, "Reply | None", tuple[ResolvedRecipient, ...], "Settings | None"])


class Services(Protocol):
    """What a session needs from the world, injected."""

    def now_us(self) -> int:
        """Wall-clock time in microseconds since the epoch (Received date, arrival)."""

    def new_id(self) -> str:
        """A fresh session/transaction id (:mod:`meta1.ids`); may raise IdUnavailable."""

    def storage_ok(self) -> bool:
        """False when the queue file system is below its free-space reserve."""

    def policy(self, session: "Session", check: CheckPolicy) -> Verdict | None:
        """The verdict on ``check`` if it is known at once; else None, and the daemon
        calls ``session.policy_result`` when it comes."""


@dataclass(frozen=True)
class Settings:
    """The configuration one session obeys (an ``smtps`` section, resolved)."""

    hostname: str
    io_timeout: float = 300.0
    max_message_size: int = 10 << 20
    max_rcpts: int = 1000
    max_errors: int = 20
    max_junk: int = 100
    max_command_line_length: int = 2048
    max_data_line_length: int = 998
    max_hops: int = 100
    eightbitmime: bool = False
    pipelining: bool = True
    chunking: bool = True
    dsn: bool = True
    smtputf8: bool = True

    @classmethod
    def from_config(cls, node, hostname: str, conf: SessionConf | None = None) -> "Settings":
        """The settings of an smtps section (``node``); with ``conf``, those of a session
        whose client has an ``smtps_session_conf:`` entry (D-POL-26): the section's values
        with the entry's laid over."""
        values = node.values if conf is None else session_values(node.values, conf)
        flags = values["flags"]
        return cls(hostname=hostname, io_timeout=float(values["io_timeout"]),
                   max_message_size=values["max_message_size"],
                   max_rcpts=values["max_rcpts_per_transaction"],
                   max_errors=values["max_errors_per_session"], max_junk=values["max_junk_commands"],
                   max_command_line_length=values["max_command_line_length"],
                   max_data_line_length=values["max_data_line_length"],
                   eightbitmime=flags["8bitmime"], pipelining=flags["pipelining"],
                   chunking=flags["chunking"], dsn=flags["dsn"],
                   # RFC 6531 §3.1: a server announcing SMTPUTF8 must announce 8BITMIME.
                   smtputf8=flags["smtputf8"] and flags["8bitmime"])


#: HELO sessions get no service extensions: every MAIL/RCPT parameter is unknown.
NO_EXTENSIONS = Extensions(size=False, eightbitmime=False, smtputf8=False, dsn=False, auth=False)
BDAT_ARGUMENT = re.compile(r"^([0-9]{1,20})(?: +(LAST))?$", re.IGNORECASE)
#: How much of a client-supplied name goes into a Received header (RFC 5321 §4.5.3.1.2).
TRACE_NAME_LIMIT = 255


@dataclass
class _Transaction:
    """The envelope and content bookkeeping of the transaction in progress."""

    ta_id: str
    mail: MailArgs
    recipients: list[Recipient] = field(default_factory=list)
    rejected: int = 0
    discard: bool = False         # the policy said DISCARD: accept, then throw away
    content_open: bool = False
    content_size: int = 0
    scanner: ContentScanner | None = None
    routed: set[tuple[str, str]] = field(default_factory=set)   # (next hop, route_key) queued


def route_key(address: str) -> str:
    """An address as copies are compared: the domain without case, the local part as
    given (RFC 5321 §2.4: only the receiving host may interpret it)."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


class Session(ServerSession):
    """One client connection's SMTP session (see the module docstring)."""

    log = log
    inputs = Input
    waiting_states = (State.COMMITTING, State.CLOSING, *CHECKING_STATES)

    def __init__(self, settings: Settings, services: Services, *, client_address: str,
                 client_port: int = 0, trace: TraceSink | None = None,
                 clock: Callable[[], float] | None = None):
        self.settings = settings
        self.services = services
        self.client_address = client_address
        self.client_port = client_port
        self.id = services.new_id()
        self.machine: Machine[State, Input] = Machine(
            "smtps-session", TABLE, State.CONNECTED, instance=self.id, daemon="smtps",
            trace=trace, clock=clock)
        self.framer = LineFramer(settings.max_command_line_length)
        self.helo: str | None = None
        self.esmtp = False
        self.tx: _Transaction | None = None
        self.errors = 0
        self.junk = 0
        self.commands = 0
        self.transactions = 0
        self.peer_gone = False
        self.shutdown_pending = False
        self._effects: list[Effect] = []
        self._decoder: DataDecoder | None = None
        self._chunk_left = 0
        self._chunk_size = 0
        self._chunk_last = False
        self._skip_octets = 0
        self._raw = bytearray()
        self._failure_reply: Reply | None = None
        self._commit_failure_reason = ""
        self._limit_reply: Reply = R.TOO_MANY_ERRORS
        self._bad_line_reply: Reply = R.SYNTAX
        self._close_reason = ""
        self._checked: object = None          # the parsed MAIL/RCPT waiting for its verdict
        self._policy_reply: Reply | None = None
        self._policy_routes: tuple[ResolvedRecipient, ...] = ()
        self._discard_requested = False       # DISCARD for the sender or recipient checked
        self.discard_all = False              # DISCARD at connect: every transaction

    # -- public interface ---------------------------------------------------------------

    # state, wants_input, idle_timeout: ServerSession's (no reading and no timer while
    # a commit is pending or the session is closing).

    def start(self) -> list[Effect]:
        log.info("%s: connect from %s", self.id, self._client_text())
        self._fire(Input.START)
        return self._take()

    def receive(self, data: bytes) -> list[Effect]:
        if self.state is State.CLOSING:
            return []
        if self._skip_octets or self.state in (State.DATA, State.CHUNKING):
            # Message content never passes through the command framer: a long line of
            # content is not an overlong command, and a bare LF in it is not a protocol
            # error (it is judged after the end of the data).
            self._raw += data
        else:
            self.framer.feed(data)
        self._process()
        return self._take()

    def policy_result(self, outcome: Outcome, reply: Reply | None = None,
                      routes: tuple[ResolvedRecipient, ...] = (),
                      settings: Settings | None = None) -> list[Effect]:
        """The verdict :meth:`Services.policy` did not know at once; ``reply`` for REFUSED
        and CLOSE, ``routes`` for an accepted recipient, ``settings`` for an accepted
        client with its own (an ``smtps_session_conf:`` entry, D-POL-26)."""
        self._fire(self._verdict_input(outcome, reply, routes, settings))
        self._process()
        return self._take()

    def commit_result(self, ok: bool, reason: str = "") -> list[Effect]:
        if not ok:
            self._failure_reply = R.QUEUE_ERROR
            self._commit_failure_reason = reason
        self._fire(Input.COMMITTED if ok else Input.COMMIT_FAILED)
        self._process()
        return self._take()

    # -- the engine (ServerSession: timeout, eof, shutdown, _take, _emit, _send, _fire) --

    def _process(self) -> None:
        """Consume buffered input as far as the current state allows."""
        while True:
            state = self.state
            if self._skip_octets:
                if not self._skip():
                    return
            elif state is State.DATA:
                if not self._read_data():
                    return
            elif state is State.CHUNKING:
                if not self._read_chunk():
                    return
            elif state in (State.GREETED, State.READY, State.MAIL, State.RCPT, State.CHUNKED, State.REFUSED):
                item = self.framer.pop()
                if item is None:
                    return
                self._line(item)
            else:
                return

    def _take_raw(self) -> bytes:
        """Everything buffered, in order: what the framer held, then content-mode input."""
        data = self.framer.take_rest()
        if self._raw:
            data = bytes(data) + bytes(self._raw)
            self._raw.clear()
        return data

    def _skip(self) -> bool:
        rest = self._take_raw()
        used = min(self._skip_octets, len(rest))
        self._skip_octets -= used
        self.framer.feed(rest[used:])
        return self._skip_octets == 0

    def _read_data(self) -> bool:
        assert self._decoder is not None
        content = self._decoder.feed(self._take_raw())
        if content:
            self._content(content)
        if not self._decoder.done:
            return False
        self.framer.feed(self._decoder.rest)
        self._decoder = None
        self._fire(Input.DATA_END)
        return True

    def _read_chunk(self) -> bool:
        rest = self._take_raw()
        used = min(self._chunk_left, len(rest))
        if used:
            self._content(rest[:used])
            self._chunk_left -= used
        self.framer.feed(rest[used:])
        if self._chunk_left:
            return False
        self._fire(Input.LAST_CHUNK_END if self._chunk_last else Input.CHUNK_END)
        return True

    def _content(self, data: bytes) -> None:
        tx = self.tx
        assert tx is not None and tx.scanner is not None
        tx.scanner.feed(data)
        if not tx.scanner.too_big:
            # Past the size limit nothing more is written: the data is read through to its
            # end and the transaction is refused then (T10: memory and disk stay bounded).
            tx.content_size += len(data)
            self._emit(WriteContent(data))

    def _line(self, item) -> None:
        self.commands += 1
        if self._framing_error(item):
            return
        # surrogateescape keeps 8-bit bytes: they are refused where they matter (paths)
        # and made printable where they are shown (Received, logs) — T16.
        verb, argument = split_command(item.text.decode("utf-8", "surrogateescape"))
        command = COMMANDS.get(verb)
        if command is None:
            self._junk()
            self._fire(Input.UNKNOWN)
            return
        if command.junk:
            self._junk()
            if self.state is State.CLOSING:
                return
        self._command(command, argument)

    def _junk(self) -> None:
        self.junk += 1
        if self.junk > self.settings.max_junk:
            self._limit_reply = R.TOO_MANY_JUNK
            self._fire(Input.TOO_MANY_ERRORS)

    def _command(self, command: Command, argument: str | None) -> None:
        row = self.machine.row(command.input)
        if row is None:
            self._error(R.BAD_SEQUENCE)
            return
        if row.action.startswith("refuse_"):
            self._fire(command.input, argument)
            return
        if command.argument == "none" and argument is not None:
            self._error(R.NO_PARAMETERS)
            return
        parse = getattr(self, "_parse_" + command.verb.lower(), None)
        try:
            if command.argument == "required" and argument is None:
                raise SMTPError(R.HELO_SYNTAX if command.input in (Input.HELO, Input.EHLO)
                                else R.SYNTAX)
            parsed = parse(argument) if parse is not None else argument
        except _Unframeable as error:
            self._unframeable(error.reply)
            return
        except SMTPError as error:
            self._error(error.reply, command.verb)
            return
        self._fire(command.input, parsed)

    def _error(self, reply: Reply, verb: str = "") -> None:
        """Answer a refused command; count it toward ``max_errors_per_session``."""
        log.info("%s: reject%s: %s", self.id, f" {verb}" if verb else "",
                 reply.encode().decode("ascii", "replace").rstrip())
        self._send(reply)
        if reply is R.TOO_MANY_RECIPIENTS:
            return
        self.errors += 1
        if self.errors >= self.settings.max_errors and self.state is not State.CLOSING:
            self._limit_reply = R.TOO_MANY_ERRORS
            self._fire(Input.TOO_MANY_ERRORS)

    # -- argument parsers and checks --------------------------------------------------------

    def _extensions(self) -> Extensions:
        s = self.settings
        if not self.esmtp:
            return NO_EXTENSIONS
        return Extensions(size=True, eightbitmime=s.eightbitmime, smtputf8=s.smtputf8,
                          dsn=s.dsn, auth=False)

    def _parse_helo(self, argument: str) -> str:
        # RFC 5321 §4.1.1.1 wants a domain or address literal; clients send all sorts.
        # The name is recorded, made printable where shown, and never used to decide.
        name = argument.strip()
        if not name or " " in name:
            raise SMTPError(R.HELO_SYNTAX)
        return name

    _parse_ehlo = _parse_helo

    def _parse_mail(self, argument: str) -> tuple[MailArgs, str]:
        args = parse_mail(argument, self._extensions())
        if args.size is not None and args.size > self.settings.max_message_size:
            raise SMTPError(R.SIZE_EXCEEDED)      # RFC 1870 §6.1
        if not self.services.storage_ok():
            raise SMTPError(R.INSUFFICIENT_STORAGE)   # reliability R6, Postfix 452 4.3.1
        try:
            ta_id = self.services.new_id()
        except IdUnavailable as error:
            log.error("%s: no transaction id: %s", self.id, error)
            raise SMTPError(R.QUEUE_ERROR) from None
        return args, ta_id

    def _parse_rcpt(self, argument: str):
        assert self.tx is not None
        try:
            args = parse_rcpt(argument, self._extensions(), smtputf8=self.tx.mail.smtputf8)
        except SMTPError:
            self.tx.rejected += 1
            raise
        if len(self.tx.recipients) >= self.settings.max_rcpts:
            self.tx.rejected += 1
            raise SMTPError(R.TOO_MANY_RECIPIENTS)    # RFC 5321 §4.5.3.1.10: 452, not 552
        return args

    def _parse_bdat(self, argument: str) -> tuple[int, bool]:
        size, last = self._bdat_size(argument)
        if not (self.esmtp and self.settings.chunking):
            self._skip_octets = size
            raise SMTPError(R.NOT_IMPLEMENTED)
        return size, last

    def _bdat_size(self, argument: str | None) -> tuple[int, bool]:
        match = BDAT_ARGUMENT.match(argument or "")
        if match is None:
            # The octets that follow cannot be framed without a size: answering and
            # reading on would parse message text as commands. Close instead.
            raise _Unframeable()
        return int(match.group(1)), match.group(2) is not None

    def _parse_vrfy(self, argument: str) -> str:
        return argument

    def _parse_starttls(self, argument: None) -> None:
        # Not advertised: no tls section yet (STARTTLS comes with the TLS issue).
        raise SMTPError(R.NOT_IMPLEMENTED)

    def _parse_auth(self, argument: str) -> None:
        # Not advertised: no SASL configured (AUTH comes with a later issue).
        raise SMTPError(R.AUTH_UNAVAILABLE)

    # -- actions (named by the transition table; those smtps shares with lmtpd — rset,
    #    noop, vrfy, quit, refuse_unknown/bad_line/unframeable, timeout, hangup,
    #    shutdown, shutdown_later, ignore — are ServerSession's) ------------------------------

    def _do_check_client(self, _):
        return self._ask(CheckPolicy("connect"))

    def _do_check_sender(self, mail):
        self._checked = mail
        self._discard_requested = False
        return self._ask(CheckPolicy("mail", sender=mail[0].path.address))

    def _do_check_rcpt(self, args):
        self._checked = args
        self._discard_requested = False
        return self._ask(CheckPolicy("rcpt", sender=self.tx.mail.path.address if self.tx else None,
                                     recipient=args.path.address, mailbox=args.path.mailbox))

    def _ask(self, check: CheckPolicy) -> Input | None:
        """The verdict's input if the services know it at once; else wait (None)."""
        verdict = self.services.policy(self, check)
        return None if verdict is None else self._verdict_input(*verdict)

    def _verdict_input(self, outcome: Outcome, reply: Reply | None,
                       routes: tuple[ResolvedRecipient, ...] = (), settings: Settings | None = None) -> Input:
        if settings is not None and self.state is State.CHECKING_CLIENT and outcome in (Outcome.OK, Outcome.DISCARD):
            self._use_settings(settings)
        if outcome is not Outcome.REFUSED and outcome is not Outcome.CLOSE and self.tx is not None and \
                self.state in (State.CHECKING_FIRST_RCPT, State.CHECKING_RCPT) and \
                len(self.tx.recipients) + max(1, len(routes)) > min(self.settings.max_rcpts, MAX_RECIPIENT_INDEX + 1):
            # An alias expands into more copies than the transaction may hold: the limit
            # counts queued recipients, so that the ids and qmgr's work stay bounded.
            outcome, reply = Outcome.REFUSED, R.TOO_MANY_RECIPIENTS
        self._policy_routes = routes
        if outcome is Outcome.DISCARD:
            if self.state is State.CHECKING_CLIENT:
                self.discard_all = True
            else:
                self._discard_requested = True
            outcome = Outcome.OK
        self._policy_reply = reply
        return {Outcome.OK: Input.POLICY_OK, Outcome.REFUSED: Input.POLICY_REFUSED,
                Outcome.CLOSE: Input.POLICY_CLOSE}[outcome]

    def _use_settings(self, settings: Settings) -> None:
        """The client's own settings (D-POL-26), taken before the greeting, so that the
        whole dialogue obeys them: EHLO's keywords and SIZE, the limits, the timeout."""
        log.info("%s: session settings of the client's smtps_session_conf: entry", self.id)
        self.settings = settings
        # The line limit is the framer's: a new one, with whatever the client sent early.
        early = self.framer.take_rest()
        self.framer = LineFramer(settings.max_command_line_length)
        self.framer.feed(early)

    def _do_refuse_by_policy(self, _):
        reply = self._policy_reply or R.LOCAL_ERROR.format(hostname=self.settings.hostname)
        checked, self._checked = self._checked, None
        if self.state is State.REFUSED:          # the client, before the greeting (RFC 5321 §3.1)
            log.info("%s: refused: %s", self.id, reply.encode().decode("ascii", "replace").rstrip())
            self._send(reply)
            return
        if self.state is State.READY:            # the sender: no transaction begins
            self._error(reply, "MAIL")
            return
        assert self.tx is not None
        self.tx.rejected += 1
        self._error(reply, "RCPT")

    def _do_close_by_policy(self, _):
        reply = self._policy_reply or R.LOCAL_ERROR.format(hostname=self.settings.hostname)
        self._checked = None
        self._send(reply)
        self._discard_transaction()
        self._close("refused by policy")

    def _do_refuse_no_service(self, _):
        self._send(R.NO_SERVICE)

    def _do_greet(self, _):
        self._send(R.GREETING.format(hostname=self.settings.hostname))

    def _do_helo(self, name: str):
        self._discard_transaction()
        self.helo, self.esmtp = name, False
        self._send(R.HELO.format(hostname=self.settings.hostname))

    def _do_ehlo(self, name: str):
        self._discard_transaction()
        self.helo, self.esmtp = name, True
        self._send(self._ehlo_reply())

    def _ehlo_reply(self) -> Reply:
        s = self.settings
        lines = [s.hostname]
        if s.pipelining:
            lines.append("PIPELINING")
        lines.append(f"SIZE {s.max_message_size}")
        if s.eightbitmime:
            lines.append("8BITMIME")
        lines.append("ENHANCEDSTATUSCODES")
        if s.dsn:
            lines.append("DSN")
        if s.smtputf8:
            lines.append("SMTPUTF8")
        if s.chunking:
            lines.append("CHUNKING")
        lines.append("HELP")
        return R.HELO.with_lines(*lines)

    def _do_help(self, _):
        self._send(R.HELP)

    def _do_mail(self, _):
        args, ta_id = self._checked
        self._checked = None
        self.tx = _Transaction(ta_id=ta_id, mail=args, content_open=True,
                               discard=self.discard_all or self._discard_requested)
        # The content file is asked for now, two round trips before the content comes:
        # the daemon creates it off the event loop meanwhile (file creation waits on the
        # file system's journal). A transaction that never reaches DATA discards it.
        self._emit(OpenContent(ta_id))
        log.info("%s: ta=%s mail from=%s%s", self.id, self.tx.ta_id, printable(str(args.path)),
                 f" size={args.size}" if args.size is not None else "")
        self._send(R.SENDER_OK.format(address=args.path.address))

    def _do_rcpt(self, _):
        args, self._checked = self._checked, None
        tx = self.tx
        assert tx is not None
        if self._discard_requested:
            tx.discard = True
            self._discard_requested = False
        routes, self._policy_routes = self._policy_routes, ()
        address = args.path.address
        orcpt_type, orcpt = args.orcpt if args.orcpt is not None else (None, None)
        if not routes:
            routes = (ResolvedRecipient("", address),)
        elif orcpt is None and any(route.address != address for route in routes):
            # The recipient as the client gave it, for the DSNs of the copies an alias
            # made (RFC 3461 §4.2: an ORCPT may be added when none came; D-POL-21).
            orcpt_type, orcpt = "rfc822", address
        for route in routes:
            if (route.nexthop, route_key(route.address)) in tx.routed:
                # One copy per address and next hop in a transaction, the first one's DSN
                # parameters standing: two aliases that reach the same person, or a
                # recipient given twice, deliver once (D-POL-21).
                log.info("%s: rcpt to=<%s>: a copy is queued already", self.id, printable(route.address))
                continue
            tx.routed.add((route.nexthop, route_key(route.address)))
            rcpt_id = recipient_id(tx.ta_id, len(tx.recipients))
            tx.recipients.append(Recipient(rcpt_id=rcpt_id, address=route.address, notify=args.notify,
                                           orcpt_type=orcpt_type, orcpt=orcpt, nexthop=route.nexthop))
            via = f" via {route.nexthop}" if route.nexthop else ""
            if route.address == address:
                log.info("%s: rcpt to=%s%s", rcpt_id, printable(str(args.path)), via)
            else:
                log.info("%s: rcpt to=<%s>%s (alias of %s)", rcpt_id, printable(route.address), via,
                         printable(str(args.path)))
        self._send(R.RECIPIENT_OK.format(address=address))

    def _do_data(self, _):
        self._start_content()
        self._decoder = DataDecoder()
        self._send(R.START_DATA)

    def _do_chunk(self, chunk: tuple[int, bool]):
        size, last = chunk
        if self.tx is not None and self.tx.scanner is None:
            self._start_content()
        self._chunk_size, self._chunk_left, self._chunk_last = size, size, last

    def _do_end_of_chunk(self, _):
        self._send(R.CHUNK_OK.format(size=self._chunk_size))

    def _start_content(self) -> None:
        """DATA or the first BDAT: the content begins with our Received header."""
        tx = self.tx
        assert tx is not None
        tx.scanner = ContentScanner(max_size=self.settings.max_message_size,
                                    max_line_length=self.settings.max_data_line_length,
                                    max_hops=self.settings.max_hops)
        header = self._received_header(tx)
        tx.content_size += len(header)
        self._emit(WriteContent(header))

    def _received_header(self, tx: _Transaction) -> bytes:
        """The one trace header this hop adds (RFC 5321 §4.4), attacker text made safe (S9)."""
        helo = comment_safe(self.helo or "").replace(" ", "?")[:TRACE_NAME_LIMIT] or "unknown"
        protocol = ("UTF8SMTP" if tx.mail.smtputf8 else "ESMTP") if self.esmtp else "SMTP"
        client = (f"IPv6:{self.client_address}" if ":" in self.client_address
                  else self.client_address)
        lines = [f"Received: from {helo} ([{client}])",
                 f"\tby {self.settings.hostname} (meta1) with {protocol} id {tx.ta_id}"]
        date = format_date(self.services.now_us() // 1_000_000)
        if len(tx.recipients) == 1 and tx.recipients[0].address.isascii():
            lines.append(f"\tfor <{printable(tx.recipients[0].address)}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def _do_end_of_data(self, _):
        tx = self.tx
        assert tx is not None and tx.scanner is not None
        verdict = tx.scanner.finish()
        if verdict is not None:
            self._failure_reply = verdict
            self._commit_failure_reason = verdict.lines[0]
            return Input.COMMIT_FAILED
        if tx.discard:
            # The policy said DISCARD: the client is told it was accepted; nothing is queued.
            log.info("%s: ta=%s discarded by policy size=%d nrcpts=%d", self.id, tx.ta_id, tx.content_size,
                     len(tx.recipients))
            self._emit(DiscardContent())
            tx.content_open = False
            return Input.COMMITTED
        mail = tx.mail
        self._emit(CommitContent(Transaction(
            ta_id=tx.ta_id, session_id=self.id, arrival=self.services.now_us(),
            sender=mail.path.address, size=tx.content_size, body=mail.body,
            smtputf8=mail.smtputf8, ret=mail.ret, envid=mail.envid, auth=mail.auth,
            client_address=self.client_address, client_port=self.client_port,
            helo=self.helo or "", recipients=tuple(tx.recipients), content="")))
        return None

    def _do_accepted(self, _):
        tx = self.tx
        assert tx is not None
        log.info("%s: ta=%s accepted size=%d nrcpts=%d", self.id, tx.ta_id, tx.content_size,
                 len(tx.recipients))
        self.transactions += 1
        self.tx = None
        self._send(R.ACCEPTED.format(id=tx.ta_id))
        return self._after_transaction()

    def _do_not_accepted(self, _):
        reply = self._failure_reply or R.QUEUE_ERROR
        tx = self.tx
        log.warning("%s: ta=%s not accepted: %s", self.id, tx.ta_id if tx else "-",
                    self._commit_failure_reason or reply.lines[0])
        self._emit(DiscardContent())
        self.tx = None
        self._failure_reply, self._commit_failure_reason = None, ""
        self._error(reply)
        if self.state is State.CLOSING:
            return None
        return self._after_transaction()

    def _do_hangup_during_commit(self, _):
        # The commit goes on: if it succeeds the message is queued although the client
        # never saw the 250 — the duplicate window W1 of the reliability reference.
        self.peer_gone = True
        log.info("%s: lost connection while committing %s", self.id,
                 self.tx.ta_id if self.tx else "-")

    def _do_refuse_need_helo(self, argument):
        self._error(R.NEED_HELO)

    def _do_refuse_need_mail(self, argument):
        self._error(R.NEED_MAIL)

    def _do_refuse_nested_mail(self, argument):
        self._error(R.NESTED_MAIL)

    def _do_refuse_bad_sequence(self, argument):
        self._error(R.BAD_SEQUENCE)

    def _do_refuse_mixed_data(self, argument):
        self._error(R.BDAT_MIX)

    def _do_refuse_in_transaction(self, argument):
        self._error(R.BAD_SEQUENCE)

    def _do_refuse_no_recipients(self, argument):
        # T08: DATA after every RCPT was refused is 554; DATA before any RCPT is 503.
        tx = self.tx
        self._error(R.NO_VALID_RECIPIENTS if tx is not None and tx.rejected else R.NEED_RCPT)

    def _do_refuse_chunk_need_mail(self, argument):
        return self._refuse_chunk(argument, R.NEED_MAIL)

    def _do_refuse_chunk_no_recipients(self, argument):
        tx = self.tx
        return self._refuse_chunk(argument, R.NO_VALID_RECIPIENTS if tx is not None and tx.rejected
                                  else R.NEED_RCPT)

    def _refuse_chunk(self, argument, reply: Reply) -> Input | None:
        # RFC 3030 §2: the chunk's octets follow the command whatever the answer; they
        # are read and thrown away so that none of them is taken for a command.
        try:
            size, _last = self._bdat_size(argument)
        except _Unframeable as error:
            self._bad_line_reply = error.reply
            return Input.UNFRAMEABLE
        self._skip_octets = size
        self._error(reply)
        return None

    def _do_starttls(self, _):   # pragma: no cover - unreachable until TLS is configured
        raise AssertionError("STARTTLS is refused by its check in this version")

    def _do_auth(self, _):   # pragma: no cover - unreachable until SASL is configured
        raise AssertionError("AUTH is refused by its check in this version")

    def _do_tls_established(self, _):   # pragma: no cover - later issue
        self._discard_transaction()
        self.helo, self.esmtp = None, False

    def _do_authenticated(self, _):   # pragma: no cover - later issue
        pass

    def _do_too_many_errors(self, _):
        self._send(self._limit_reply)
        self._discard_transaction()
        self._close("too many errors" if self._limit_reply is R.TOO_MANY_ERRORS
                    else "too many junk commands")

    # -- helpers ----------------------------------------------------------------------------

    def _discard_transaction(self) -> None:
        if self.tx is not None and self.tx.content_open:
            self._emit(DiscardContent())
        self.tx = None
        self._decoder = None
        self._chunk_left = 0

    def _close(self, reason: str, linger: bool = True) -> None:
        log.info("%s: disconnect from %s (%s) commands=%d transactions=%d errors=%d",
                 self.id, self._client_text(), reason, self.commands, self.transactions,
                 self.errors)
        self._emit(Close(linger))

    def _client_text(self) -> str:
        return (f"[{self.client_address}]:{self.client_port}" if self.client_port
                else f"[{self.client_address}]")


class _Unframeable(SMTPError):
    """BDAT without a readable size: answered, and the connection closed."""

    def __init__(self):
        super().__init__(R.BDAT_SYNTAX)
