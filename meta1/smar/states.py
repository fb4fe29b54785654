"""The nameserver exchange machine: asking one question of the configured nameservers.

Responsibilities
    This file *is* the order in which smar tries nameservers for one DNS question
    (RFC 1035 §4.2, RFC 7766 for TCP, RFC 1123 §6.1.3.3 for retransmission):
    :class:`meta1.smar.exchange.ExchangePlan` runs it. The plan picks a server and sends
    the question over UDP; the classified reply (or its absence) is the input, and the row
    says what happens next. A pair missing from the table is a bug in the plan, never a
    reaction to the network: every input is possible in both waiting states.

Reading the table
    ``CHOOSING`` picks the next nameserver of the current round (``SEND``) or, with none
    left in any round, gives up (``EXHAUSTED``, a temporary failure). A truncated UDP
    reply moves to ``TCP_READY``: the same server is asked again over TCP (``SEND``).
    ``next_server`` keeps the server for a later round (it may answer next time: a
    timeout, a SERVFAIL); ``drop_server`` removes it for the rest of this question (it
    refused, is unreachable, or spoke nonsense over TCP). NOERROR (with or without
    records) and NXDOMAIN end the exchange in ``DONE``.

    Replies that do not belong to the question — wrong id, not a response, another
    question, undecodable — are not inputs at all over UDP: anyone can send a datagram,
    so they are ignored and the wait goes on (D-SMAR-3). Over TCP they are ``MALFORMED``.
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    CHOOSING = "choosing"      # the next nameserver (UDP) is to be picked
    UDP_WAIT = "udp_wait"      # question sent over UDP; waiting for the reply or the timer
    TCP_READY = "tcp_ready"    # the UDP reply was truncated: ask the same server over TCP
    TCP_WAIT = "tcp_wait"      # question sent over TCP; waiting for the reply or the timer
    DONE = "done"              # an outcome exists (answer, NXDOMAIN or temporary failure)


class Input(FastEnum):
    SEND = "the driver asks what to send"
    EXHAUSTED = "no nameserver left to ask"
    ANSWER = "NOERROR reply (records or none)"
    NXDOMAIN = "NXDOMAIN reply"
    TRUNCATED = "reply with TC set"
    SERVFAIL = "SERVFAIL reply"
    REJECTED = "REFUSED, FORMERR, NOTIMP or another error rcode"
    TIMEOUT = "no reply within DNS_timeout"
    UNREACHABLE = "I/O error (port unreachable, connection refused or reset)"
    MALFORMED = "undecodable or mismatched reply over TCP"


S, I, T = State, Input, Transition

TABLE: dict[tuple[State, Input], Transition[State]] = {
    (S.CHOOSING, I.SEND): T("send_udp", S.UDP_WAIT),
    (S.CHOOSING, I.EXHAUSTED): T("fail_temporary", S.DONE),
    (S.TCP_READY, I.SEND): T("send_tcp", S.TCP_WAIT),

    (S.UDP_WAIT, I.ANSWER): T("accept", S.DONE),
    (S.UDP_WAIT, I.NXDOMAIN): T("fail_permanent", S.DONE),
    (S.UDP_WAIT, I.TRUNCATED): T("retry_over_tcp", S.TCP_READY),
    (S.UDP_WAIT, I.SERVFAIL): T("next_server", S.CHOOSING),
    (S.UDP_WAIT, I.REJECTED): T("drop_server", S.CHOOSING),
    (S.UDP_WAIT, I.TIMEOUT): T("next_server", S.CHOOSING),
    (S.UDP_WAIT, I.UNREACHABLE): T("drop_server", S.CHOOSING),

    (S.TCP_WAIT, I.ANSWER): T("accept", S.DONE),
    (S.TCP_WAIT, I.NXDOMAIN): T("fail_permanent", S.DONE),
    (S.TCP_WAIT, I.TRUNCATED): T("drop_server", S.CHOOSING),
    (S.TCP_WAIT, I.SERVFAIL): T("next_server", S.CHOOSING),
    (S.TCP_WAIT, I.REJECTED): T("drop_server", S.CHOOSING),
    (S.TCP_WAIT, I.TIMEOUT): T("next_server", S.CHOOSING),
    (S.TCP_WAIT, I.UNREACHABLE): T("drop_server", S.CHOOSING),
    (S.TCP_WAIT, I.MALFORMED): T("drop_server", S.CHOOSING),
}

#: States in which a reply, a timeout or an I/O error is expected.
WAITING = (S.UDP_WAIT, S.TCP_WAIT)
