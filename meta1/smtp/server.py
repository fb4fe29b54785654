"""What every table-driven server session shares: its output effects and its engine.

Responsibilities
    smtps' SMTP session (:mod:`meta1.smtps.session`) and lmtpd's LMTP session
    (:mod:`meta1.lmtpd.session`) are run the same way: an input goes through the
    session's transition table (:class:`meta1.machine.Machine`), the row's action
    (``_do_<action>``) runs and may name a follow-up input, and everything the session
    wants done comes back to its daemon as a list of effects. This module holds the
    pieces both use, so that the two sessions differ only in their protocol:

    * :class:`Send` and :class:`Close` — the effects of the client connection;
    * :class:`ServerSession` — what the daemon asks every session (``state``,
      ``wants_input``, ``idle_timeout``), the events every session takes from it
      (``timeout()``, ``eof()``, ``shutdown()``), the effect queue (``_emit``,
      ``_take``), reply output that joins the replies to a pipelined group into one
      write (``_send``), and ``_fire``, the loop that takes a row and runs its action;
      the answer to a line the framer could not make a command of
      (``_framing_error``); and the actions both tables name for the same thing (RSET,
      NOOP, VRFY, QUIT, unknown and bad lines, timeout, hang-up, shutdown).

Data it owns
    Nothing of its own: a subclass sets ``self.id``, ``self.machine``, ``self.settings``
    (with ``hostname`` and ``io_timeout``), ``self._effects = []``, ``self.peer_gone``,
    ``self.shutdown_pending`` and ``self._bad_line_reply`` in its ``__init__``; it
    implements ``_error(reply, verb)`` (answer a refused command),
    ``_discard_transaction()`` and ``_close(reason, linger)``; and it names its
    logger in ``log``, its input enum (with ``TIMEOUT``, ``EOF`` and ``SHUTDOWN``) in
    ``inputs`` and in ``waiting_states`` the states in which it reads nothing and runs
    no timer (it waits for its daemon, or it is closing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from meta1.machine import Machine
from meta1.smtp.framing import BareLF, CommandLine, LineTooLong
from meta1.smtp.replies import R, Reply


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Close:
    """Close the connection once everything sent so far is written.

    ``linger``: shut down our side and read until the client closes first (a client
    that pipelined commands still has input on its way; closing with unread input makes
    the kernel send a RST that can destroy our last reply). After QUIT nothing more is
    due from the client (RFC 5321 §4.1.1.10), so the connection is simply closed, as
    Postfix's smtpd does — a shutdown, a timer and a wake-up fewer per session.
    """

    linger: bool = True


class ServerSession:
    """The engine of a server session; see the module documentation."""

    log: ClassVar[logging.Logger]
    inputs: ClassVar[Any]
    waiting_states: ClassVar[tuple[Enum, ...]]
    id: str
    machine: Machine
    settings: Any
    peer_gone: bool
    shutdown_pending: bool
    _bad_line_reply: Reply
    _effects: list[Any]

    @property
    def state(self) -> Any:
        return self.machine.state

    @property
    def wants_input(self) -> bool:
        """False while the session waits for its daemon or is closing: do not read."""
        return self.machine.state not in self.waiting_states

    @property
    def idle_timeout(self) -> float | None:
        """How long to wait for the client now (RFC 5321 §4.5.3.2); None: no timer."""
        return None if self.machine.state in self.waiting_states else self.settings.io_timeout

    def timeout(self) -> list[Any]:
        """The client was silent too long."""
        self._fire(self.inputs.TIMEOUT)
        return self._take()

    def eof(self) -> list[Any]:
        """The client closed its side (or the connection is gone)."""
        self._fire(self.inputs.EOF)
        return self._take()

    def shutdown(self) -> list[Any]:
        """The daemon is stopping."""
        self._fire(self.inputs.SHUTDOWN)
        return self._take()

    def _take(self) -> list[Any]:
        effects, self._effects = self._effects, []
        return effects

    def _emit(self, effect: Any) -> None:
        self._effects.append(effect)

    def _send(self, reply: Reply) -> None:
        data = reply.encode()
        if self._effects and isinstance(self._effects[-1], Send):
            # Replies to a pipelined group leave in one write (RFC 2920 §3.2 allows it).
            self._effects[-1] = Send(self._effects[-1].data + data)
        else:
            self._effects.append(Send(data))

    def _fire(self, input: Enum | None, argument: object = None) -> None:
        """Take the row for ``input``, run its action with ``argument``; an action may
        return the next input, which is taken the same way (without an argument)."""
        while input is not None:
            if self.machine.row(input) is None:
                # Only events get here (command lines are checked against the table
                # before they fire), e.g. a timer that fired late: ignored, but never
                # silently in a log.
                self.log.debug("%s: %s ignored in state %s", self.id, input.name,
                               self.machine.state.name)
                return
            row = self.machine.fire(input)
            input = getattr(self, "_do_" + row.action)(argument)
            argument = None

    def _framing_error(self, item: CommandLine | LineTooLong | BareLF) -> bool:
        """Answer ``item`` if it is no command line (bare LF, too long, bare CR, NUL);
        True if it was answered."""
        if isinstance(item, BareLF):
            self._unframeable(R.BARE_LF)
        elif isinstance(item, LineTooLong):
            self._bad_line(R.LINE_TOO_LONG)
        elif item.bare_cr:
            self._bad_line(R.BARE_CR)
        elif b"\0" in item.text:
            self._bad_line(R.BAD_COMMAND_BYTES)
        else:
            return False
        return True

    def _unframeable(self, reply: Reply) -> None:
        self._bad_line_reply = reply
        self._fire(self.inputs.UNFRAMEABLE)

    def _bad_line(self, reply: Reply) -> None:
        self._bad_line_reply = reply
        self._fire(self.inputs.BAD_LINE)

    def _after_transaction(self) -> Enum | None:
        """The input that follows the end of a transaction the client or the daemon
        wanted ended meanwhile (a hang-up, a shutdown), or None."""
        if self.peer_gone:
            return self.inputs.EOF
        if self.shutdown_pending:
            return self.inputs.SHUTDOWN
        return None

    # -- actions both tables name ---------------------------------------------------------

    def _do_rset(self, _):
        self._discard_transaction()
        self._send(R.RESET)

    def _do_noop(self, _):
        self._send(R.OK)

    def _do_vrfy(self, _):
        self._send(R.VRFY)

    def _do_quit(self, _):
        self._discard_transaction()
        self._send(R.BYE.format(hostname=self.settings.hostname))
        # Nothing more is due from the client after QUIT (RFC 5321 §4.1.1.10).
        self._close("quit", linger=False)

    def _do_refuse_unknown(self, _):
        self._error(R.UNKNOWN_COMMAND)

    def _do_refuse_bad_line(self, _):
        self._error(self._bad_line_reply)

    def _do_refuse_unframeable(self, _):
        # RFC 5321 §2.3.8: LF alone is no line end (and BDAT octets cannot be counted
        # without a size). Reading on would either wait forever or take message text for
        # commands — a client that frames with a bare LF ends DATA with it too (SMTP
        # smuggling); answer and close instead (T01).
        self._send(self._bad_line_reply)
        self._discard_transaction()
        self._close(self._bad_line_reply.lines[0])

    def _do_timeout(self, _):
        self._send(R.TIMEOUT.format(hostname=self.settings.hostname))
        self._discard_transaction()
        self._close("timeout")

    def _do_hangup(self, _):
        self._discard_transaction()
        self._close("lost connection")

    def _do_shutdown(self, _):
        self._send(R.SHUTDOWN.format(hostname=self.settings.hostname))
        self._discard_transaction()
        self._close("shutdown")

    def _do_shutdown_later(self, _):
        # A message being received or committed is finished first; _after_transaction
        # carries the shutdown out then.
        self.shutdown_pending = True

    def _do_ignore(self, _):
        pass
