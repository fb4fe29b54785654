"""Access-map checks per SMTP stage, and the configuration lookups of the access map.

Responsibilities
    The lookups of the access map (``smar { access_map { name = ...; } }``; README 3.12.2,
    reference §2.6), each a generator of lookup steps (:mod:`meta1.policy.plan`), so that
    smar can run it over any map without blocking:

    ============================  ===============================  =====================
    check                         tags and keys, in order          result
    ============================  ===============================  =====================
    :func:`client_steps`          ``cltaddr:`` IP keys,            :class:`Check`
    (connect)                     ``cltname:`` domain keys of the
                                  validated name, ``cltresolve:``
                                  the resolution status
    :func:`sender_steps` (MAIL)   ``from:`` address keys (``<>``)  :class:`Check`
    :func:`recipient_steps`       ``to:`` address keys             :class:`Check`
    :func:`protected_steps`       ``protectedrcpt:`` address keys  :class:`Protection`
    :func:`conf_steps` and        ``smtps_session_conf:``,         :class:`ConfResult`
    the three ``*_conf`` helpers  ``smtpc_session_conf:`` (in
                                  qmgr's configuration map,
                                  D-POL-28), ``smtpc_rcpt_conf:``
    ============================  ===============================  =====================

    Keys come from :mod:`meta1.maps.keys`: IP addresses lose a component at a time keeping
    the delimiter (B17, B18; IPv6 uncompressed, B20, B21), domains go up through their
    parents (``.example.org``), addresses go ``user+detail@domain``, ``user@domain``, the
    domain keys, ``user+detail@``, ``user@``. The first key found decides — the most
    specific entry wins (B19) — and a ``NOMORE`` answer ends the tag's keys (B26).

The client check
    ``cltaddr:`` first, then ``cltname:`` (only for a name that passed the forward check,
    see :func:`client_resolution`), then ``cltresolve:`` with the status ``ok``, ``fail``,
    ``forged`` or ``temp`` as key (``cltresolve:forged REJECT``). The first tag with an
    entry decides the client check; an OK or RELAY for the address or the name therefore
    also exempts the client from the ``cltresolve:`` rule (a listed client needs no
    reverse DNS).

Failures
    A lookup that answers TEMP or PERM, or an entry whose RHS does not parse
    (:mod:`meta1.policy.rhs`), ends the check with ``failure`` set: the command being
    checked gets a 4xx (B27, B28, D-POL-3), never "not found". For the ``*_conf:`` tags a
    failure means "configuration unknown": the session or the delivery is deferred, not
    run with defaults (B33, D-POL-10). A configuration value is returned whole, however
    long (B34).

``protectedrcpt:`` (README 3.10.3, B22, B48)
    The entry's value lists the clients that may send to the recipient, separated by
    white space or commas: an address (``192.0.2.1``, ``2001:db8::1``), a MeTA1 network
    prefix ending in its delimiter (``10.1.``, ``2001:db8:``, as the ``cltaddr:`` keys),
    or a CIDR network (``10.0.0.0/8``, ``2001:db8::/32``). Any other client is refused,
    whatever its relay grants (D-POL-9). A list item that is none of these makes the
    entry invalid: a failure (4xx), not a refusal or an acceptance.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Mapping

from meta1.maps.keys import address_keys, domain_keys, ip_keys
from meta1.policy.plan import KeyOrder, Outcome, Steps, first_found
from meta1.policy.rhs import Rhs, RhsError, parse_rhs
from meta1.smar.plans import AddressResult, RecordsResult, Verdict

CLTADDR = "cltaddr:"
CLTNAME = "cltname:"
CLTRESOLVE = "cltresolve:"
FROM = "from:"
TO = "to:"
PROTECTEDRCPT = "protectedrcpt:"
SMTPS_SESSION_CONF = "smtps_session_conf:"
SMTPC_SESSION_CONF = "smtpc_session_conf:"
SMTPC_RCPT_CONF = "smtpc_rcpt_conf:"

#: The key of the null reverse path ``MAIL FROM:<>`` (D-POL-5).
NULL_SENDER_KEY = "<>"
#: At most this many PTR names are forward-checked (a hostile zone may list hundreds).
MAX_PTR_NAMES = 5


class ResolveStatus(enum.Enum):
    """The client resolution check (the ``cltresolve:`` key)."""

    OK = "ok"           # a PTR name whose addresses include the client's
    FAIL = "fail"       # no PTR record (or the PTR lookup failed permanently)
    FORGED = "forged"   # PTR names, none of which resolves back to the client
    TEMP = "temp"       # a lookup failed temporarily


def forward_names(ptr: RecordsResult) -> tuple[str, ...]:
    """The PTR names whose addresses :func:`client_resolution` needs (A and AAAA)."""
    if ptr.verdict is not Verdict.OK:
        return ()
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in ptr.records if name))[:MAX_PTR_NAMES]


def client_resolution(client_addr: str, ptr: RecordsResult,
                      forward: Mapping[str, AddressResult]) -> tuple[ResolveStatus, str]:
    """The status of the client's reverse DNS and its validated name (or ``""``).

    ``ptr`` is the PTR lookup of ``client_addr``; ``forward`` maps each of
    :func:`forward_names` to its address lookup. A name is validated when its addresses
    include the client's (forward-confirmed reverse DNS); only a validated name is used
    for ``cltname:`` keys, so a client cannot choose its own name.
    """
    if ptr.verdict is Verdict.TEMPORARY:
        return ResolveStatus.TEMP, ""
    names = forward_names(ptr)
    if not names:
        return ResolveStatus.FAIL, ""
    client = _ip(client_addr)
    temporary = False
    for name in names:
        result = forward.get(name)
        if result is None or result.verdict is Verdict.TEMPORARY:
            temporary = True
            continue
        if any(_ip(a) == client for a in result.addresses):
            return ResolveStatus.OK, name
    return (ResolveStatus.TEMP if temporary else ResolveStatus.FORGED), ""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Entry:
    """The access-map entry that decided a check: the tagged key found, and its RHS."""

    key: str
    rhs: Rhs

    @property
    def tag(self) -> str:
        return self.key[:self.key.index(":") + 1]


@dataclass(frozen=True)
class Check:
    """The result of one check: the entry that decides it, or none, or a failure."""

    entry: Entry | None = None
    failure: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    @property
    def rhs(self) -> Rhs | None:
        return self.entry.rhs if self.entry is not None else None


NO_ENTRY = Check()


def _failure(outcome: Outcome) -> str:
    result = outcome.result
    assert result is not None
    return f"{outcome.key}: {result.status.name}" + (f" {result.reason}" if result.reason else "")


def tag_steps(map_name: str | None, tag: str, keys: KeyOrder) -> Steps[Check]:
    """One tag's lookups and the RHS of the entry found."""
    outcome = yield from first_found(map_name, tag, keys)
    if outcome.failed:
        return Check(failure=_failure(outcome))
    if not outcome.found:
        return NO_ENTRY
    try:
        rhs = parse_rhs(outcome.value)
    except RhsError as error:
        return Check(failure=f"{outcome.key}: bad RHS: {error}")
    return Check(Entry(outcome.key, rhs))


def client_steps(map_name: str | None, client_addr: str, client_name: str = "",
                 resolve: ResolveStatus = ResolveStatus.FAIL) -> Steps[Check]:
    """The connect-stage check: ``cltaddr:``, ``cltname:``, ``cltresolve:``."""
    tags: list[tuple[str, KeyOrder]] = [(CLTADDR, lambda: ip_keys(client_addr))]
    if client_name and resolve is ResolveStatus.OK:
        tags.append((CLTNAME, lambda: domain_keys(client_name)))
    tags.append((CLTRESOLVE, lambda: [resolve.value]))
    for tag, keys in tags:
        check = yield from tag_steps(map_name, tag, keys)
        if check.entry is not None or check.failed:
            return check
    return NO_ENTRY


def sender_keys(sender: str) -> list[str]:
    """``from:`` keys: the address keys, or ``<>`` for the null reverse path."""
    return [NULL_SENDER_KEY] if not sender else address_keys(sender)


def sender_steps(map_name: str | None, sender: str) -> Steps[Check]:
    """The MAIL-stage check: ``from:`` with the sender's address keys."""
    return (yield from tag_steps(map_name, FROM, lambda: sender_keys(sender)))


def recipient_steps(map_name: str | None, rcpt: str) -> Steps[Check]:
    """The RCPT-stage check: ``to:`` with the recipient's address keys."""
    return (yield from tag_steps(map_name, TO, lambda: address_keys(rcpt)))


# --- protectedrcpt: ---------------------------------------------------------------------

@dataclass(frozen=True)
class Protection:
    """The ``protectedrcpt:`` check: is the recipient protected, and is this client allowed?"""

    key: str = ""
    allowed: bool = True
    failure: str = ""

    @property
    def protected(self) -> bool:
        return bool(self.key)

    @property
    def failed(self) -> bool:
        return bool(self.failure)


def parse_client_list(text: str) -> tuple[str, ...]:
    """The items of a ``protectedrcpt:`` value in canonical form; ValueError for a bad one.

    Addresses become their first ``cltaddr:`` key, MeTA1 prefixes are normalised the same
    way (IPv6 groups without leading zeros), CIDR networks are kept as networks."""
    items = []
    for word in text.replace(",", " ").split():
        items.append(_client_item(word))
    if not items:
        raise ValueError("an empty list of clients")
    return tuple(items)


def _client_item(word: str) -> str:
    word = word.lower()
    if "/" in word:
        return "net:" + str(ipaddress.ip_network(word, strict=False))
    if word.endswith("."):
        parts = word[:-1].split(".")
        if not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() and int(p) <= 255 for p in parts):
            raise ValueError(f"not an IPv4 prefix: {word!r}")
        return ".".join(str(int(p)) for p in parts) + "."
    if word.endswith(":") and not word.endswith("::"):
        groups = word[:-1].split(":")
        if not 1 <= len(groups) <= 7 or not all(1 <= len(g) <= 4 and all(c in "0123456789abcdef" for c in g)
                                                for g in groups):
            raise ValueError(f"not an IPv6 prefix: {word!r}")
        return ":".join(format(int(g, 16), "x") for g in groups) + ":"
    return ip_keys(word)[0]        # ValueError unless an address


def client_in_list(client_addr: str, items: tuple[str, ...]) -> bool:
    """Does the client match an item of a parsed client list?"""
    keys = set(ip_keys(client_addr))
    client = _ip(client_addr)
    for item in items:
        if item.startswith("net:"):
            network = ipaddress.ip_network(item[4:])
            if client is not None and client.version == network.version and client in network:
                return True
        elif item in keys:
            return True
    return False


def protected_steps(map_name: str | None, rcpt: str, client_addr: str) -> Steps[Protection]:
    """``protectedrcpt:`` with the recipient's address keys; is the client in the list?"""
    outcome = yield from first_found(map_name, PROTECTEDRCPT, lambda: address_keys(rcpt))
    if outcome.failed:
        return Protection(failure=_failure(outcome))
    if not outcome.found:
        return Protection()
    try:
        items = parse_client_list(outcome.value)
    except ValueError as error:
        return Protection(failure=f"{outcome.key}: bad client list: {error}")
    return Protection(outcome.key, client_in_list(client_addr, items))


# --- configuration data -----------------------------------------------------------------

@dataclass(frozen=True)
class ConfResult:
    """Configuration text found for a ``*_conf:`` tag (None: no entry), or a failure.

    A failure is *not* "no configuration": the caller defers (B33)."""

    key: str = ""
    text: str | None = None
    failure: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.failure)


def conf_steps(map_name: str | None, tag: str, keys: KeyOrder) -> Steps[ConfResult]:
    """The first entry of ``tag`` for ``keys``; its value whole (B34)."""
    outcome = yield from first_found(map_name, tag, keys)
    if outcome.failed:
        return ConfResult(failure=_failure(outcome))
    if not outcome.found:
        return ConfResult()
    return ConfResult(outcome.key, outcome.value)


def smtps_session_conf(map_name: str | None, client_addr: str, client_name: str = "") -> Steps[ConfResult]:
    """smtps's per-session configuration: by the client's IP keys, then its validated name
    (read and parsed at connect by :mod:`meta1.policy.sessionconf`, D-POL-26)."""
    keys = lambda: ip_keys(client_addr) + (domain_keys(client_name) if client_name else [])  # noqa: E731
    return (yield from conf_steps(map_name, SMTPS_SESSION_CONF, keys))


def smtpc_session_conf(map_name: str | None, server_addr: str) -> Steps[ConfResult]:
    """smtpc's per-session configuration: by the server's IP keys (read in qmgr's
    configuration map, not the access map, and parsed by
    :func:`meta1.policy.sessionconf.smtpc_session_conf_steps`, D-POL-28)."""
    return (yield from conf_steps(map_name, SMTPC_SESSION_CONF, lambda: ip_keys(server_addr)))


def smtpc_rcpt_conf(map_name: str | None, rcpt: str) -> Steps[ConfResult]:
    """smtpc's per-recipient configuration: by the recipient's address keys (B68; not read
    by the daemons yet: it comes with TLS requirements, D-POL-27)."""
    return (yield from conf_steps(map_name, SMTPC_RCPT_CONF, lambda: address_keys(rcpt)))
