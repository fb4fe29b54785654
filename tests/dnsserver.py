"""A real DNS server on loopback for tests: zones from a dict, faults per name.

    from dnsserver import DnsServer, Fault

    zones = {
        "example.test": {"MX": ["10 mx1.example.test", "20 mx2.example.test"]},
        "mx1.example.test": {"A": ["127.0.0.2"], "AAAA": ["::2"]},
        "alias.test": {"CNAME": ["example.test"]},
        "slow.test": {"A": (5, ["127.0.0.3"])},          # (TTL, records)
    }
    with DnsServer(zones) as dns_server:                  # started; stopped on exit
        host, port = dns_server.address                   # same port for UDP and TCP
        dns_server.fault("mx2.example.test", Fault.SERVFAIL)
        dns_server.fault("*", Fault.DROP, count=1)        # every name, once
        ...
        dns_server.count("example.test", "MX")            # queries seen so far
        dns_server.wait_for(lambda log: len(log) >= 2)    # no sleeping in tests

Responsibilities
    Answer DNS queries over UDP and TCP on one port of ``127.0.0.1`` (or ``::1``), bound
    to port 0, from a background thread with its own ``selectors`` loop (delayed answers
    wait in a timer heap, not in a sleep, so they do not hold up the others). Messages are built
    with dnspython. It behaves like a recursive resolver's answer to a stub: it follows
    CNAME chains inside its data (``chase_cnames``), answers NXDOMAIN or NODATA with an
    SOA in the authority section (owner ``.``, TTL and MINIMUM ``negative_ttl``, so
    negative caching can be tested), and sets TC when a UDP answer does not fit the
    client's EDNS payload (512 octets without EDNS) — the full answer goes over TCP.

Faults (:meth:`DnsServer.fault`, per name and optionally per type; ``"*"`` is any name)
    * ``SERVFAIL``, ``REFUSED``, ``NXDOMAIN``, ``FORMERR``: that rcode, no records;
    * ``DROP``: no answer at all (the client times out); over TCP the connection is
      closed without an answer;
    * ``TRUNCATE``: over UDP an empty answer with TC set, over TCP the full answer;
    * ``DELAY``: the normal answer, ``delay`` seconds later;
    * ``SPOOF``: before the real answer, a reply with the wrong id and one with another
      question (a resolver must ignore both).
    ``count=N`` makes a fault apply to the next N matching queries only.

Without sockets
    :meth:`answer` gives the response to a ``dns.message.Message`` directly (faults
    included), so pure tests can use the same zones as their oracle.

Extras
    :meth:`add_extra` puts arbitrary records into the answer or additional section of
    every answer for a name (B61: A records beside MX records). With ``additional=True``
    MX answers carry the exchangers' A/AAAA records in the additional section, as many
    recursive resolvers send them.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "Fault", "LoggedQuery", "dead_port"]

DEFAULT_TTL = 300
MAX_CHASE = 10


class Fault(enum.Enum):
    SERVFAIL = "servfail"
    REFUSED = "refused"
    NXDOMAIN = "nxdomain"
    FORMERR = "formerr"
    DROP = "drop"
    TRUNCATE = "truncate"
    DELAY = "delay"
    SPOOF = "spoof"


_RCODE_FAULTS = {Fault.SERVFAIL: dns.rcode.SERVFAIL, Fault.REFUSED: dns.rcode.REFUSED,
                 Fault.NXDOMAIN: dns.rcode.NXDOMAIN, Fault.FORMERR: dns.rcode.FORMERR}


@dataclass(frozen=True)
class LoggedQuery:
    """One query the server received: ``transport`` is "udp" or "tcp"; names lower case, no final dot."""

    transport: str
    name: str
    rdtype: str
    id: int


@dataclass
class _FaultRule:
    fault: Fault
    rdtype: dns.rdatatype.RdataType | None
    delay: float
    count: int | None


def _name(text: str | dns.name.Name) -> dns.name.Name:
    if isinstance(text, dns.name.Name):
        return text
    return dns.name.from_text(text, dns.name.root)


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


def dead_port(host: str = "127.0.0.1") -> tuple[str, int]:
    """An address with (very probably) nothing listening: a UDP port bound and released."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]


class DnsServer:
    """See the module documentation."""

    def __init__(self, zones: Mapping[str, Mapping[str, Iterable[str] | tuple[int, Iterable[str]]]] | None = None,
                 *, host: str = "127.0.0.1", negative_ttl: int = 60, chase_cnames: bool = True,
                 additional: bool = False) -> None:
        self.host = host
        self.negative_ttl = negative_ttl
        self.chase_cnames = chase_cnames
        self.additional = additional
        self._lock = threading.Condition()
        self._records: dict[str, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self._extras: dict[str, list[tuple[str, dns.rrset.RRset]]] = {}
        self._faults: dict[str, list[_FaultRule]] = {}
        self._log: list[LoggedQuery] = []
        self.errors: list[Exception] = []
        for name, types in (zones or {}).items():
            for rdtype, values in types.items():
                if isinstance(values, tuple) and len(values) == 2 and isinstance(values[0], int):
                    ttl, records = values
                    self.add(name, rdtype, *records, ttl=ttl)
                else:
                    self.add(name, rdtype, *values)
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._delayed: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.address: tuple[str, int] = (host, 0)

    # -- data -----------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = DEFAULT_TTL) -> None:
        """Add records (rdata text; names in it are absolute) of one type to a name."""
        owner = _name(name)
        the_type = dns.rdatatype.RdataType.make(rdtype)
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, the_type)
        for text in rdatas:
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, the_type, text, origin=dns.name.root,
                                          relativize=False), ttl)
        with self._lock:
            self._records.setdefault(_key(owner), {})[the_type] = rrset

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove one type of records of a name, or the whole name."""
        key = _key(_name(name))
        with self._lock:
            if rdtype is None:
                self._records.pop(key, None)
            else:
                self._records.get(key, {}).pop(dns.rdatatype.RdataType.make(rdtype), None)

    def add_extra(self, name: str, section: str, record: str) -> None:
        """Add ``record`` ("owner TTL IN TYPE rdata") to the ``answer`` or ``additional``
        section of every answer for ``name``."""
        if section not in ("answer", "additional"):
            raise ValueError("section must be 'answer' or 'additional'")
        owner, ttl, rdclass, rdtype, *rdata = record.split(None, 4)
        rrset = dns.rrset.from_text(_name(owner), int(ttl), rdclass, rdtype, *rdata)
        with self._lock:
            self._extras.setdefault(_key(_name(name)), []).append((section, rrset))

    def fault(self, name: str, fault: Fault, *, rdtype: str | None = None, delay: float = 0.0,
              count: int | None = None) -> None:
        """Make queries for ``name`` ("*": any name), optionally of one type, fail as ``fault``."""
        the_type = dns.rdatatype.RdataType.make(rdtype) if rdtype is not None else None
        key = "*" if name == "*" else _key(_name(name))
        with self._lock:
            self._faults.setdefault(key, []).append(_FaultRule(fault, the_type, delay, count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- the query log ----------------------------------------------------------------------

    def log(self) -> list[LoggedQuery]:
        """A copy of every query received so far, in order."""
        with self._lock:
            return list(self._log)

    def count(self, name: str | None = None, rdtype: str | None = None, transport: str | None = None) -> int:
        """How many queries matched (None matches anything)."""
        key = None if name is None else _key(_name(name))
        return sum(1 for q in self.log()
                   if (key is None or q.name == key) and (rdtype is None or q.rdtype == rdtype)
                   and (transport is None or q.transport == transport))

    def wait_for(self, predicate: Callable[[list[LoggedQuery]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(log)`` holds; False after ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._log), timeout)

    # -- running ----------------------------------------------------------------------------

    def start(self) -> DnsServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._udp = socket.socket(family, socket.SOCK_DGRAM)
        self._udp.bind((self.host, 0))
        port = self._udp.getsockname()[1]
        self._tcp = socket.socket(family, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._tcp.bind((self.host, port))
        except OSError:
            self._udp.close()
            self._tcp.close()
            return self.start()  # the TCP port of that number was taken: another pair
        self._tcp.listen(64)
        for s in (self._udp, self._tcp, self._wake_r):
            s.setblocking(False)
        self.address = (self.host, port)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._udp, selectors.EVENT_READ, self._on_udp)
        self._selector.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, lambda: None)
        self._thread = threading.Thread(target=self._run, name=f"dnsserver:{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._wake_w.send(b"\0")
        self._thread.join(10)
        self._thread = None
        assert self._selector is not None
        for key in list(self._selector.get_map().values()):
            if key.fileobj not in (self._wake_r,):
                key.fileobj.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> DnsServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self._selector is not None
        while not self._stopping:
            timeout = max(0.0, self._delayed[0][0] - time.monotonic()) if self._delayed else None
            for key, _ in self._selector.select(timeout):
                self._guarded(key.data)
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                self._guarded(heapq.heappop(self._delayed)[2])

    def _guarded(self, action: Callable[[], None]) -> None:
        # A bug in the server must not silently stop it: the test sees ``errors``.
        try:
            action()
        except Exception as exc:
            self.errors.append(exc)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        if delay <= 0:
            action()
        else:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), action))

    # -- UDP and TCP ----------------------------------------------------------------------

    def _on_udp(self) -> None:
        assert self._udp is not None
        try:
            data, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        udp = self._udp

        def send(wire: bytes) -> None:
            try:
                udp.sendto(wire, peer)
            except OSError:
                pass

        self._serve(data, "udp", send, lambda: None)

    def _on_accept(self) -> None:
        assert self._tcp is not None and self._selector is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        conn.setblocking(False)
        buffer = bytearray()
        selector = self._selector

        def close() -> None:
            if conn.fileno() >= 0:
                selector.unregister(conn)
                conn.close()

        def send(wire: bytes) -> None:
            if conn.fileno() < 0:
                return
            conn.settimeout(5)   # a few hundred octets to a local peer: sent at once
            try:
                conn.sendall(struct.pack("!H", len(wire)) + wire)
            except OSError:
                close()
                return
            conn.setblocking(False)

        def readable() -> None:
            try:
                data = conn.recv(65537)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                close()
                return
            buffer.extend(data)
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack_from("!H", buffer)[0]:
                length = struct.unpack_from("!H", buffer)[0]
                message = bytes(buffer[2:2 + length])
                del buffer[:2 + length]
                self._serve(message, "tcp", send, close)

        selector.register(conn, selectors.EVENT_READ, readable)

    # -- answers ---------------------------------------------------------------------------

    def _serve(self, wire: bytes, transport: str, send: Callable[[bytes], None],
               drop: Callable[[], None]) -> None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return
        if not query.question:
            return
        question = query.question[0]
        with self._lock:
            self._log.append(LoggedQuery(transport, _key(question.name),
                                         dns.rdatatype.to_text(question.rdtype), query.id))
            rule = self._take_fault(question.name, question.rdtype)
            self._lock.notify_all()
            response = self._response(query, transport, rule)
        if response is None:
            drop()
            return
        delay = rule.delay if rule is not None and rule.fault is Fault.DELAY else 0.0
        if rule is not None and rule.fault is Fault.SPOOF:
            for wire in self._spoofed(query, response):
                send(wire)
        self._later(delay, lambda: send(self._wire(query, response, transport)))

    def answer(self, query: dns.message.Message, transport: str = "tcp") -> dns.message.Message | None:
        """The server's response to ``query`` without any socket (None: dropped).

        Faults apply (and counts are used up) as for a query over ``transport``; DELAY
        and SPOOF give the plain answer. Pure plan tests use this as their oracle.
        """
        with self._lock:
            rule = self._take_fault(query.question[0].name, query.question[0].rdtype)
            return self._response(query, transport, rule)

    def _take_fault(self, name: dns.name.Name, rdtype: int) -> _FaultRule | None:
        for key in (_key(name), "*"):
            for rule in self._faults.get(key, []):
                if rule.rdtype is not None and rule.rdtype != rdtype:
                    continue
                if rule.count is not None:
                    if rule.count <= 0:
                        continue
                    rule.count -= 1
                return rule
        return None

    def _response(self, query: dns.message.Message, transport: str,
                  rule: _FaultRule | None) -> dns.message.Message | None:
        fault = rule.fault if rule is not None else None
        if fault is Fault.DROP:
            return None
        response = dns.message.make_response(query, recursion_available=True)
        if fault in _RCODE_FAULTS:
            response.set_rcode(_RCODE_FAULTS[fault])
            return response
        if fault is Fault.TRUNCATE and transport == "udp":
            response.flags |= dns.flags.TC
            return response
        question = query.question[0]
        self._fill(response, question.name, question.rdtype)
        for section, rrset in self._extras.get(_key(question.name), []):
            getattr(response, section).append(rrset)
        return response

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> None:
        owner = qname
        for _ in range(MAX_CHASE):
            records = self._records.get(_key(owner), {})
            if rdtype in records:
                response.answer.append(records[rdtype])
                if self.additional and rdtype == dns.rdatatype.MX:
                    self._glue(response, records[rdtype])
                return
            cname = records.get(dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(cname)
            if not self.chase_cnames:
                return
            owner = cname[0].target
        if not self._exists(owner):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text(
            dns.name.root, self.negative_ttl, "IN", "SOA",
            f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}"))

    def _exists(self, name: dns.name.Name) -> bool:
        key = _key(name)
        return any(k == key or k.endswith("." + key) for k, types in self._records.items() if types)

    def _glue(self, response: dns.message.Message, mx: dns.rrset.RRset) -> None:
        for rdata in mx:
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                rrset = self._records.get(_key(rdata.exchange), {}).get(rdtype)
                if rrset is not None:
                    response.additional.append(rrset)

    @staticmethod
    def _wire(query: dns.message.Message, response: dns.message.Message, transport: str) -> bytes:
        wire = response.to_wire(max_size=65535)   # not the client's payload: we cut below
        if transport == "udp":
            limit = max(512, query.payload) if query.edns >= 0 else 512
            if len(wire) > limit:
                short = dns.message.make_response(query, recursion_available=True)
                short.flags |= dns.flags.TC
                wire = short.to_wire()
        return wire

    @staticmethod
    def _spoofed(query: dns.message.Message, response: dns.message.Message) -> list[bytes]:
        """A copy of the answer with the wrong id, and an answer to another question with the right id."""
        wire = response.to_wire(max_size=65535)
        wrong_id = struct.pack("!H", (query.id + 1) & 0xFFFF) + wire[2:]
        other = dns.message.make_query("spoofed.invalid.", "A", id=query.id)
        other_response = dns.message.make_response(other)
        other_response.answer.append(dns.rrset.from_text("spoofed.invalid.", 300, "IN", "A", "127.6.6.6"))
        return [wrong_id, other_response.to_wire()]
