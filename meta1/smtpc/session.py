"""One SMTP or LMTP client session, without I/O.

Responsibilities
    Everything smtpc says and decides on one connection to a server: reading the greeting,
    EHLO (HELO when EHLO is refused with 5xx) or LHLO, the server's extensions, then any
    number of transactions — MAIL, RCPT, DATA or BDAT — each ending with one result per
    recipient, RSET after a transaction the server may still hold open, and QUIT. The
    protocol order is the transition table in :mod:`meta1.smtpc.states`; replies come
    from the strict parser :mod:`meta1.smtp.replyparser`.

The interface (sans-I/O)
    The driver (smtpc's daemon, or a test) feeds events in and carries out the
    :class:`Effect` objects that come back, in order::

        session.connected()              -> nothing yet (the greeting is awaited)
        session.receive(bytes)           -> commands to send, results, Ready, Close …
        session.send(delivery)           -> the transaction's first command(s) or a refusal
        session.content(bytes, last=…)   -> content to send (DATA or BDAT framing)
        session.closed() / timeout() / quit() / abort()

    Effects: :class:`Send` (bytes for the server), :class:`Close` (after the output is
    written), :class:`NeedContent` (feed ``content()`` now), :class:`RecipientResult`
    (one recipient's final answer), :class:`TransactionResult` (all of them, once per
    ``send``), :class:`Ready` (another ``send`` may come), :class:`SessionEnded` (once,
    with the reason). ``waiting_for`` tells the driver which timer to run: ``REPLY``
    (``IO_timeout``), ``FINAL_REPLY`` (``final_dot_timeout``, RFC 5321 §4.5.3.2.6),
    ``CONTENT`` or ``TRANSACTION`` (the driver's own business).

Results
    A result carries a :class:`~meta1.smtp.replies.Reply` and whether it came from the
    server (``local=False``) or from smtpc (connection lost, timeout, protocol error, a
    local refusal). qmgr reads the class: 2xx delivered, 4xx deferred, 5xx bounced.
    In SMTP a RCPT 2xx is not final: the accepted recipients share the reply to the final
    dot (or ``BDAT LAST``); in LMTP each accepted recipient gets its own reply there
    (RFC 2033 §4.2). A recipient never answered — the connection was lost, a timer ran
    out, the server broke the protocol — gets ``451 4.4.2`` / ``451 4.5.0``: temporary,
    as RFC 5321 §3.8 asks (a loss after the dot can give a duplicate; that is the
    protocol's window, not ours).

Strategies
    * PIPELINING only when offered (RFC 2920; OpenSMTPD drops clients that pipeline
      without it): MAIL, every RCPT and DATA leave in one write; the replies are matched
      to the commands in order by a queue of outstanding commands, and the parser is told
      how many replies are due, so an extra reply is a protocol error, never the answer to
      the next command.
    * Extensions are used only when offered: SIZE (a message over the server's limit is
      refused here, 552 5.3.4), 8BITMIME (an 8-bit message to a server without it is
      refused, 554 5.6.3, never sent raw), SMTPUTF8 (553 5.6.7), DSN (RET, ENVID, NOTIFY,
      ORCPT are dropped otherwise; RFC 3461 §4 leaves that to the relay), CHUNKING (BDAT,
      RFC 3030; else DATA). A refused transaction sends nothing and the connection stays
      usable.
    * Content arrives in pieces of any size. :class:`ContentEncoder` makes every line end
      in CRLF (a stray CR or LF becomes CRLF, so no peer ever sees a bare-LF end-of-data
      candidate: outbound smuggling, reliability §3), dot-stuffs for DATA across piece
      boundaries, and ends the content with CRLF. BDAT chunks are collected to
      ``chunk_size`` and sent one at a time (D-SMTPC-6).
    * RSET is sent as soon as a transaction ends without a final reply (refused MAIL, no
      recipient accepted, refused DATA or chunk), so ``Ready`` always means the server
      holds no transaction (D-SMTPC-5).
    * The session never reads the clock, a socket or a file; ``trace`` records every
      transition (``meta1.machine``).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import Callable

from meta1.ipc.records import Recipient, Transaction
from meta1.machine import Machine, TraceSink
from meta1.smtp.params import xtext_encode
from meta1.smtp.replies import Reply
from meta1.smtp.replyparser import MAX_REPLY_LINES, ReplyError, ReplyParser
from meta1.smtp.text import printable
from meta1.smtpc.states import LOCAL_INPUTS, TABLE, Input, State

# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One transaction for one server: the part of qmgr's envelope smtpc needs."""

    sender: str                          # "" for the null reverse path
    recipients: tuple[Recipient, ...]
    size: int = 0                        # octets of content (for SIZE=, RFC 1870)
    eight_bit: bool = False              # needs BODY=8BITMIME (RFC 6152)
    smtputf8: bool = False               # needs SMTPUTF8 (RFC 6531)
    ret: str | None = None               # RET= (RFC 3461 §4.3)
    envid: str | None = None             # ENVID=, decoded (RFC 3461 §4.4)
    ta_id: str = ""

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a delivery needs at least one recipient")

    @classmethod
    def from_transaction(cls, tx: Transaction,
                         recipients: tuple[Recipient, ...] | None = None) -> Delivery:
        """The delivery of ``recipients`` (default: all) of a queued transaction."""
        return cls(sender=tx.sender, recipients=tx.recipients if recipients is None else recipients,
                   size=tx.size, eight_bit=tx.body in ("8BITMIME", "BINARYMIME"),
                   smtputf8=tx.smtputf8, ret=tx.ret, envid=tx.envid, ta_id=tx.ta_id)


_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*", re.ASCII)


@dataclass(frozen=True)
class ServerExtensions:
    """What the server's EHLO/LHLO reply offers (RFC 5321 §4.1.1.1). HELO offers nothing."""

    esmtp: bool = False
    pipelining: bool = False
    size: int | None = None              # None: SIZE not offered; 0: offered, no fixed limit
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    chunking: bool = False
    enhancedstatuscodes: bool = False
    starttls: bool = False
    keywords: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, reply: Reply) -> ServerExtensions:
        """Keywords of every line after the first; lines that are no keyword are ignored."""
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            word, _, params = line.strip(" ").partition(" ")
            if _KEYWORD.fullmatch(word):
                keywords.setdefault(word.upper(), params.strip(" "))
        size_param = keywords.get("SIZE")
        return cls(esmtp=True, pipelining="PIPELINING" in keywords,
                   size=None if size_param is None else int(size_param) if size_param.isdigit() else 0,
                   eightbitmime="8BITMIME" in keywords, smtputf8="SMTPUTF8" in keywords,
                   dsn="DSN" in keywords, chunking="CHUNKING" in keywords,
                   enhancedstatuscodes="ENHANCEDSTATUSCODES" in keywords,
                   starttls="STARTTLS" in keywords, keywords=frozenset(keywords))


@dataclass(frozen=True)
class Settings:
    """How one session behaves (smtpc's configuration, resolved by the daemon)."""

    helo_name: str
    lmtp: bool = False
    use_pipelining: bool = True
    use_chunking: bool = True
    chunk_size: int = 1 << 20            # octets of content per BDAT chunk (not the last)
    max_reply_line: int = 512            # RFC 5321 §4.5.3.1.5
    max_reply_lines: int = MAX_REPLY_LINES

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")


class Wait(enum.Enum):
    """What the session waits for: the driver picks its timer from it."""

    CONNECT = "connect"
    REPLY = "reply"                      # IO_timeout
    FINAL_REPLY = "final reply"          # final_dot_timeout
    CONTENT = "content"                  # the driver's next content() call
    TRANSACTION = "transaction"          # idle: the next send() or quit()
    NOTHING = "nothing"                  # closed


class SessionMisuse(Exception):
    """The driver called something the session cannot do in its state (a driver bug)."""


# -- effects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Close:
    """Close the connection once everything sent so far is written."""


@dataclass(frozen=True)
class NeedContent:
    """Call ``content()`` with the message (any piece size), the last piece with last=True."""


@dataclass(frozen=True)
class RecipientResult:
    index: int                           # position in Delivery.recipients
    recipient: Recipient
    reply: Reply
    local: bool = False                  # made by smtpc, not said by the server

    @property
    def delivered(self) -> bool:
        return self.reply.code < 400

    @property
    def temporary(self) -> bool:
        return self.reply.transient

    @property
    def permanent(self) -> bool:
        return self.reply.permanent


@dataclass(frozen=True)
class TransactionResult:
    delivery: Delivery
    results: tuple[RecipientResult, ...]   # in the order of delivery.recipients


@dataclass(frozen=True)
class Ready:
    """No transaction open: ``send()`` or ``quit()`` may come."""

    extensions: ServerExtensions


@dataclass(frozen=True)
class SessionEnded:
    """The session is over. ``reply`` is why (None after a normal QUIT)."""

    reply: Reply | None
    local: bool                          # the reason is smtpc's, not the server's
    greeted: bool                        # a 2xx greeting was received


Effect = Send | Close | NeedContent | RecipientResult | TransactionResult | Ready | SessionEnded


def _local(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, (printable(text)[:400],))


# -- content -------------------------------------------------------------------------------

_STRAY_LINE_END = re.compile(rb"\r\n|\r|\n")


class ContentEncoder:
    """Message content to wire form: CRLF line ends, dot-stuffing (DATA), final CRLF.

    Pieces may be cut anywhere: a CR at the end of a piece is held back until the next
    piece says whether an LF follows, and whether a line begins is carried over, so the
    output is the same however the content is split.
    """

    def __init__(self, dot_stuffing: bool):
        self.dot_stuffing = dot_stuffing
        self._line_start = True
        self._held_cr = False
        self.octets = 0                     # octets of content produced (stuffing included)

    def encode(self, data: bytes) -> bytes:
        if self._held_cr:
            data, self._held_cr = b"\r" + data, False
        if data.endswith(b"\r"):
            data, self._held_cr = data[:-1], True
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            data = _STRAY_LINE_END.sub(b"\r\n", data)
        if self.dot_stuffing:
            if self._line_start and data[:1] == b".":
                data = b"." + data
            data = data.replace(b"\r\n.", b"\r\n..")
        self._line_start = data.endswith(b"\r\n")
        self.octets += len(data)
        return data

    def finish(self) -> bytes:
        """The rest of the content: a held CR as CRLF, and a CRLF if the last line lacks one."""
        tail = b"\r\n" if self._held_cr or not self._line_start else b""
        self._held_cr, self._line_start = False, True
        self.octets += len(tail)
        return tail


# -- the session ---------------------------------------------------------------------------


class Cmd(enum.Enum):
    """A command whose reply is outstanding (the greeting counts as one)."""

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    LHLO = "LHLO"
    RSET = "RSET"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    DOT = "end of data"
    BDAT = "BDAT"
    BDAT_LAST = "BDAT LAST"
    QUIT = "QUIT"


_FINAL = (Cmd.DOT, Cmd.BDAT_LAST)
_REPLY_INPUT = {2: Input.REPLY_2, 3: Input.REPLY_3, 4: Input.REPLY_4, 5: Input.REPLY_5}


class Session:
    """One client connection's SMTP/LMTP session (see the module docstring)."""

    def __init__(self, settings: Settings, *, instance: str = "", trace: TraceSink | None = None,
                 clock: Callable[[], float] | None = None):
        self.settings = settings
        self.machine: Machine[State, Input] = Machine(
            "smtpc-session", TABLE, State.CONNECTING, instance=instance, daemon="smtpc",
            trace=trace, clock=clock)
        self.parser = ReplyParser(settings.max_reply_line, settings.max_reply_lines)
        self.extensions: ServerExtensions | None = None
        self.greeted = False
        self.transactions = 0
        self._pending: deque[Cmd] = deque()
        self._out = bytearray()
        self._effects: list[Effect] = []
        self._chain: Input | None = None
        self._reply: Reply | None = None       # the reply being handled
        self._answered: Cmd | None = None      # the command it answers
        self._end: tuple[Reply, bool] | None = None
        self._old_state = State.CONNECTING
        # the transaction in progress
        self.delivery: Delivery | None = None
        self._results: list[RecipientResult | None] = []
        self._refusal: Reply | None = None
        self._pipelining = False
        self._chunking = False
        self._rcpts_sent = 0
        self._rcpts_answered = 0
        self._accepted: list[int] = []
        self._finals_answered = 0
        self._encoder: ContentEncoder | None = None
        self._chunk = bytearray()
        self._content_piece = b""

    # -- what the driver asks ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def waiting_for(self) -> Wait:
        state = self.machine.state
        if state is State.CONNECTING:
            return Wait.CONNECT
        if state is State.CLOSED:
            return Wait.NOTHING
        if state in (State.CONTENT, State.CHUNKING):
            return Wait.CONTENT
        if state is State.READY:
            return Wait.TRANSACTION
        return Wait.FINAL_REPLY if self._pending and self._pending[0] in _FINAL else Wait.REPLY

    @property
    def wants_content(self) -> bool:
        return self.machine.state in (State.CONTENT, State.CHUNKING)

    @property
    def ready(self) -> bool:
        return self.machine.state is State.READY

    # -- events in -----------------------------------------------------------------------

    def connected(self) -> list[Effect]:
        return self._run(Input.CONNECTED)

    def closed(self) -> list[Effect]:
        return self._run(Input.CLOSED)

    def timeout(self) -> list[Effect]:
        return self._run(Input.TIMEOUT)

    def quit(self) -> list[Effect]:
        return self._run(Input.QUIT)

    def abort(self) -> list[Effect]:
        return self._run(Input.ABORT)

    def receive(self, data: bytes) -> list[Effect]:
        """Bytes from the server: every complete reply is handled, in order.

        Only commands sent before these bytes arrived can be answered by them: a reply
        beyond that number is unsolicited even when the reply to it made the session send
        another command (lock-step mode, or the "." after a 354) — the server sent it
        before it could have read that command.
        """
        self.parser.feed(data)
        answerable = len(self._pending)
        while self.machine.state is not State.CLOSED:
            try:
                reply = self.parser.pop(min(answerable, len(self._pending)))
            except ReplyError as exc:
                self._fire(Input.BAD_REPLY, _local(451, "4.5.0", f"protocol error: {exc}"))
                break
            if reply is None:
                break
            answerable -= 1
            self._answered = self._pending.popleft()
            self._fire(_REPLY_INPUT[reply.code // 100], reply)
        return self._flush()

    def send(self, delivery: Delivery) -> list[Effect]:
        """Start a transaction; the server's extensions decide how (or whether) it goes."""
        if self.machine.state is not State.READY:
            raise SessionMisuse(f"send() in state {self.machine.state.name}")
        self._begin(delivery)
        return self._run(Input.REFUSE if self._refusal is not None else Input.SEND)

    def content(self, data: bytes, last: bool = False) -> list[Effect]:
        """A piece of the message (CRLF lines, not dot-stuffed); ``last`` for the final one."""
        self._content_piece = data
        return self._run(Input.CONTENT_END if last else Input.CONTENT)

    # -- the engine ----------------------------------------------------------------------

    def _run(self, input: Input) -> list[Effect]:
        self._fire(input, None)
        return self._flush()

    def _fire(self, input: Input, reply: Reply | None) -> None:
        """Take the row for ``input`` and run its action; then any input it chained."""
        while input is not None:
            if self.machine.row(input) is None:
                if input in LOCAL_INPUTS:
                    raise SessionMisuse(f"{input.name} in state {self.machine.state.name}")
                # A peer input without a row: a protocol error, never a crash (states.py).
                what = f"{reply.code} reply" if reply is not None else input.value
                answered = f" to {self._answered.value}" if reply is not None and self._answered else ""
                reply = _local(451, "4.5.0", f"protocol error: unexpected {what}{answered} "
                                             f"in state {self.machine.state.value}")
                input = Input.BAD_REPLY
            self._old_state = self.machine.state
            self._reply = reply
            row = self.machine.fire(input)
            self._chain = None
            getattr(self, "_do_" + row.action)()
            input, reply = self._chain, self._reply

    def _flush(self) -> list[Effect]:
        self._emit(None)
        effects, self._effects = self._effects, []
        return effects

    def _emit(self, effect: Effect | None) -> None:
        if self._out:
            self._effects.append(Send(bytes(self._out)))
            self._out.clear()
        if effect is not None:
            self._effects.append(effect)

    def _command(self, cmd: Cmd, line: str) -> None:
        self._out += line.encode("utf-8") + b"\r\n"
        self._pending.append(cmd)

    def _drained(self) -> None:
        if not self._pending:
            self._chain = Input.DRAINED

    # -- transactions --------------------------------------------------------------------

    def _begin(self, delivery: Delivery) -> None:
        ext = self.extensions or ServerExtensions()
        self.delivery = delivery
        self.transactions += 1
        self._results = [None] * len(delivery.recipients)
        self._pipelining = ext.pipelining and self.settings.use_pipelining
        self._chunking = ext.chunking and self.settings.use_chunking
        self._rcpts_sent = self._rcpts_answered = self._finals_answered = 0
        self._accepted = []
        self._chunk = bytearray()
        self._encoder = ContentEncoder(dot_stuffing=not self._chunking)
        self._refusal = None
        if ext.size and delivery.size > ext.size:
            self._refusal = Reply(552, "5.3.4", (
                f"message size {delivery.size} exceeds size limit {ext.size} of server",))
        elif delivery.eight_bit and not ext.eightbitmime:
            self._refusal = Reply(554, "5.6.3", (
                "message has 8-bit content but the server does not offer 8BITMIME",))
        elif delivery.smtputf8 and not ext.smtputf8:
            self._refusal = Reply(553, "5.6.7", (
                "message needs SMTPUTF8 but the server does not offer it",))

    def _mail_line(self) -> str:
        delivery, ext = self.delivery, self.extensions or ServerExtensions()
        line = f"MAIL FROM:<{delivery.sender}>"
        if ext.size is not None:
            line += f" SIZE={delivery.size}"
        if delivery.eight_bit:
            line += " BODY=8BITMIME"
        if delivery.smtputf8:
            line += " SMTPUTF8"
        if ext.dsn:
            if delivery.ret:
                line += f" RET={delivery.ret}"
            if delivery.envid:
                line += f" ENVID={xtext_encode(delivery.envid)}"
        return line

    def _send_rcpt(self) -> None:
        recipient = self.delivery.recipients[self._rcpts_sent]
        line = f"RCPT TO:<{recipient.address}>"
        if (self.extensions or ServerExtensions()).dsn:
            if recipient.notify:
                line += f" NOTIFY={','.join(recipient.notify)}"
            if recipient.orcpt is not None:
                line += f" ORCPT={recipient.orcpt_type or 'rfc822'};{xtext_encode(recipient.orcpt)}"
        self._command(Cmd.RCPT, line)
        self._rcpts_sent += 1

    def _result(self, index: int, reply: Reply, local: bool = False) -> None:
        if self._results[index] is None:
            result = RecipientResult(index, self.delivery.recipients[index], reply, local)
            self._results[index] = result
            self._emit(result)

    def _fail_open(self, reply: Reply, local: bool) -> None:
        """Give ``reply`` to every recipient without a result and end the transaction."""
        if self.delivery is None:
            return
        for index in range(len(self._results)):
            self._result(index, reply, local)
        self._end_transaction()

    def _end_transaction(self) -> None:
        if self.delivery is not None:
            self._emit(TransactionResult(self.delivery, tuple(self._results)))
            self.delivery = None
            self._encoder = None
            self._chunk = bytearray()

    def _end_session(self, reply: Reply | None, local: bool) -> None:
        if self._end is None:
            self._end = (reply, local)

    def _close(self) -> None:
        self._pending.clear()
        self._emit(Close())
        reply, local = self._end if self._end is not None else (None, False)
        self._emit(SessionEnded(reply, local, self.greeted))

    # -- actions (named by the table) ----------------------------------------------------

    def _do_await_greeting(self) -> None:
        self._pending.append(Cmd.GREETING)

    def _do_greeted(self) -> None:
        self.greeted = True
        self._chain = Input.SAY_LHLO if self.settings.lmtp else Input.SAY_EHLO

    def _do_ehlo(self) -> None:
        self._command(Cmd.EHLO, f"EHLO {self.settings.helo_name}")

    def _do_lhlo(self) -> None:
        self._command(Cmd.LHLO, f"LHLO {self.settings.helo_name}")

    def _do_helo(self) -> None:
        self._command(Cmd.HELO, f"HELO {self.settings.helo_name}")

    def _do_greeting_refused(self) -> None:
        self._end_session(self._reply, local=False)
        self._command(Cmd.QUIT, "QUIT")

    _do_hello_refused = _do_greeting_refused
    _do_reset_refused = _do_greeting_refused

    def _do_extensions(self) -> None:
        self.extensions = ServerExtensions.parse(self._reply)
        self._emit(Ready(self.extensions))

    def _do_no_extensions(self) -> None:
        self.extensions = ServerExtensions()
        self._emit(Ready(self.extensions))

    def _do_reset(self) -> None:
        self._emit(Ready(self.extensions or ServerExtensions()))

    def _do_refuse_locally(self) -> None:
        self._fail_open(self._refusal, local=True)
        self._emit(Ready(self.extensions or ServerExtensions()))

    def _do_mail(self) -> None:
        self._command(Cmd.MAIL, self._mail_line())
        if self._pipelining:
            while self._rcpts_sent < len(self.delivery.recipients):
                self._send_rcpt()
            if not self._chunking:
                self._command(Cmd.DATA, "DATA")

    def _do_sender_accepted(self) -> None:
        if not self._pipelining:
            self._send_rcpt()

    def _do_sender_refused(self) -> None:
        self._fail_open(self._reply, local=False)
        self._drained()

    def _do_recipient_reply(self) -> None:
        index = self._rcpts_answered
        self._rcpts_answered += 1
        if self._reply.code < 300:
            self._accepted.append(index)
        else:
            self._result(index, self._reply)
        if self._rcpts_answered < len(self.delivery.recipients):
            if not self._pipelining:
                self._send_rcpt()
        elif not self._accepted:
            self._chain = Input.NO_RECIPIENTS
        else:
            self._chain = Input.GO_BDAT if self._chunking else Input.GO_DATA

    def _do_data(self) -> None:
        if not self._pipelining:
            self._command(Cmd.DATA, "DATA")

    def _do_no_recipients(self) -> None:
        self._end_transaction()
        self._drained()

    def _do_want_content(self) -> None:
        self._emit(NeedContent())

    def _do_content_refused(self) -> None:
        self._fail_open(self._reply, local=False)
        self._command(Cmd.RSET, "RSET")

    def _do_send_content(self) -> None:
        self._out += self._encoder.encode(self._content_piece)

    def _do_send_dot(self) -> None:
        self._out += self._encoder.encode(self._content_piece) + self._encoder.finish() + b".\r\n"
        self._expect_finals(Cmd.DOT)

    def _do_collect_content(self) -> None:
        self._chunk += self._encoder.encode(self._content_piece)
        if len(self._chunk) >= self.settings.chunk_size:
            self._chain = Input.CHUNK_FULL

    def _do_send_chunk(self) -> None:
        self._out += f"BDAT {len(self._chunk)}\r\n".encode("ascii") + self._chunk
        self._chunk = bytearray()
        self._pending.append(Cmd.BDAT)

    def _do_send_last_chunk(self) -> None:
        self._chunk += self._encoder.encode(self._content_piece) + self._encoder.finish()
        self._out += f"BDAT {len(self._chunk)} LAST\r\n".encode("ascii") + self._chunk
        self._chunk = bytearray()
        self._expect_finals(Cmd.BDAT_LAST)

    def _expect_finals(self, cmd: Cmd) -> None:
        # RFC 2033 §4.2: after the data an LMTP server answers once per accepted recipient.
        self._pending.extend([cmd] * (len(self._accepted) if self.settings.lmtp else 1))

    def _do_final_reply(self) -> None:
        if self.settings.lmtp:
            self._result(self._accepted[self._finals_answered], self._reply)
            self._finals_answered += 1
        else:
            for index in self._accepted:
                self._result(index, self._reply)
        if not self._pending:
            self._chain = Input.DONE

    def _do_transaction_done(self) -> None:
        self._end_transaction()
        self._emit(Ready(self.extensions or ServerExtensions()))

    def _do_drain(self) -> None:
        if self._reply.code // 100 == 3:
            if self._answered is not Cmd.DATA or self.machine.state is not State.DRAINING:
                self._chain = Input.BAD_REPLY
                self._reply = _local(451, "4.5.0", f"protocol error: 3xx reply to {self._answered.value}")
                return
            # RFC 2920 §3.1: DATA was accepted though no recipient was: send an empty message.
            self._out += b".\r\n"
            self._pending.append(Cmd.DOT)
        self._drained()

    def _do_rset(self) -> None:
        self._command(Cmd.RSET, "RSET")

    def _do_quit(self) -> None:
        self._command(Cmd.QUIT, "QUIT")

    def _do_close(self) -> None:
        self._close()

    def _do_connection_lost(self) -> None:
        self._give_up(_local(451, "4.4.2", self._while("lost connection")), say_quit=False)

    def _do_timed_out(self) -> None:
        self._give_up(_local(451, "4.4.2", self._while("conversation timed out")))

    def _do_protocol_error(self) -> None:
        self._give_up(self._reply)

    def _do_abort(self) -> None:
        self._give_up(_local(451, "4.3.2", "smtpc is shutting down"))

    def _give_up(self, reply: Reply, say_quit: bool = True) -> None:
        """End at once: unanswered recipients are deferred; QUIT unless it would be content."""
        self._end_session(reply, local=True)
        self._fail_open(reply, local=True)
        if say_quit and self._old_state not in (State.CONNECTING, State.CONTENT):
            self._out += b"QUIT\r\n"   # not waited for: the stream is no longer trusted
        self._close()

    def _while(self, what: str) -> str:
        if self._pending:
            return f"{what} while waiting for the reply to {self._pending[0].value}"
        return f"{what} in state {self._old_state.value}"

    def _do_ignore(self) -> None:
        pass
