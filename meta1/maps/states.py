"""The socket-map connection machine: one connection to a socket map server, one request at a time.

Responsibilities
    This file *is* the life of one connection of a socket-map client (the sockmap
    protocol: reference §2.4, spec/maps.md): :class:`meta1.maps.sockmap.SockmapConnection`
    runs it, :mod:`meta1.maps.sockclient` keeps a pool of them on smar's event loop. A
    connection is opened, sends one request, waits for its one reply, and is then idle
    for the next request; anything the server does outside that order ends it.

Reading the table
    ``CONNECTING`` ends in ``IDLE`` (``CONNECTED``) or ``CLOSED`` (``CONNECT_FAILED``:
    the pool counts the server as down for a while). ``SEND`` hands an idle connection a
    request; in ``WAITING`` the well-formed reply answers it (``answer``) and the
    connection is idle again.

    Every failure while a request waits ends the connection: a malformed reply
    (length not digits, too long, payload shorter than announced, no ``,``; an unknown
    status) and a timeout are answered TEMP (B27, B29) — after either, the byte stream
    can no longer be trusted to line up replies with requests (a late reply would answer
    the next request). A connection the server closed (``LOST``) is ``retry_or_fail``:
    a request sent on a connection that had already served one, and that got no byte of
    reply, is given once more to a fresh connection (the server may have closed an idle
    connection just as we wrote); otherwise it is TEMP.

    Bytes arriving while no request waits (``IDLE``, ``REPLY``/``MALFORMED``) are a
    protocol error of the server: the connection is dropped, no request is affected.
    ``CLOSE`` is the pool closing a connection (surplus idle connections, shutdown).
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    CONNECTING = "connecting"   # a non-blocking connect is in progress
    IDLE = "idle"               # connected, no request in flight
    WAITING = "waiting"         # a request was written; its reply (or the timer) is due
    CLOSED = "closed"           # the connection is over (for whatever reason)


class Input(FastEnum):
    CONNECTED = "the connect completed"
    CONNECT_FAILED = "the connect failed or timed out"
    SEND = "the pool hands the connection a request"
    REPLY = "a well-formed reply netstring arrived"
    MALFORMED = "a malformed netstring or an unknown status arrived"
    TIMEOUT = "no reply within the map's timeout"
    LOST = "the server closed the connection, or an I/O error"
    CLOSE = "the pool closes the connection"


S, I, T = State, Input, Transition

TABLE: dict[tuple[State, Input], Transition[State]] = {
    (S.CONNECTING, I.CONNECTED): T("ready", S.IDLE),
    (S.CONNECTING, I.CONNECT_FAILED): T("server_down", S.CLOSED),
    (S.CONNECTING, I.CLOSE): T("abandon", S.CLOSED),

    (S.IDLE, I.SEND): T("send_request", S.WAITING),
    (S.IDLE, I.REPLY): T("drop_unsolicited", S.CLOSED),
    (S.IDLE, I.MALFORMED): T("drop_unsolicited", S.CLOSED),
    (S.IDLE, I.LOST): T("forget", S.CLOSED),
    (S.IDLE, I.CLOSE): T("close", S.CLOSED),

    (S.WAITING, I.REPLY): T("answer", S.IDLE),
    (S.WAITING, I.MALFORMED): T("fail_temporary", S.CLOSED),
    (S.WAITING, I.TIMEOUT): T("fail_temporary", S.CLOSED),
    (S.WAITING, I.LOST): T("retry_or_fail", S.CLOSED),
    (S.WAITING, I.CLOSE): T("abandon", S.CLOSED),
}
