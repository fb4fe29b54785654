"""One DNS question asked of the configured nameservers, as a pure plan.

Responsibilities
    :class:`ExchangePlan` decides, for one :class:`Question`, which nameserver to send it
    to next and over which transport, classifies every reply, and ends with an
    :class:`Outcome`: the answer (a ``dns.message.Message`` with rcode NOERROR, with or
    without records), NXDOMAIN (permanent), or a temporary failure (every server timed
    out, failed or refused). The order of events is the table in :mod:`meta1.smar.states`;
    this module holds the data and runs the actions. The driver
    (:mod:`meta1.smar.resolver`) does the I/O:

        plan = ExchangePlan(question, servers, timeout=5, attempts=2, rng=rng)
        while (send := plan.next_send()) is not None:
            ... send send.wire to send.server over UDP or TCP (send.tcp) ...
            ... then exactly one of: plan.received(reply_bytes)  (False: ignored, keep
                waiting), plan.timed_out(), plan.unreachable(reason) ...
        plan.outcome

    The model is dnspython's ``resolver._Resolution`` (``next_nameserver`` /
    ``query_result``), rewritten around meta1's table and with the matching of replies
    done here, so that the driver stays a few lines of socket code.

Data it owns
    * the question, the query message of the send in flight (a fresh id per send, from
      the injected RNG: a reply to an earlier send, or a guess, does not match);
    * the live nameservers (a server that refused, was unreachable or sent garbage over
      TCP is dropped for the rest of this question), the servers left in the current
      round, the round number (at most ``attempts`` rounds over the live servers);
    * the log of what each try gave ("127.0.0.1:53/udp timeout"), which becomes the
      failure's ``detail``.

Strategies and why
    * UDP first, TCP only after a truncated reply, to the same server (RFC 7766 §5; RFC
      1035 §4.2.1). EDNS0 with a 1232-octet payload (the DNS flag day 2020 figure: fits an
      IPv6 minimum MTU without fragments) makes truncation rare for large MX sets.
    * A SERVFAIL or a timeout moves on to the next server but keeps the server for the
      next round (RFC 1123 §6.1.3.3: retransmit, cycling through the servers); REFUSED,
      FORMERR, NOTIMP and I/O errors drop it: asking it again will not help.
    * Only NXDOMAIN is permanent. Everything else that does not end in an answer is a
      temporary failure: a broken or unreachable resolver is our problem, not the
      recipient's (reference §1.6: DNS TEMP → deferred).
    * Over UDP, anything that is not a response to this very query (id, QR bit, opcode,
      question section) is ignored and the wait goes on; an attacker who can send us
      datagrams must guess the random source port *and* id *and* echo the question, and
      even then can only cause a retry over TCP or a wrong answer, never a crash. Over
      TCP the connection is ours, so the same mismatch means a broken server.
"""

from __future__ import annotations

import enum
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from meta1.machine import Machine, TraceSink
from meta1.smar.states import TABLE, WAITING, Input, State

#: EDNS0 UDP payload size we advertise (DNS flag day 2020).
EDNS_PAYLOAD = 1232
#: Bytes of the DNS header: id, flags, four section counts (RFC 1035 §4.1.1).
HEADER_SIZE = 12

Nameserver = tuple[str, int]


def format_server(server: Nameserver) -> str:
    """``127.0.0.1:53`` or ``[::1]:53``."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Question:
    """A DNS question of class IN: an absolute name and a record type."""

    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType

    @classmethod
    def make(cls, name: str | dns.name.Name, rdtype: str | int) -> Question:
        """``Question.make("example.org", "MX")``; a text name is taken as absolute."""
        if isinstance(name, str):
            name = dns.name.from_text(name, dns.name.root)
        return cls(name, dns.rdatatype.RdataType.make(rdtype))

    def __str__(self) -> str:
        return f"{self.name} {self.rdtype.name}"


class Status(enum.Enum):
    ANSWER = "answer"        # rcode NOERROR: records, or none of this type (NODATA)
    NXDOMAIN = "nxdomain"    # the name does not exist: permanent
    TEMPFAIL = "tempfail"    # no usable reply from any nameserver: try again later


@dataclass(frozen=True)
class Outcome:
    """What asking one question gave. ``message`` is the reply (None for TEMPFAIL)."""

    status: Status
    message: dns.message.Message | None
    detail: str = ""


@dataclass(frozen=True)
class Send:
    """Send ``wire`` to ``server`` (over TCP when ``tcp``) and wait at most ``timeout`` s."""

    server: Nameserver
    tcp: bool
    wire: bytes
    timeout: float


class ExchangePlan:
    """One question over the nameservers; see the module documentation."""

    def __init__(self, question: Question, nameservers: Sequence[Nameserver], *,
                 timeout: float, attempts: int, rng: random.Random,
                 payload: int = EDNS_PAYLOAD, trace: TraceSink | None = None) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.question = question
        self.timeout = timeout
        self.attempts = attempts
        self.payload = payload
        self.machine = Machine("smar-exchange", TABLE, State.CHOOSING, instance=str(question),
                               daemon="smar", trace=trace)
        self._rng = rng
        self._live: list[Nameserver] = list(dict.fromkeys(nameservers))
        self._left: list[Nameserver] = []
        self._round = 0
        self._server: Nameserver | None = None
        self._query: dns.message.Message | None = None
        self._tries: list[str] = []
        self.outcome: Outcome | None = None

    @property
    def done(self) -> bool:
        return self.machine.state is State.DONE

    @property
    def waiting(self) -> bool:
        """A send is in flight: a reply, a timeout or an I/O error is expected."""
        return self.machine.state in WAITING

    # -- what to send -------------------------------------------------------------------

    def next_send(self) -> Send | None:
        """The next send, or None when the exchange is over (see :attr:`outcome`)."""
        state = self.machine.state
        if state is State.DONE:
            return None
        if state is State.TCP_READY:
            self.machine.fire(Input.SEND)
            return self._send(tcp=True)
        if state is not State.CHOOSING:
            raise RuntimeError(f"next_send() while {state.name}: report the pending send first")
        server = self._choose()
        if server is None:
            self.machine.fire(Input.EXHAUSTED)
            self._finish(Status.TEMPFAIL, None)
            return None
        self._server = server
        self.machine.fire(Input.SEND)
        return self._send(tcp=False)

    def _choose(self) -> Nameserver | None:
        if not self._left:
            if self._round >= self.attempts or not self._live:
                return None
            self._round += 1
            self._left = list(self._live)
        return self._left.pop(0)

    def _send(self, tcp: bool) -> Send:
        assert self._server is not None
        query = dns.message.make_query(self.question.name, self.question.rdtype,
                                       dns.rdataclass.IN, use_edns=0, payload=self.payload,
                                       id=self._rng.getrandbits(16))
        self._query = query
        return Send(self._server, tcp, query.to_wire(), self.timeout)

    # -- what came back -------------------------------------------------------------------

    def received(self, wire: bytes) -> bool:
        """Report a reply to the send in flight; False if it was ignored (keep waiting)."""
        self._expect_waiting()
        tcp = self.machine.state is State.TCP_WAIT
        input, message = self._classify(wire, tcp)
        if input is None:
            return False
        self._react(input, message, input.name)
        return True

    def timed_out(self) -> None:
        """Report that the send in flight got no reply within :attr:`timeout`."""
        self._expect_waiting()
        self._react(Input.TIMEOUT, None, "timeout")

    def unreachable(self, reason: str) -> None:
        """Report an I/O error of the send in flight (ECONNREFUSED, reset, ...)."""
        self._expect_waiting()
        self._react(Input.UNREACHABLE, None, reason)

    def _expect_waiting(self) -> None:
        if not self.waiting:
            raise RuntimeError(f"no send in flight (state {self.machine.state.name})")

    def _classify(self, wire: bytes, tcp: bool) -> tuple[Input | None, dns.message.Message | None]:
        assert self._query is not None
        mismatch = Input.MALFORMED if tcp else None
        if len(wire) < HEADER_SIZE:
            return mismatch, None
        reply_id, flags = struct.unpack_from("!HH", wire)
        if reply_id != self._query.id or not flags & dns.flags.QR:
            return mismatch, None
        try:
            message = dns.message.from_wire(wire)
        except Exception:
            # A truncated reply may be cut anywhere; the header (with our id) is enough to
            # go to TCP. Anything else undecodable is not an answer.
            if flags & dns.flags.TC and not tcp:
                return Input.TRUNCATED, None
            return mismatch, None
        if not self._query.is_response(message):
            return mismatch, None
        if message.flags & dns.flags.TC:
            return Input.TRUNCATED, message
        rcode = message.rcode()
        if rcode == dns.rcode.NOERROR:
            return Input.ANSWER, message
        if rcode == dns.rcode.NXDOMAIN:
            return Input.NXDOMAIN, message
        if rcode == dns.rcode.SERVFAIL:
            return Input.SERVFAIL, message
        return Input.REJECTED, message

    def _react(self, input: Input, message: dns.message.Message | None, what: str) -> None:
        assert self._server is not None
        transport = "tcp" if self.machine.state is State.TCP_WAIT else "udp"
        if input is Input.REJECTED and message is not None:
            what = dns.rcode.to_text(message.rcode())
        self._tries.append(f"{format_server(self._server)}/{transport} {what}")
        action = self.machine.fire(input).action
        if action == "accept":
            self._finish(Status.ANSWER, message)
        elif action == "fail_permanent":
            self._finish(Status.NXDOMAIN, message)
        elif action == "drop_server":
            self._drop(self._server)

    def _drop(self, server: Nameserver) -> None:
        if server in self._live:
            self._live.remove(server)
        if server in self._left:
            self._left.remove(server)

    def _finish(self, status: Status, message: dns.message.Message | None) -> None:
        self._query = None
        if status is Status.TEMPFAIL:
            detail = "; ".join(self._tries) if self._tries else "no nameserver"
        else:
            detail = self._tries[-1]
        self.outcome = Outcome(status, message, f"{self.question}: {detail}")
