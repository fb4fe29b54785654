"""The socket-map protocol, sans I/O: netstrings, replies, and one connection's exchange.

Responsibilities
    * :func:`netstring`, :class:`NetstringDecoder` — the framing: ``<length>:<payload>,``
      with the length in decimal ASCII (D. J. Bernstein's netstrings, as sendmail's and
      MeTA1's socket maps use them; reference §2.4).
    * :func:`encode_request` — a lookup: the payload ``<mapname> <key>`` (one space), so
      key ``news`` in map ``aliases`` is ``12:aliases news,`` (B23).
    * :func:`parse_reply` — a reply payload ``<STATUS>[ <data>]`` as a
      :class:`~meta1.maps.base.MapResult`: ``OK [value]`` FOUND (B24), ``NOTFOUND``
      (B25), ``NOMORE`` (B26: not found, and no further key derived from this one is
      tried), ``TEMP [reason]`` and ``TIMEOUT [reason]`` TEMP (B27), ``PERM [reason]``
      PERM (B28).
    * :class:`SockmapConnection` — one connection's side of the exchange, run by the
      table in :mod:`meta1.maps.states`: what to write for a request, what the bytes
      that come back mean, and what a timeout or a closed connection does to the request
      in flight. :mod:`meta1.maps.sockclient` does the sockets and timers.

What is malformed (B29, D-MAP-7)
    A length that is not decimal digits, has a leading zero (``01:``), or announces more
    than :data:`MAX_NETSTRING` bytes (100 KiB: the longest map value meta1 expects is
    configuration text, B34, a few KiB); a payload not followed by ``,``; a status other
    than the six above (in upper case, as the protocol writes them); a reply that is not
    UTF-8. The request in flight is then answered TEMP and the connection dropped: after
    a framing error the next bytes cannot be trusted to start a reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meta1.machine import Machine, TraceSink
from meta1.maps.base import NOT_FOUND, MapResult, Status, found
from meta1.maps.states import TABLE, Input, State

#: The longest netstring payload accepted or sent (a larger length is malformed).
MAX_NETSTRING = 100 * 1024
_MAX_DIGITS = len(str(MAX_NETSTRING))


class Malformed(Exception):
    """Bytes that are not a well-formed socket-map reply (the text says why)."""


def netstring(payload: bytes) -> bytes:
    """``b"hello there"`` → ``b"11:hello there,"``."""
    return b"%d:%s," % (len(payload), payload)


def encode_request(mapname: str, key: str) -> bytes:
    """The request for ``key`` in the server's map ``mapname``.

    ValueError when the map name is empty or contains whitespace (the server splits at
    the first space) or the request would exceed :data:`MAX_NETSTRING`."""
    if not mapname or any(ch.isspace() for ch in mapname):
        raise ValueError(f"socket map name {mapname!r}: empty or with whitespace")
    payload = mapname.encode("utf-8") + b" " + key.encode("utf-8", "surrogateescape")
    if len(payload) > MAX_NETSTRING:
        raise ValueError(f"socket map request of {len(payload)} bytes is longer than {MAX_NETSTRING}")
    return netstring(payload)


class NetstringDecoder:
    """Netstrings from a byte stream fed in pieces; :meth:`feed` returns the complete ones.

    At the first malformation :attr:`error` is set (a :class:`Malformed`) and the decoder
    stops: the payloads completed before it are still returned, nothing after it is."""

    def __init__(self, limit: int = MAX_NETSTRING) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.error: Malformed | None = None

    @property
    def pending(self) -> bool:
        """Part of a netstring is buffered."""
        return bool(self.buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data`` (check :attr:`error` afterwards)."""
        if self.error is not None:
            return []
        self.buffer += data
        out: list[bytes] = []
        try:
            while self.buffer:
                payload = self._one()
                if payload is None:
                    break
                out.append(payload)
        except Malformed as exc:
            self.error = exc
        return out

    def _one(self) -> bytes | None:
        buffer = self.buffer
        colon = buffer.find(b":", 0, _MAX_DIGITS + 1)
        if colon < 0:
            head = bytes(buffer[:_MAX_DIGITS + 1])
            if not head.isdigit() or len(head) > _MAX_DIGITS:
                raise Malformed(f"bad netstring length {head[:16]!r}")
            return None   # more digits may come
        digits = bytes(buffer[:colon])
        if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0"):
            raise Malformed(f"bad netstring length {digits[:16]!r}")
        length = int(digits)
        if length > self.limit:
            raise Malformed(f"netstring of {length} bytes is longer than {self.limit}")
        end = colon + 1 + length
        if len(buffer) <= end:
            return None
        if buffer[end:end + 1] != b",":
            raise Malformed(f"netstring of {length} bytes not followed by ',' (length mismatch?)")
        payload = bytes(buffer[colon + 1:end])
        del buffer[:end + 1]
        return payload


_STATUS = {b"OK": Status.FOUND, b"NOTFOUND": Status.NOTFOUND, b"NOMORE": Status.NOMORE,
           b"TEMP": Status.TEMP, b"TIMEOUT": Status.TEMP, b"PERM": Status.PERM}


def parse_reply(payload: bytes) -> MapResult:
    """A reply payload as a :class:`MapResult`; raises :class:`Malformed`.

    TEMP and PERM keep the server's text as ``reason`` (``TEMP db down`` → ``"db down"``);
    TIMEOUT, which becomes TEMP, keeps its word too (``"TIMEOUT db busy"``), so a log line
    — which prefixes the status — shows what the server said without saying TEMP twice.
    Text after NOTFOUND or NOMORE is ignored."""
    word, _, data = payload.partition(b" ")
    status = _STATUS.get(word)
    if status is None:
        raise Malformed(f"unknown status {word[:20]!r}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("reply data is not UTF-8") from None
    if status is Status.FOUND:
        return found(text)
    if status is Status.NOTFOUND:
        return NOT_FOUND
    if status is Status.NOMORE:
        return MapResult(Status.NOMORE)
    return MapResult(status, reason=payload.decode("utf-8") if word == b"TIMEOUT" else text)


@dataclass(frozen=True)
class Answer:
    """What became of the request in flight: its ``result``, or ``retry`` (result None):
    give it to another connection."""

    request: Any
    result: MapResult | None
    retry: bool = False


class SockmapConnection:
    """One connection's exchange (the table in :mod:`meta1.maps.states`).

    The driver reports what happened — :meth:`connected`, :meth:`connect_failed`,
    :meth:`received`, :meth:`timed_out`, :meth:`lost`, :meth:`close` — and writes what
    :meth:`send` returns. Each report returns the :class:`Answer` for the request in
    flight when it is decided, else None. Once :attr:`closed`, the driver closes the
    socket; :attr:`why` says why the connection ended.
    """

    def __init__(self, mapname: str, *, instance: str = "", trace: TraceSink | None = None,
                 clock=None) -> None:
        self.mapname = mapname
        self.machine = Machine("sockmap-connection", TABLE, State.CONNECTING, instance=instance,
                               daemon="smar", trace=trace, clock=clock)
        self.decoder = NetstringDecoder()
        self.request: Any = None
        self.served = 0          # replies received on this connection
        self.why = ""

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def closed(self) -> bool:
        return self.machine.state is State.CLOSED

    @property
    def idle(self) -> bool:
        return self.machine.state is State.IDLE

    def connected(self) -> None:
        self.machine.fire(Input.CONNECTED)

    def connect_failed(self, why: str) -> None:
        self.why = why
        self.machine.fire(Input.CONNECT_FAILED)

    def send(self, request: Any, key: str) -> bytes:
        """The bytes to write for ``request`` (looking up ``key``). ValueError (nothing
        changes) when the key cannot be sent (see :func:`encode_request`)."""
        wire = encode_request(self.mapname, key)
        self.machine.fire(Input.SEND)
        self.request = request
        return wire

    def received(self, data: bytes) -> Answer | None:
        """Bytes from the server."""
        answer = None
        for payload in self.decoder.feed(data):
            if self.closed:
                return answer
            try:
                result = parse_reply(payload)
            except Malformed as exc:
                return self._fire(Input.MALFORMED, f"malformed reply: {exc}") or answer
            if self.state is State.WAITING:
                answer = self._fire(Input.REPLY, "", result)
            else:
                self._fire(Input.REPLY, "unsolicited reply")
        if self.closed:
            return answer
        if self.decoder.error is not None:
            return self._fire(Input.MALFORMED, f"malformed reply: {self.decoder.error}") or answer
        if self.state is State.IDLE and self.decoder.pending:
            self._fire(Input.MALFORMED, "unsolicited bytes")
        return answer

    def timed_out(self) -> Answer | None:
        return self._fire(Input.TIMEOUT, "no reply within the timeout")

    def lost(self, why: str) -> Answer | None:
        if self.closed:
            return None
        return self._fire(Input.LOST, why)

    def close(self, why: str = "closed") -> Answer | None:
        if self.closed:
            return None
        return self._fire(Input.CLOSE, why)

    def _fire(self, input: Input, why: str, result: MapResult | None = None) -> Answer | None:
        action = self.machine.fire(input).action
        if why:
            self.why = why
        request, self.request = self.request, None
        if action == "answer":
            self.served += 1
            return Answer(request, result)
        if action == "fail_temporary":
            return Answer(request, MapResult(Status.TEMP, reason=f"socket map {self.mapname}: {why}"))
        if action == "retry_or_fail":
            if self.served and not self.decoder.pending:
                return Answer(request, None, retry=True)
            return Answer(request, MapResult(Status.TEMP, reason=f"socket map {self.mapname}: {why}"))
        if action == "abandon" and request is not None:
            return Answer(request, MapResult(Status.TEMP, reason=f"socket map {self.mapname}: {why}"))
        return None
