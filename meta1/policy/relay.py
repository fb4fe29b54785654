"""Local domains and the relay decision: may this recipient be accepted from this client?

Responsibilities
    :class:`LocalDomains` answers "is this domain ours?"; :func:`relay_allowed` decides
    whether a recipient may be accepted at all; :class:`RelayGrants` records what gives
    the *client* the right to relay.

The rule (reference §2.6 "Relaying", B41, B42; reliability S8)
    Relaying is denied unless something grants it. A recipient is accepted when

    1. its domain is local (:class:`LocalDomains`) — mail for us, or
    2. a ``to:`` entry for it (the address, its domain or a parent domain) says RELAY —
       a domain we relay to (a backup MX, an internal domain), or
    3. the client holds a relay grant: a ``cltaddr:``/``cltname:`` entry with RELAY, a
       successful AUTH, or a TLS client certificate that allows relaying.

    Otherwise the RCPT gets ``550 5.7.1`` (:data:`R.RELAY_DENIED`). The mailertable
    routes; it does not grant relaying (D-POL-7): a default route ``.`` to a smarthost
    would otherwise open the relay to every domain.

Decided on the resolved address (S8)
    The decision looks only at the domain after the last ``@`` of the mailbox as smtps
    parsed it (:mod:`meta1.smtp.address`): the source route of ``<@a,@b:u@c>`` is gone,
    a quoted local part (``"u@other"@ours``) is opaque, and ``%`` and ``!`` are ordinary
    characters. So ``relaytest%other@ours`` is a recipient *at ours*, whose local part
    no local user has (550 5.1.1 from the routing, D-POL-8), never mail for ``other``.
    Nothing in meta1 ever routes by the %-hack, bang paths or source routes.

Local domains (D-POL-6)
    The host's own name (``hostname``), ``localhost`` (RFC 2606 §2, never another
    host's) and the names in ``smar { local_domains = { ... } }``: a name matches itself;
    an entry with a leading dot (``.example.org``) matches every name below it; an address
    literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) matches that address in any
    spelling. Names compare without case and without a final dot. An address literal of
    ours is not local unless listed (reliability T28: IP literals are denied by default).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from meta1.maps.keys import domain_keys


def canonical_domain(domain: str) -> str:
    """Lower case, no final dot; an address literal in one spelling (``[192.0.2.1]``,
    ``[ipv6:2001:db8::1]``). A literal that is not an address stays as written."""
    domain = domain.strip().lower().rstrip(".")
    if domain.startswith("[") and domain.endswith("]"):
        text = domain[1:-1]
        v6 = text.startswith("ipv6:")
        try:
            address = ipaddress.ip_address(text[5:] if v6 else text)
        except ValueError:
            return domain
        if isinstance(address, ipaddress.IPv6Address) != v6:
            return domain
        return f"[ipv6:{address.compressed}]" if v6 else f"[{address}]"
    return domain


class LocalDomains:
    """The domains this MTA delivers locally; ``domain in local_domains``."""

    def __init__(self, hostname: str, domains: Iterable[str] = ()):
        self.hostname = canonical_domain(hostname) if hostname else ""
        names = {"localhost"} | ({self.hostname} if self.hostname else set())
        self.exact: frozenset[str] = frozenset(names | {canonical_domain(d) for d in domains
                                                        if d and not d.startswith(".")})
        self.suffixes: frozenset[str] = frozenset(d.lower().rstrip(".") for d in domains
                                                  if d.startswith(".") and len(d) > 1)

    def __contains__(self, domain: str) -> bool:
        name = canonical_domain(domain)
        if not name or name in self.exact:     # "": <Postmaster>, this host's (RFC 5321 §4.1.1.3)
            return True
        if not self.suffixes or name.startswith("["):
            return False
        return any(key in self.suffixes for key in domain_keys(name)[1:])

    def __repr__(self) -> str:
        return f"LocalDomains({sorted(self.exact)!r}, suffixes={sorted(self.suffixes)!r})"


@dataclass(frozen=True)
class RelayGrants:
    """What allows the client to relay: an access entry, AUTH, a TLS certificate."""

    client: bool = False     # cltaddr:/cltname: RELAY
    auth: bool = False       # SMTP AUTH succeeded (RFC 4954)
    tls: bool = False        # the client's certificate is trusted to relay (STARTTLS)

    @property
    def any(self) -> bool:
        return self.client or self.auth or self.tls

    @property
    def authenticated(self) -> bool:
        """AUTH or a relaying TLS certificate: what overrides cltresolve: under delay_checks (B44)."""
        return self.auth or self.tls


def relay_allowed(domain: str, local: LocalDomains, *, rcpt_relay: bool, grants: RelayGrants) -> bool:
    """May a recipient in ``domain`` be accepted? See the module documentation."""
    return domain in local or rcpt_relay or grants.any
