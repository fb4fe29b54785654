"""The lmtpd session machine: its states, its inputs and its one transition table.

Responsibilities
    This file *is* the protocol order of an LMTP server session (RFC 2033, which is
    ESMTP — RFC 5321 §4.1.4 — with LHLO instead of HELO/EHLO and one reply per
    recipient after the data). :mod:`meta1.lmtpd.session` runs it: a command line
    becomes an :class:`Input`, the row for (state, input) names the action and the next
    state.

Reading the table
    A command input whose (state, input) pair is missing is out of order: the session
    answers ``503 5.5.1`` (``R.BAD_SEQUENCE``) and stays where it is. That covers MAIL
    before LHLO, RCPT before MAIL, a second MAIL, and DATA without an accepted
    recipient — RFC 2033 §4.2: "If there were no successful RCPT commands in the mail
    transaction, the DATA command MUST fail with a 503 reply code." Commands that take
    arguments fire only after their arguments passed their checks; a refused RCPT
    (``550 5.1.1`` no such mailbox) is answered without firing, so the table only sees
    recipients that were accepted.

    HELO and EHLO have rows in every command state that refuse them with ``500``: RFC
    2033 §4.1 — LMTP has LHLO only, and a client that says HELO is probably an SMTP
    client on the wrong socket.

    ``DELIVERING`` is the wait for the Maildir writes after the final dot; the session
    reads nothing meanwhile (pipelined commands wait in the buffer) and answers once per
    accepted recipient, in RCPT order, when ``DELIVERED`` comes (RFC 2033 §4.2).
    ``SHUTDOWN`` during DATA or DELIVERING is remembered and carried out after those
    replies: a message being received is finished (spec/lmtpd.md, D-LMTPD-5).
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    CONNECTED = "connected"          # accepted; greeting not yet sent
    GREETED = "greeted"              # 220 sent; LHLO expected
    READY = "ready"                  # after LHLO; no transaction
    MAIL = "mail"                    # sender accepted; no recipient yet
    RCPT = "rcpt"                    # at least one recipient accepted
    DATA = "data"                    # reading DATA content up to <CRLF>.<CRLF>
    DELIVERING = "delivering"        # content complete: waiting for the Maildir writes
    CLOSING = "closing"              # final reply queued; output is flushed, then closed


class Input(FastEnum):
    START = "start"
    LHLO = "LHLO"
    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    VRFY = "VRFY"
    QUIT = "QUIT"
    UNKNOWN = "unknown command"
    BAD_LINE = "bad line"            # too long, bare CR, NUL or invalid UTF-8: answered, skipped
    UNFRAMEABLE = "unframeable"      # bare LF in a command line: answered, closed
    DATA_END = "end of data"
    DELIVERED = "delivered"          # the Maildir writes finished, one outcome per recipient
    TIMEOUT = "timeout"
    EOF = "eof"
    SHUTDOWN = "shutdown"


S, I, T = State, Input, Transition

#: States in which a command line is read and answered.
COMMAND_STATES = (S.GREETED, S.READY, S.MAIL, S.RCPT)
#: The inputs a command line becomes.
COMMAND_INPUTS = (I.LHLO, I.HELO, I.EHLO, I.MAIL, I.RCPT, I.DATA, I.RSET, I.NOOP, I.VRFY,
                  I.QUIT, I.UNKNOWN, I.BAD_LINE, I.UNFRAMEABLE)


def _rows() -> dict[tuple[State, Input], Transition[State]]:
    table: dict[tuple[State, Input], Transition[State]] = {
        (S.CONNECTED, I.START): T("greet", S.GREETED),
        (S.CONNECTED, I.EOF): T("hangup", S.CLOSING),
        (S.CONNECTED, I.SHUTDOWN): T("shutdown", S.CLOSING),
    }
    for state in COMMAND_STATES:
        table.update({
            # LHLO may come again at any time and resets the transaction, as EHLO does
            # (RFC 2033 §4.1 defines LHLO as EHLO's equivalent; RFC 5321 §4.1.4).
            (state, I.LHLO): T("lhlo", S.READY),
            (state, I.HELO): T("refuse_not_lmtp", state),
            (state, I.EHLO): T("refuse_not_lmtp", state),
            (state, I.RSET): T("rset", S.GREETED if state is S.GREETED else S.READY),
            (state, I.NOOP): T("noop", state),
            (state, I.VRFY): T("vrfy", state),
            (state, I.QUIT): T("quit", S.CLOSING),
            (state, I.UNKNOWN): T("refuse_unknown", state),
            (state, I.BAD_LINE): T("refuse_bad_line", state),
            (state, I.UNFRAMEABLE): T("refuse_unframeable", S.CLOSING),
            (state, I.TIMEOUT): T("timeout", S.CLOSING),
            (state, I.EOF): T("hangup", S.CLOSING),
            (state, I.SHUTDOWN): T("shutdown", S.CLOSING),
        })
    table.update({
        (S.READY, I.MAIL): T("mail", S.MAIL),
        (S.MAIL, I.RCPT): T("rcpt", S.RCPT),
        (S.RCPT, I.RCPT): T("rcpt", S.RCPT),
        (S.RCPT, I.DATA): T("data", S.DATA),

        (S.DATA, I.DATA_END): T("deliver", S.DELIVERING),
        (S.DATA, I.TIMEOUT): T("timeout", S.CLOSING),
        (S.DATA, I.EOF): T("hangup", S.CLOSING),
        (S.DATA, I.SHUTDOWN): T("shutdown_later", S.DATA),

        # RFC 2033 §4.2: one reply per accepted recipient, then the next transaction.
        (S.DELIVERING, I.DELIVERED): T("delivered", S.READY),
        # The client may be gone; the writes still finish (a message that became durable
        # is delivered, whether or not anybody heard the 250).
        (S.DELIVERING, I.EOF): T("hangup_while_delivering", S.DELIVERING),
        (S.DELIVERING, I.SHUTDOWN): T("shutdown_later", S.DELIVERING),

        (S.CLOSING, I.EOF): T("ignore", S.CLOSING),
        (S.CLOSING, I.TIMEOUT): T("ignore", S.CLOSING),
        (S.CLOSING, I.SHUTDOWN): T("ignore", S.CLOSING),
    })
    return table


TABLE: dict[tuple[State, Input], Transition[State]] = _rows()
