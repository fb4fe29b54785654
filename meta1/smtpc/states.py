"""The smtpc session machine: the states, inputs and one transition table of an SMTP/LMTP client.

Responsibilities
    This file *is* the protocol order of one client connection (RFC 5321 §3, §4.1.4;
    RFC 2920 for pipelined groups; RFC 3030 for BDAT; RFC 2033 for LMTP).
    :mod:`meta1.smtpc.session` runs it: a server reply is classified by its first digit
    (``REPLY_2`` … ``REPLY_5``), the driver's calls become local inputs, and the row for
    (state, input) says which action runs and where the session goes.

Reading the table
    * A state named ``…_SENT`` waits for the reply (or replies) to that command. With
      PIPELINING the MAIL, RCPT and DATA commands of a transaction leave in one group, so
      ``MAIL_SENT`` is followed by ``RCPT_SENT`` without another write; without it the
      action of each reply sends the next command. Either way the states are the same.
    * Inputs in capitals after ``# internal`` are fired by the session itself, right
      after an action, when its bookkeeping says a phase is over (greeted: ``SAY_EHLO``
      or ``SAY_LHLO`` by the session's mode; the last RCPT reply is
      in: ``GO_DATA``, ``GO_BDAT`` or ``NO_RECIPIENTS``; nothing is outstanding any more:
      ``DRAINED``; every final reply is in: ``DONE``; enough content for a BDAT chunk:
      ``CHUNK_FULL``). They keep every change of state in this table.
    * A reply, a ``BAD_REPLY`` or a connection event that has no row is a protocol error:
      the session fires ``BAD_REPLY`` instead, whose rows send QUIT, close, and give every
      recipient without an answer a temporary failure (never a crash, never a reply
      counted for another command). A local input (a driver call) without a row is a
      programming error of the driver and raises :class:`~meta1.smtpc.session.SessionMisuse`.
    * In ``CLOSED`` the session reads nothing more: bytes that still arrive are not parsed
      (no reply input fires), and the driver's late ``closed()``, ``timeout()``,
      ``quit()`` or ``abort()`` are ignored.
    * ``DRAINING`` consumes the replies to pipelined commands whose answer no longer
      matters (the RCPTs and DATA after a refused MAIL, the DATA after refused RCPTs),
      then resets the transaction with RSET so the connection can be used again.
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    CONNECTING = "connecting"        # waiting for the driver's connect
    GREETING = "greeting"            # connected; waiting for the 220
    GREETED = "greeted"              # 220 in; EHLO or LHLO goes out next
    EHLO_SENT = "ehlo sent"          # SMTP: EHLO sent
    HELO_SENT = "helo sent"          # SMTP: EHLO refused with 5xx, HELO sent
    LHLO_SENT = "lhlo sent"          # LMTP: LHLO sent (no HELO fallback)
    READY = "ready"                  # no transaction; another may start
    RSET_SENT = "rset sent"          # RSET after an unfinished transaction
    MAIL_SENT = "mail sent"          # waiting for the reply to MAIL
    RCPT_SENT = "rcpt sent"          # waiting for RCPT replies
    DATA_SENT = "data sent"          # waiting for 354
    CONTENT = "content"              # sending dot-stuffed content after 354
    CHUNKING = "chunking"            # collecting content for the next BDAT chunk
    CHUNK_SENT = "chunk sent"        # waiting for the reply to a (non-last) BDAT chunk
    DOT_SENT = "dot sent"            # waiting for the final reply(ies): "." or BDAT LAST
    DRAINING = "draining"            # reading replies to pipelined commands, then RSET
    QUIT_SENT = "quit sent"          # QUIT sent; waiting for its reply or the close
    CLOSED = "closed"                # the connection is (to be) closed; nothing more


class Input(FastEnum):
    # from the connection
    CONNECTED = "connection established"
    CLOSED = "connection closed by the server or lost"
    TIMEOUT = "the driver's timer for what the session waits for expired"
    REPLY_2 = "a 2xx reply"
    REPLY_3 = "a 3xx reply"
    REPLY_4 = "a 4xx reply"
    REPLY_5 = "a 5xx reply"
    BAD_REPLY = "malformed, overlong or unsolicited reply; or a reply without a row"
    # from the driver
    SEND = "a transaction to deliver"
    REFUSE = "a transaction the server cannot take (SIZE, 8BITMIME, SMTPUTF8)"
    CONTENT = "a piece of the message content"
    CONTENT_END = "the last piece of the message content"
    QUIT = "end the session politely"
    ABORT = "end the session at once (smtpc shuts down)"
    # internal
    SAY_EHLO = "greeted, SMTP mode"
    SAY_LHLO = "greeted, LMTP mode"
    GO_DATA = "last RCPT reply in, a recipient accepted, DATA mode"
    GO_BDAT = "last RCPT reply in, a recipient accepted, BDAT mode"
    NO_RECIPIENTS = "last RCPT reply in, no recipient accepted"
    CHUNK_FULL = "enough content collected for a BDAT chunk"
    DRAINED = "no reply outstanding any more"
    DONE = "every final reply of the transaction is in"


S, I, T = State, Input, Transition

#: Inputs that come from the server or the connection: a missing row is a protocol error.
PEER_INPUTS = frozenset({I.CONNECTED, I.CLOSED, I.TIMEOUT, I.REPLY_2, I.REPLY_3, I.REPLY_4,
                         I.REPLY_5, I.BAD_REPLY})
#: Inputs that come from the driver: a missing row is the driver's mistake.
LOCAL_INPUTS = frozenset({I.SEND, I.REFUSE, I.CONTENT, I.CONTENT_END, I.QUIT, I.ABORT})
#: Inputs the session fires itself after an action.
INTERNAL_INPUTS = frozenset(set(Input) - PEER_INPUTS - LOCAL_INPUTS)
#: States with a connection open and the conversation going on.
LIVE_STATES = tuple(s for s in State if s not in (S.CONNECTING, S.CLOSED))


def _rows() -> dict[tuple[State, Input], Transition[State]]:
    table: dict[tuple[State, Input], Transition[State]] = {
        (S.CONNECTING, I.CONNECTED): T("await_greeting", S.GREETING),
        (S.CONNECTING, I.CLOSED): T("connection_lost", S.CLOSED),
        (S.CONNECTING, I.TIMEOUT): T("timed_out", S.CLOSED),
        (S.CONNECTING, I.ABORT): T("abort", S.CLOSED),
        (S.CONNECTING, I.QUIT): T("abort", S.CLOSED),
        (S.CONNECTING, I.BAD_REPLY): T("protocol_error", S.CLOSED),   # bytes before connect
    }
    for state in LIVE_STATES:
        table.update({
            (state, I.CLOSED): T("connection_lost", S.CLOSED),
            (state, I.TIMEOUT): T("timed_out", S.CLOSED),
            (state, I.BAD_REPLY): T("protocol_error", S.CLOSED),
            (state, I.ABORT): T("abort", S.CLOSED),
        })
    table.update({
        # RFC 5321 §3.1: a 554 greeting is answered with QUIT; 4xx the same (D-SMTPC-4).
        (S.GREETING, I.REPLY_2): T("greeted", S.GREETED),
        (S.GREETING, I.REPLY_4): T("greeting_refused", S.QUIT_SENT),
        (S.GREETING, I.REPLY_5): T("greeting_refused", S.QUIT_SENT),

        (S.GREETED, I.SAY_EHLO): T("ehlo", S.EHLO_SENT),
        (S.GREETED, I.SAY_LHLO): T("lhlo", S.LHLO_SENT),

        (S.EHLO_SENT, I.REPLY_2): T("extensions", S.READY),
        (S.EHLO_SENT, I.REPLY_4): T("hello_refused", S.QUIT_SENT),
        # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; try HELO.
        (S.EHLO_SENT, I.REPLY_5): T("helo", S.HELO_SENT),
        (S.HELO_SENT, I.REPLY_2): T("no_extensions", S.READY),
        (S.HELO_SENT, I.REPLY_4): T("hello_refused", S.QUIT_SENT),
        (S.HELO_SENT, I.REPLY_5): T("hello_refused", S.QUIT_SENT),
        # RFC 2033 §4.1: LMTP has no HELO.
        (S.LHLO_SENT, I.REPLY_2): T("extensions", S.READY),
        (S.LHLO_SENT, I.REPLY_4): T("hello_refused", S.QUIT_SENT),
        (S.LHLO_SENT, I.REPLY_5): T("hello_refused", S.QUIT_SENT),

        (S.READY, I.SEND): T("mail", S.MAIL_SENT),
        (S.READY, I.REFUSE): T("refuse_locally", S.READY),
        (S.READY, I.QUIT): T("quit", S.QUIT_SENT),
        (S.READY, I.TIMEOUT): T("quit", S.QUIT_SENT),  # idle too long: end politely

        (S.RSET_SENT, I.REPLY_2): T("reset", S.READY),
        (S.RSET_SENT, I.REPLY_4): T("reset_refused", S.QUIT_SENT),
        (S.RSET_SENT, I.REPLY_5): T("reset_refused", S.QUIT_SENT),

        (S.MAIL_SENT, I.REPLY_2): T("sender_accepted", S.RCPT_SENT),
        (S.MAIL_SENT, I.REPLY_4): T("sender_refused", S.DRAINING),
        (S.MAIL_SENT, I.REPLY_5): T("sender_refused", S.DRAINING),

        (S.RCPT_SENT, I.REPLY_2): T("recipient_reply", S.RCPT_SENT),
        (S.RCPT_SENT, I.REPLY_4): T("recipient_reply", S.RCPT_SENT),
        (S.RCPT_SENT, I.REPLY_5): T("recipient_reply", S.RCPT_SENT),
        (S.RCPT_SENT, I.GO_DATA): T("data", S.DATA_SENT),
        (S.RCPT_SENT, I.GO_BDAT): T("want_content", S.CHUNKING),
        (S.RCPT_SENT, I.NO_RECIPIENTS): T("no_recipients", S.DRAINING),

        (S.DATA_SENT, I.REPLY_3): T("want_content", S.CONTENT),
        # The transaction stays open on the server after a refused DATA: RSET it.
        (S.DATA_SENT, I.REPLY_4): T("content_refused", S.RSET_SENT),
        (S.DATA_SENT, I.REPLY_5): T("content_refused", S.RSET_SENT),

        (S.CONTENT, I.CONTENT): T("send_content", S.CONTENT),
        (S.CONTENT, I.CONTENT_END): T("send_dot", S.DOT_SENT),

        (S.CHUNKING, I.CONTENT): T("collect_content", S.CHUNKING),
        (S.CHUNKING, I.CHUNK_FULL): T("send_chunk", S.CHUNK_SENT),
        (S.CHUNKING, I.CONTENT_END): T("send_last_chunk", S.DOT_SENT),
        (S.CHUNK_SENT, I.REPLY_2): T("want_content", S.CHUNKING),
        # RFC 3030 §2: after a refused chunk send no more; the transaction is reset.
        (S.CHUNK_SENT, I.REPLY_4): T("content_refused", S.RSET_SENT),
        (S.CHUNK_SENT, I.REPLY_5): T("content_refused", S.RSET_SENT),

        # SMTP: one reply for all accepted recipients; LMTP: one per accepted recipient.
        (S.DOT_SENT, I.REPLY_2): T("final_reply", S.DOT_SENT),
        (S.DOT_SENT, I.REPLY_4): T("final_reply", S.DOT_SENT),
        (S.DOT_SENT, I.REPLY_5): T("final_reply", S.DOT_SENT),
        (S.DOT_SENT, I.DONE): T("transaction_done", S.READY),

        # A 354 to a pipelined DATA is answered with a lone "." (RFC 2920 §3.1).
        (S.DRAINING, I.REPLY_2): T("drain", S.DRAINING),
        (S.DRAINING, I.REPLY_3): T("drain", S.DRAINING),
        (S.DRAINING, I.REPLY_4): T("drain", S.DRAINING),
        (S.DRAINING, I.REPLY_5): T("drain", S.DRAINING),
        (S.DRAINING, I.DRAINED): T("rset", S.RSET_SENT),

        # Replies to commands still in the pipeline, then the reply to QUIT.
        (S.QUIT_SENT, I.REPLY_2): T("drain", S.QUIT_SENT),
        (S.QUIT_SENT, I.REPLY_3): T("drain", S.QUIT_SENT),
        (S.QUIT_SENT, I.REPLY_4): T("drain", S.QUIT_SENT),
        (S.QUIT_SENT, I.REPLY_5): T("drain", S.QUIT_SENT),
        (S.QUIT_SENT, I.DRAINED): T("close", S.CLOSED),
        # The session is over: whatever the server still says no longer matters.
        (S.QUIT_SENT, I.BAD_REPLY): T("close", S.CLOSED),
        (S.QUIT_SENT, I.CLOSED): T("close", S.CLOSED),
        (S.QUIT_SENT, I.TIMEOUT): T("close", S.CLOSED),

        (S.CLOSED, I.CLOSED): T("ignore", S.CLOSED),
        (S.CLOSED, I.TIMEOUT): T("ignore", S.CLOSED),
        (S.CLOSED, I.ABORT): T("ignore", S.CLOSED),
        (S.CLOSED, I.BAD_REPLY): T("ignore", S.CLOSED),   # e.g. a late connected()
        (S.CLOSED, I.QUIT): T("ignore", S.CLOSED),
    })
    return table


TABLE: dict[tuple[State, Input], Transition[State]] = _rows()
