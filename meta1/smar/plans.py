"""Lookup plans: MX with the exchangers' addresses, addresses of a host, PTR and TXT.

Responsibilities
    A plan knows which DNS questions a lookup needs and what their answers mean; it
    never sends anything. The driver (:mod:`meta1.smar.resolver`, or a test) runs it:

        plan = MxPlan("example.org")
        while not plan.done:
            while (question := plan.next_query()) is not None:
                ... ask it (cache, or an ExchangePlan over the nameservers) ...
            ... for each question answered: plan.query_result(question, outcome) ...
        plan.result          # an MxResult

    ``next_query()`` hands out every question that can be asked now (the A and AAAA
    questions of all exchangers at once, so they run in parallel); ``query_result()``
    takes the :class:`~meta1.smar.exchange.Outcome` of one of them and may make new
    questions available (a CNAME to follow, the addresses after the MX answer). The plan
    is done when no question is outstanding. The shape is dnspython's ``_Resolution``
    (``next_request`` / ``query_result``), for several questions in flight.

The MX plan (RFC 5321 §5.1, RFC 7505, reference §1.5)
    1. ``MX`` of the domain, following a CNAME chain. NXDOMAIN: permanent, 5.1.2. No
       answer from any nameserver: temporary, 4.4.3.
    2. A single MX whose exchange is the root ``.`` is a null MX (RFC 7505 §3): the
       domain accepts no mail; permanent, 5.1.10, no connection is made. A ``.`` among
       other MX records is ignored (D-SMAR-8).
    3. No MX records (NODATA): implicit MX — the domain itself, preference 0 (RFC 5321
       §5.1).
    4. Otherwise the exchangers, in preference order (a name listed twice keeps its best
       preference), at most ``max_exchangers``. Only MX records of the queried name count
       as entries; other records in the same reply do not (B61). For each exchanger ``A``
       and ``AAAA`` (``AAAA`` unless ``want_ipv6`` is off), following CNAMEs, unless the
       MX reply's additional section already holds that type for that name (D-SMAR-7).
    5. The result is good enough when any exchanger has an address (B60): OK, with every
       exchanger listed (those without addresses say why). None has one: temporary
       (4.4.3) if any address lookup failed temporarily, else permanent (5.4.4).

Data it owns
    The questions not yet handed out, the waiters per outstanding question, the chases
    (one per (name, type), each following its own CNAME chain), and for the MX plan the
    exchangers and their addresses found so far.

Strategies and why
    * A CNAME chain is followed inside the reply first (recursive resolvers send the
      whole chain); where it ends without data, the target is asked for (a server that
      does not chase). At most ``max_cnames`` links; longer or looping chains are a
      temporary failure (D-SMAR-9), as a broken zone gets fixed more often than not.
    * NXDOMAIN after a CNAME concerns the chain's last name (RFC 6604 §2): permanent.
    * A domain that is not a valid DNS name (empty label, label over 63 octets, name over
      255) is a permanent failure at once, 5.1.2 — it comes from a mail address, not us.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from meta1.smar.exchange import Outcome, Question, Status

MAX_CNAMES = 8
MAX_EXCHANGERS = 10

# RFC 3463 enhanced status codes of DNS results.
STATUS_OK = "2.0.0"
STATUS_TEMPORARY = "4.4.3"   # directory server failure
STATUS_NOT_FOUND = "5.1.2"   # bad destination system address (NXDOMAIN)
STATUS_NULL_MX = "5.1.10"    # RFC 7505 §4.2: recipient address has null MX
STATUS_NO_ROUTE = "5.4.4"    # unable to route: no address anywhere


class Verdict(enum.Enum):
    OK = "ok"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Exchanger:
    """One mail exchanger: its name, preference and addresses (IPv6 first, then IPv4)."""

    name: str
    preference: int
    addresses: tuple[str, ...]
    problem: str = ""        # why there is no address, or why one family is missing


@dataclass(frozen=True)
class MxResult:
    """Where mail for ``domain`` goes: the exchangers in preference order, or why not."""

    domain: str
    verdict: Verdict
    status: str
    reason: str
    exchangers: tuple[Exchanger, ...] = ()
    implicit: bool = False   # no MX records: the domain itself, preference 0

    @property
    def usable(self) -> tuple[Exchanger, ...]:
        """The exchangers that have at least one address, in preference order."""
        return tuple(x for x in self.exchangers if x.addresses)


@dataclass(frozen=True)
class AddressResult:
    """The addresses of ``host`` (IPv6 first, then IPv4), or why there are none."""

    host: str
    verdict: Verdict
    status: str
    reason: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordsResult:
    """The records of one type for ``name`` as text (PTR: names; TXT: joined strings)."""

    name: str
    rdtype: str
    verdict: Verdict
    status: str
    reason: str
    records: tuple[str, ...] = ()


def name_text(name: dns.name.Name) -> str:
    """A name as meta1 shows it: lower case, no final dot (the root is ``.``)."""
    return name.to_text(omit_final_dot=True).lower() or "."


def _find(section: list[dns.rrset.RRset], name: dns.name.Name,
          rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN and rrset.name == name:
            return rrset
    return None


class Chase:
    """One (name, type) lookup that follows CNAME chains; :meth:`take` feeds it outcomes.

    When over, ``status`` is ANSWER (``rrset`` holds the records, or is None for NODATA),
    NXDOMAIN or TEMPFAIL; ``name`` is where the chain ended, ``message`` the last reply.
    """

    def __init__(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, max_cnames: int) -> None:
        self.question = Question(name, rdtype)
        self.name = name
        self.max_cnames = max_cnames
        self.links = 0
        self.seen = {name}
        self.status: Status | None = None
        self.rrset: dns.rrset.RRset | None = None
        self.message: dns.message.Message | None = None
        self.detail = ""

    def take(self, outcome: Outcome) -> Question | None:
        """Digest the outcome of :attr:`question`; the follow-up question, or None when over."""
        self.message, self.detail = outcome.message, outcome.detail
        if outcome.status is not Status.ANSWER or outcome.message is None:
            self.status = outcome.status
            return None
        answer = outcome.message.answer
        while True:
            rrset = _find(answer, self.name, self.question.rdtype)
            if rrset is not None:
                self.status, self.rrset = Status.ANSWER, rrset
                return None
            cname = _find(answer, self.name, dns.rdatatype.CNAME)
            if cname is None:
                break
            target = cname[0].target
            self.links += 1
            if self.links > self.max_cnames or target in self.seen:
                self.status = Status.TEMPFAIL
                self.detail = f"{self.question}: CNAME chain longer than {self.max_cnames} or looping"
                return None
            self.seen.add(target)
            self.name = target
        if self.name == self.question.name:
            self.status = Status.ANSWER  # NODATA: the name exists, without this type
            return None
        self.question = Question(self.name, self.question.rdtype)
        return self.question


class LookupPlan:
    """The machinery shared by the plans: questions to hand out, waiters, the result."""

    def __init__(self, max_cnames: int = MAX_CNAMES) -> None:
        self.max_cnames = max_cnames
        self._to_ask: deque[Question] = deque()
        self._waiters: dict[Question, list[Callable[[Outcome], None]]] = {}
        self.result: MxResult | AddressResult | RecordsResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def next_query(self) -> Question | None:
        """A question to ask now, or None (nothing more until an outcome comes back)."""
        return self._to_ask.popleft() if self._to_ask and self.result is None else None

    def query_result(self, question: Question, outcome: Outcome) -> None:
        """The outcome of a question this plan handed out."""
        waiters = self._waiters.pop(question, None)
        if waiters is None:
            raise ValueError(f"not a question of this plan (or answered already): {question}")
        for waiter in waiters:
            waiter(outcome)
        if self.result is None and not self._waiters:
            self.result = self._conclude()

    def _ask(self, question: Question, waiter: Callable[[Outcome], None]) -> None:
        # Identical questions are asked once; every waiter gets the outcome.
        if question in self._waiters:
            self._waiters[question].append(waiter)
        else:
            self._waiters[question] = [waiter]
            self._to_ask.append(question)

    def _chase(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
               on_done: Callable[[Chase], None]) -> None:
        chase = Chase(name, rdtype, self.max_cnames)

        def waiter(outcome: Outcome) -> None:
            follow_up = chase.take(outcome)
            if follow_up is None:
                on_done(chase)
            else:
                self._ask(follow_up, waiter)

        self._ask(chase.question, waiter)

    def _conclude(self) -> MxResult | AddressResult | RecordsResult:
        raise NotImplementedError


def _parse_name(text: str) -> dns.name.Name | None:
    text = text.strip()
    if text in ("", "."):
        return None
    try:
        return dns.name.from_text(text, dns.name.root)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


@dataclass
class _Addresses:
    """The address lookups of one host (an exchanger, or a host for AddressPlan)."""

    name: dns.name.Name
    found: dict[dns.rdatatype.RdataType, tuple[str, ...]] = field(default_factory=dict)
    statuses: list[Status] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def take(self, chase: Chase) -> None:
        assert chase.status is not None
        self.statuses.append(chase.status)
        if chase.rrset is not None:
            self.found[chase.question.rdtype] = tuple(r.address for r in chase.rrset)
        elif chase.status is Status.ANSWER:
            self.problems.append(f"{chase.question.rdtype.name}: no records")
        else:
            self.problems.append(chase.detail or f"{chase.question}: {chase.status.value}")

    def addresses(self) -> tuple[str, ...]:
        return self.found.get(dns.rdatatype.AAAA, ()) + self.found.get(dns.rdatatype.A, ())

    def verdict(self) -> tuple[Verdict, str]:
        """OK with any address; else temporary if any lookup was; else permanent."""
        if self.addresses():
            return Verdict.OK, STATUS_OK
        if Status.TEMPFAIL in self.statuses:
            return Verdict.TEMPORARY, STATUS_TEMPORARY
        if Status.NXDOMAIN in self.statuses:
            return Verdict.PERMANENT, STATUS_NOT_FOUND
        return Verdict.PERMANENT, STATUS_NO_ROUTE

    def problem(self) -> str:
        return "; ".join(self.problems)


def _address_types(want_ipv6: bool) -> tuple[dns.rdatatype.RdataType, ...]:
    return (dns.rdatatype.A, dns.rdatatype.AAAA) if want_ipv6 else (dns.rdatatype.A,)


class AddressPlan(LookupPlan):
    """``A`` and ``AAAA`` of one host, in parallel, following CNAMEs."""

    def __init__(self, host: str, *, want_ipv6: bool = True, max_cnames: int = MAX_CNAMES) -> None:
        super().__init__(max_cnames)
        self.host = host
        name = _parse_name(host)
        if name is None:
            self.result = AddressResult(host, Verdict.PERMANENT, STATUS_NOT_FOUND,
                                        f"{host!r} is not a valid host name")
            return
        self._addresses = _Addresses(name)
        for rdtype in _address_types(want_ipv6):
            self._chase(name, rdtype, self._addresses.take)

    def _conclude(self) -> AddressResult:
        verdict, status = self._addresses.verdict()
        reason = "" if verdict is Verdict.OK else self._addresses.problem()
        return AddressResult(self.host, verdict, status, reason, self._addresses.addresses())


class RecordsPlan(LookupPlan):
    """The records of one type for a name (PTR, TXT, ...) as text, following CNAMEs."""

    def __init__(self, name: str | dns.name.Name, rdtype: str | int, *,
                 max_cnames: int = MAX_CNAMES) -> None:
        super().__init__(max_cnames)
        self._done_chase: Chase | None = None
        self.rdtype = dns.rdatatype.RdataType.make(rdtype)
        parsed = name if isinstance(name, dns.name.Name) else _parse_name(name)
        self.name = name_text(parsed) if parsed is not None else str(name)
        if parsed is None:
            self.result = RecordsResult(self.name, self.rdtype.name, Verdict.PERMANENT,
                                        STATUS_NOT_FOUND, f"{name!r} is not a valid name")
            return
        self._chase(parsed, self.rdtype, self._take)

    def _take(self, chase: Chase) -> None:
        self._done_chase = chase

    def _conclude(self) -> RecordsResult:
        chase = self._done_chase
        assert chase is not None
        if chase.rrset is not None:
            records = tuple(_rdata_text(rdata) for rdata in chase.rrset)
            return RecordsResult(self.name, self.rdtype.name, Verdict.OK, STATUS_OK, "", records)
        if chase.status is Status.TEMPFAIL:
            return RecordsResult(self.name, self.rdtype.name, Verdict.TEMPORARY, STATUS_TEMPORARY, chase.detail)
        status = STATUS_NOT_FOUND if chase.status is Status.NXDOMAIN else STATUS_NO_ROUTE
        reason = chase.detail if chase.status is Status.NXDOMAIN else f"{chase.question}: no records"
        return RecordsResult(self.name, self.rdtype.name, Verdict.PERMANENT, status, reason)


def _rdata_text(rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdata.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return name_text(rdata.target)
    return rdata.to_text()


def ptr_plan(address: str) -> RecordsPlan:
    """The PTR lookup of an IPv4 or IPv6 address (ValueError if it is not one)."""
    return RecordsPlan(dns.reversename.from_address(str(ipaddress.ip_address(address))), dns.rdatatype.PTR)


def txt_plan(name: str) -> RecordsPlan:
    """The TXT lookup of a name."""
    return RecordsPlan(name, dns.rdatatype.TXT)


class MxPlan(LookupPlan):
    """Where mail for a domain goes; see the module documentation for the steps."""

    def __init__(self, domain: str, *, want_ipv6: bool = True, max_exchangers: int = MAX_EXCHANGERS,
                 max_cnames: int = MAX_CNAMES) -> None:
        super().__init__(max_cnames)
        self.domain = domain
        self.want_ipv6 = want_ipv6
        self.max_exchangers = max_exchangers
        self.implicit = False
        self._exchangers: list[tuple[int, _Addresses]] = []
        name = _parse_name(domain)
        if name is None:
            self._fail(Verdict.PERMANENT, STATUS_NOT_FOUND, f"{domain!r} is not a valid domain name")
            return
        self._chase(name, dns.rdatatype.MX, self._mx_done)

    def _fail(self, verdict: Verdict, status: str, reason: str) -> None:
        self.result = MxResult(self.domain, verdict, status, reason)

    def _mx_done(self, chase: Chase) -> None:
        if chase.status is Status.TEMPFAIL:
            self._fail(Verdict.TEMPORARY, STATUS_TEMPORARY, chase.detail)
        elif chase.status is Status.NXDOMAIN:
            self._fail(Verdict.PERMANENT, STATUS_NOT_FOUND, f"domain not found ({chase.detail})")
        elif chase.rrset is None:
            self.implicit = True
            self._resolve_exchangers([(0, chase.question.name)], None)
        else:
            entries = sorted((rdata.preference, rdata.exchange) for rdata in chase.rrset)
            if all(exchange == dns.name.root for _, exchange in entries):
                self._fail(Verdict.PERMANENT, STATUS_NULL_MX,
                           f"domain {name_text(chase.name)} accepts no mail (null MX, RFC 7505)")
                return
            best: dict[dns.name.Name, int] = {}
            for preference, exchange in entries:
                if exchange != dns.name.root:
                    best.setdefault(exchange, preference)
            exchangers = sorted(((p, n) for n, p in best.items()), key=lambda pn: (pn[0], name_text(pn[1])))
            self._resolve_exchangers(exchangers[:self.max_exchangers], chase.message)

    def _resolve_exchangers(self, exchangers: list[tuple[int, dns.name.Name]],
                            reply: dns.message.Message | None) -> None:
        for preference, name in exchangers:
            addresses = _Addresses(name)
            self._exchangers.append((preference, addresses))
            for rdtype in _address_types(self.want_ipv6):
                glue = _find(reply.additional, name, rdtype) if reply is not None else None
                if glue is not None:
                    addresses.found[rdtype] = tuple(r.address for r in glue)
                    addresses.statuses.append(Status.ANSWER)
                else:
                    self._chase(name, rdtype, addresses.take)

    def _conclude(self) -> MxResult:
        exchangers = tuple(Exchanger(name_text(a.name), preference, a.addresses(), a.problem())
                           for preference, a in self._exchangers)
        if any(x.addresses for x in exchangers):
            return MxResult(self.domain, Verdict.OK, STATUS_OK, "", exchangers, self.implicit)
        temporary = any(Status.TEMPFAIL in a.statuses for _, a in self._exchangers)
        problems = "; ".join(f"{x.name}: {x.problem}" for x in exchangers)
        what = "the domain has no MX and no address" if self.implicit else "no MX host has an address"
        if temporary:
            return MxResult(self.domain, Verdict.TEMPORARY, STATUS_TEMPORARY, f"{what} ({problems})",
                            exchangers, self.implicit)
        return MxResult(self.domain, Verdict.PERMANENT, STATUS_NO_ROUTE, f"{what} ({problems})",
                        exchangers, self.implicit)
