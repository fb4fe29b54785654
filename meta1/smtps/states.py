"""The smtps session machine: its states, its inputs and its one transition table.

Responsibilities
    This file *is* the protocol order of an SMTP server session (RFC 5321 §4.1.4, RFC 3030
    for BDAT, RFC 3207/4954 for the STARTTLS/AUTH states). :mod:`meta1.smtps.session`
    runs it: a command line is turned into an :class:`Input`, the row for (state, input)
    says which action runs and where the session goes. A pair not in the table is a
    protocol error that the session answers with ``503 5.5.1`` (it never happens for the
    command inputs, whose rows are complete: see ``COMMAND_STATES``).

Reading the table
    Rows whose action starts with ``refuse_`` answer an error and leave the state as it
    was (``503 Need MAIL command`` …). Rows of commands that take arguments run only after
    the command's arguments were parsed and checked; a syntax or policy error is answered
    without firing, so the table only ever sees commands that will succeed.

    The ``CHECKING_…`` states wait for a policy verdict (spec/policy.md): the client's
    at connect, before the greeting; the sender's after MAIL; a recipient's after RCPT
    (``CHECKING_FIRST_RCPT`` when the transaction has no recipient yet, so that a
    refusal returns to ``MAIL``). Like ``COMMITTING`` they read nothing, so pipelined
    commands wait, in order. ``POLICY_OK`` answers the command as usual, ``POLICY_REFUSED``
    answers the verdict's 4xx/5xx and leaves the state as it was before the command;
    ``POLICY_CLOSE`` (a 421) ends the session. A client refused at connect gets 554 and
    ``REFUSED``: every command but QUIT gets 503 (RFC 5321 §3.1).

    ``TLS_HANDSHAKE`` and ``AUTH_EXCHANGE`` are entered by STARTTLS and AUTH. In this
    version no TLS or SASL is configured: their ``check`` refuses (502), so the rows that
    lead there exist (for the spec and the model) but are not taken yet.
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    CONNECTED = "connected"          # accepted; greeting not yet sent
    CHECKING_CLIENT = "checking client"  # waiting for the client's verdict; no greeting yet
    REFUSED = "refused"              # 554 greeting sent: only QUIT is accepted
    GREETED = "greeted"              # 220 sent; HELO/EHLO expected
    READY = "ready"                  # after HELO/EHLO; no transaction
    CHECKING_SENDER = "checking sender"  # MAIL parsed, waiting for the sender's verdict
    MAIL = "mail"                    # sender accepted; no recipient yet
    CHECKING_FIRST_RCPT = "checking first rcpt"  # RCPT parsed (none accepted yet): verdict?
    CHECKING_RCPT = "checking rcpt"  # RCPT parsed (recipients accepted already): verdict?
    RCPT = "rcpt"                    # at least one recipient accepted
    DATA = "data"                    # reading DATA content up to <CRLF>.<CRLF>
    CHUNKING = "chunking"            # reading the octets of one BDAT chunk
    CHUNKED = "chunked"              # BDAT chunk(s) received, not LAST yet
    COMMITTING = "committing"        # content complete: waiting for the durable commit
    TLS_HANDSHAKE = "tls_handshake"  # after 220 to STARTTLS (later issue)
    AUTH_EXCHANGE = "auth_exchange"  # inside a SASL exchange (later issue)
    CLOSING = "closing"              # final reply queued; output is flushed, then closed


class Input(FastEnum):
    START = "start"
    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    UNKNOWN = "unknown command"
    BAD_LINE = "bad line"            # too long, bare CR, NUL or invalid UTF-8: answered, skipped
    UNFRAMEABLE = "unframeable"      # bare LF in a command line, BDAT without a size: closed
    DATA_END = "end of data"
    CHUNK_END = "end of chunk"
    LAST_CHUNK_END = "end of last chunk"
    COMMITTED = "committed"
    COMMIT_FAILED = "commit failed"
    POLICY_OK = "policy: go on"
    POLICY_REFUSED = "policy: refused (4xx/5xx)"
    POLICY_CLOSE = "policy: 421, close"
    TLS_DONE = "tls done"
    AUTH_DONE = "auth done"
    TIMEOUT = "timeout"
    EOF = "eof"
    SHUTDOWN = "shutdown"
    TOO_MANY_ERRORS = "too many errors"


S, I, T = State, Input, Transition

#: States in which a command line is read and answered (``REFUSED`` answers every
#: command but QUIT with 503, in its own rows).
COMMAND_STATES = (S.GREETED, S.READY, S.MAIL, S.RCPT, S.CHUNKED)
#: States inside a transaction (their content or envelope is discarded on abort).
TRANSACTION_STATES = (S.MAIL, S.RCPT, S.DATA, S.CHUNKING, S.CHUNKED)
#: States that wait for a policy verdict, and where a refusal of each returns to.
CHECKING_STATES = {S.CHECKING_CLIENT: S.REFUSED, S.CHECKING_SENDER: S.READY,
                   S.CHECKING_FIRST_RCPT: S.MAIL, S.CHECKING_RCPT: S.RCPT}


def _rows() -> dict[tuple[State, Input], Transition[State]]:
    table: dict[tuple[State, Input], Transition[State]] = {
        (S.CONNECTED, I.START): T("check_client", S.CHECKING_CLIENT),
        (S.CONNECTED, I.SHUTDOWN): T("shutdown", S.CLOSING),
        (S.CONNECTED, I.EOF): T("hangup", S.CLOSING),
    }
    for state in COMMAND_STATES:
        in_transaction = state in TRANSACTION_STATES
        table.update({
            # HELO/EHLO may come again at any time and reset the transaction (RFC 5321 §4.1.4).
            (state, I.HELO): T("helo", S.READY),
            (state, I.EHLO): T("ehlo", S.READY),
            (state, I.RSET): T("rset", S.GREETED if state is S.GREETED else S.READY),
            (state, I.NOOP): T("noop", state),
            (state, I.HELP): T("help", state),
            (state, I.VRFY): T("vrfy", state),
            (state, I.QUIT): T("quit", S.CLOSING),
            (state, I.UNKNOWN): T("refuse_unknown", state),
            (state, I.BAD_LINE): T("refuse_bad_line", state),
            (state, I.UNFRAMEABLE): T("refuse_unframeable", S.CLOSING),
            (state, I.TIMEOUT): T("timeout", S.CLOSING),
            (state, I.EOF): T("hangup", S.CLOSING),
            (state, I.SHUTDOWN): T("shutdown", S.CLOSING),
            (state, I.TOO_MANY_ERRORS): T("too_many_errors", S.CLOSING),
            # RFC 3207 §4 / RFC 4954 §4: not inside a mail transaction.
            (state, I.STARTTLS): (T("refuse_in_transaction", state) if in_transaction
                                  else T("starttls", S.TLS_HANDSHAKE)),
            (state, I.AUTH): (T("refuse_in_transaction", state) if in_transaction
                              else T("auth", S.AUTH_EXCHANGE)),
        })
    table.update({
        (S.GREETED, I.STARTTLS): T("refuse_need_helo", S.GREETED),
        (S.GREETED, I.AUTH): T("refuse_need_helo", S.GREETED),
        (S.GREETED, I.MAIL): T("refuse_need_helo", S.GREETED),
        (S.GREETED, I.RCPT): T("refuse_need_mail", S.GREETED),
        (S.GREETED, I.DATA): T("refuse_need_mail", S.GREETED),
        (S.GREETED, I.BDAT): T("refuse_chunk_need_mail", S.GREETED),

        (S.READY, I.MAIL): T("check_sender", S.CHECKING_SENDER),
        (S.READY, I.RCPT): T("refuse_need_mail", S.READY),
        (S.READY, I.DATA): T("refuse_need_mail", S.READY),
        (S.READY, I.BDAT): T("refuse_chunk_need_mail", S.READY),

        (S.MAIL, I.MAIL): T("refuse_nested_mail", S.MAIL),
        (S.MAIL, I.RCPT): T("check_rcpt", S.CHECKING_FIRST_RCPT),
        (S.MAIL, I.DATA): T("refuse_no_recipients", S.MAIL),
        (S.MAIL, I.BDAT): T("refuse_chunk_no_recipients", S.MAIL),

        (S.RCPT, I.MAIL): T("refuse_nested_mail", S.RCPT),
        (S.RCPT, I.RCPT): T("check_rcpt", S.CHECKING_RCPT),
        (S.RCPT, I.DATA): T("data", S.DATA),
        (S.RCPT, I.BDAT): T("chunk", S.CHUNKING),

        (S.CHUNKED, I.MAIL): T("refuse_nested_mail", S.CHUNKED),
        (S.CHUNKED, I.RCPT): T("refuse_bad_sequence", S.CHUNKED),
        (S.CHUNKED, I.DATA): T("refuse_mixed_data", S.CHUNKED),
        (S.CHUNKED, I.BDAT): T("chunk", S.CHUNKING),

        (S.DATA, I.DATA_END): T("end_of_data", S.COMMITTING),
        (S.DATA, I.TIMEOUT): T("timeout", S.CLOSING),
        (S.DATA, I.EOF): T("hangup", S.CLOSING),
        (S.DATA, I.SHUTDOWN): T("shutdown_later", S.DATA),

        (S.CHUNKING, I.CHUNK_END): T("end_of_chunk", S.CHUNKED),
        (S.CHUNKING, I.LAST_CHUNK_END): T("end_of_data", S.COMMITTING),
        (S.CHUNKING, I.TIMEOUT): T("timeout", S.CLOSING),
        (S.CHUNKING, I.EOF): T("hangup", S.CLOSING),
        (S.CHUNKING, I.SHUTDOWN): T("shutdown_later", S.CHUNKING),

        # Content that failed its checks (size, bare CR/LF …) is answered here too: the
        # commit "fails" without reaching qmgr. Either way the session is READY again.
        (S.COMMITTING, I.COMMITTED): T("accepted", S.READY),
        (S.COMMITTING, I.COMMIT_FAILED): T("not_accepted", S.READY),
        # RFC 5321 §6.1: the client may be gone, the commit still completes (T60b).
        (S.COMMITTING, I.EOF): T("hangup_during_commit", S.COMMITTING),
        (S.COMMITTING, I.SHUTDOWN): T("shutdown_later", S.COMMITTING),

        # RFC 3207 §4.2: after the handshake the session starts over, without the HELO.
        (S.TLS_HANDSHAKE, I.TLS_DONE): T("tls_established", S.GREETED),
        (S.TLS_HANDSHAKE, I.TIMEOUT): T("timeout", S.CLOSING),
        (S.TLS_HANDSHAKE, I.EOF): T("hangup", S.CLOSING),
        (S.TLS_HANDSHAKE, I.SHUTDOWN): T("shutdown", S.CLOSING),
        (S.AUTH_EXCHANGE, I.AUTH_DONE): T("authenticated", S.READY),
        (S.AUTH_EXCHANGE, I.TIMEOUT): T("timeout", S.CLOSING),
        (S.AUTH_EXCHANGE, I.EOF): T("hangup", S.CLOSING),
        (S.AUTH_EXCHANGE, I.SHUTDOWN): T("shutdown", S.CLOSING),

        (S.CLOSING, I.EOF): T("ignore", S.CLOSING),
        (S.CLOSING, I.TIMEOUT): T("ignore", S.CLOSING),
        (S.CLOSING, I.SHUTDOWN): T("ignore", S.CLOSING),
        # A verdict that arrives after the client left (or after a shutdown) is dropped.
        (S.CLOSING, I.POLICY_OK): T("ignore", S.CLOSING),
        (S.CLOSING, I.POLICY_REFUSED): T("ignore", S.CLOSING),
        (S.CLOSING, I.POLICY_CLOSE): T("ignore", S.CLOSING),
    })
    # Waiting for a verdict (spec/policy.md).
    for state, refused in CHECKING_STATES.items():
        table.update({
            (state, I.POLICY_REFUSED): T("refuse_by_policy", refused),
            (state, I.POLICY_CLOSE): T("close_by_policy", S.CLOSING),
            (state, I.EOF): T("hangup", S.CLOSING),
            (state, I.SHUTDOWN): T("shutdown", S.CLOSING),
            (state, I.TIMEOUT): T("timeout", S.CLOSING),
        })
    table.update({
        (S.CHECKING_CLIENT, I.POLICY_OK): T("greet", S.GREETED),
        (S.CHECKING_SENDER, I.POLICY_OK): T("mail", S.MAIL),
        (S.CHECKING_FIRST_RCPT, I.POLICY_OK): T("rcpt", S.RCPT),
        (S.CHECKING_RCPT, I.POLICY_OK): T("rcpt", S.RCPT),
    })
    # RFC 5321 §3.1: after a 554 greeting the server waits for QUIT, refusing the rest.
    for input in Input:
        table[S.REFUSED, input] = T("refuse_no_service", S.REFUSED)
    table.update({
        (S.REFUSED, I.QUIT): T("quit", S.CLOSING),
        (S.REFUSED, I.UNFRAMEABLE): T("refuse_unframeable", S.CLOSING),
        (S.REFUSED, I.TIMEOUT): T("timeout", S.CLOSING),
        (S.REFUSED, I.EOF): T("hangup", S.CLOSING),
        (S.REFUSED, I.SHUTDOWN): T("shutdown", S.CLOSING),
        (S.REFUSED, I.TOO_MANY_ERRORS): T("too_many_errors", S.CLOSING),
    })
    for input in (I.START, I.DATA_END, I.CHUNK_END, I.LAST_CHUNK_END, I.COMMITTED, I.COMMIT_FAILED,
                  I.TLS_DONE, I.AUTH_DONE, I.POLICY_OK, I.POLICY_REFUSED, I.POLICY_CLOSE):
        del table[S.REFUSED, input]       # inputs of other states: never in REFUSED
    return table


TABLE: dict[tuple[State, Input], Transition[State]] = _rows()
