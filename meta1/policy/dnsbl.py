"""DNS block lists: the names to ask for a client, and what the answers mean.

Responsibilities
    For the lists declared in smar (``dnsbl NAME { domain; reply; codes; }``, D-POL-14),
    :func:`query_name` gives the name to look up for a client (RFC 5782 §2.1, §2.4) and
    :func:`dnsbl_verdict` turns the answers into a :class:`DnsblVerdict`: the first list
    (in the order of the configuration) that lists the client, with the reply it gives.
    Pure: smar asks the ``A`` questions (:func:`meta1.smar.plans.RecordsPlan`) and hands
    the results in; :func:`answer_from_records` converts them.

Query names (RFC 5782)
    IPv4: the octets in reverse order, then the list's domain: client 192.0.2.99 at
    ``zen.example`` is ``99.2.0.192.zen.example``. IPv6: the 32 nibbles of the address in
    reverse order, dot-separated (``…8.b.d.0.1.0.0.2.zen.example``). An IPv4-mapped IPv6
    client is asked as its IPv4 address.

What counts as a listing (reliability T49)
    Only an ``A`` record inside the list's ``codes`` (addresses or CIDR networks). By
    default ``codes`` is 127.0.0.2–127.0.0.255: RFC 5782 §2.1 reserves 127.0.0.2 as the
    test entry and says 127.0.0.1 must never be a listing; anything outside 127.0.0.0/24
    — the 127.255.255.x error codes some lists return to resolvers they refuse, or a
    wildcarded domain's real address — is not a listing, and says so in ``warnings``.

Failures fail open (reliability T48)
    A list that does not answer (timeout, SERVFAIL, a lookup that could not be made) does
    not list the client; the verdict names it in ``failed`` for the log. A DNSBL is an
    opinion about the client, and a broken one must not stop mail.

Overrides (B45)
    A listing is held like a client rejection (with delay_checks until RCPT, without until
    MAIL): a ``from:`` entry with OK or RELAY for the sender, a relay grant (AUTH, TLS,
    ``cltaddr:``/``cltname:`` RELAY) or an accepting client entry overrides it
    (:mod:`meta1.policy.session`).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from meta1.policy.rhs import Action, Macros, Rhs, RhsError, expand, literal_reply, parse_rhs
from meta1.smar.plans import RecordsResult, Verdict
from meta1.smtp.replies import R, Reply

DEFAULT_CODES = ("127.0.0.0/24",)
_NEVER_LISTINGS = (ipaddress.ip_address("127.0.0.0"), ipaddress.ip_address("127.0.0.1"))


@dataclass(frozen=True)
class DnsblList:
    """A declared list: its name, DNS domain, reply and listing codes."""

    name: str
    domain: str
    reply: str = ""                      # an RHS reply (with macros), "" = R.DNSBL_LISTED
    codes: tuple[str, ...] = ()          # addresses or networks; () = the default

    def __post_init__(self) -> None:
        _ = self.networks                # validates
        if self.reply:
            rhs = parse_rhs(self.reply)  # RhsError for a bad reply
            if rhs.action not in (Action.REPLY, Action.REJECT, Action.TEMPFAIL) or rhs.quick:
                raise RhsError("a DNSBL reply is a 4xx or 5xx reply, REJECT or TEMPFAIL")

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(code, strict=False) for code in (self.codes or DEFAULT_CODES))

    def lists(self, address: str) -> bool:
        """Is ``address`` (an A record) one of this list's listing codes?"""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if not self.codes and ip in _NEVER_LISTINGS:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)


def query_name(client_addr: str, domain: str) -> str:
    """The name to ask ``A`` for: the client reversed (RFC 5782 §2.1, §2.4) under ``domain``."""
    ip = ipaddress.ip_address(client_addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        reverse = ".".join(reversed(str(ip).split(".")))
    else:
        reverse = ".".join(reversed(ip.exploded.replace(":", "")))
    return f"{reverse}.{domain.strip('.').lower()}"


class AnswerStatus(enum.Enum):
    ADDRESSES = "addresses"     # A records (listing codes or not)
    NOT_LISTED = "not_listed"   # NXDOMAIN or no A records
    FAILED = "failed"           # no answer: timeout, SERVFAIL, ...


@dataclass(frozen=True)
class DnsblAnswer:
    status: AnswerStatus
    addresses: tuple[str, ...] = ()
    detail: str = ""


NOT_LISTED = DnsblAnswer(AnswerStatus.NOT_LISTED)


def answer_from_records(result: RecordsResult) -> DnsblAnswer:
    """A :class:`~meta1.smar.plans.RecordsResult` of an ``A`` lookup as a DNSBL answer."""
    if result.verdict is Verdict.OK:
        return DnsblAnswer(AnswerStatus.ADDRESSES, tuple(result.records))
    if result.verdict is Verdict.TEMPORARY:
        return DnsblAnswer(AnswerStatus.FAILED, detail=result.reason)
    return NOT_LISTED          # NXDOMAIN, NODATA


@dataclass(frozen=True)
class DnsblVerdict:
    """The first list that lists the client (None: not listed), and what to log."""

    listed_by: DnsblList | None = None
    codes: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()         # lists that did not answer (fail open)
    warnings: tuple[str, ...] = field(default=())

    @property
    def listed(self) -> bool:
        return self.listed_by is not None

    def reply(self, macros: Macros) -> Reply:
        """The listing's reply (macros expanded; ``${dnsbl}`` is the list's domain)."""
        assert self.listed_by is not None
        dnsbl = self.listed_by
        macros = Macros(**{**macros.__dict__, "dnsbl": dnsbl.domain})
        if not dnsbl.reply:
            return R.DNSBL_LISTED.format(address=macros.client_addr, name=dnsbl.domain)
        rhs: Rhs = parse_rhs(dnsbl.reply)
        if rhs.action is Action.REJECT:
            return R.DNSBL_LISTED.format(address=macros.client_addr, name=dnsbl.domain)
        if rhs.action is Action.TEMPFAIL:
            return R.ACCESS_TEMPFAIL
        text = expand(rhs.text, macros) or R.DNSBL_LISTED.format(
            address=macros.client_addr, name=dnsbl.domain).lines[0]
        return literal_reply(rhs.code, rhs.status, text)


NOT_LISTED_VERDICT = DnsblVerdict()


def dnsbl_verdict(lists: Sequence[DnsblList], answers: Mapping[str, DnsblAnswer]) -> DnsblVerdict:
    """The verdict over ``lists`` given each list's answer by its name (a list without an
    answer counts as failed)."""
    failed, warnings = [], []
    for dnsbl in lists:
        answer = answers.get(dnsbl.name)
        if answer is None or answer.status is AnswerStatus.FAILED:
            failed.append(f"{dnsbl.name}: {answer.detail if answer and answer.detail else 'no answer'}")
            continue
        if answer.status is AnswerStatus.NOT_LISTED:
            continue
        codes = tuple(a for a in answer.addresses if dnsbl.lists(a))
        others = [a for a in answer.addresses if a not in codes]
        if others:
            warnings.append(f"{dnsbl.name}: answer {', '.join(others[:4])} is not a listing code; ignored")
        if codes:
            return DnsblVerdict(dnsbl, codes, tuple(failed), tuple(warnings))
    return DnsblVerdict(None, (), tuple(failed), tuple(warnings))
