"""Recipient routing: local domains, local users, aliases and the mailertable.

Responsibilities
    :func:`route_steps` resolves one recipient into the :class:`Route` triples qmgr
    schedules — (mailer, host, address): what speaks to the next hop, where it is, and
    the address given there — or into the reason it cannot be delivered. It is a
    generator of lookup steps (:mod:`meta1.policy.plan`) over the maps named in smar's
    ``local_user_map``, ``aliases`` and ``mailertable`` sections (reference §2.7, B31,
    B32, B47, B63); the :class:`Resolution` is also what smtps needs at RCPT (550 5.1.1
    for an unknown local user).

The order
    1. **Routing characters.** A recipient in a local domain whose local part contains
       ``%``, ``!`` or ``@`` (``relaytest%other@ours``, ``"a@b"@ours``, ``b!a@ours``) is
       neither a user nor an alias: ``550 5.1.1`` without a lookup (D-POL-8, reliability
       S8). Nothing here routes by the %-hack, bang paths or source routes.
    2. **Aliases** (``aliases { name; flags = { localpart, local_domains, file,
       program }; }``), for a local domain — and for any domain without the flag
       ``local_domains``. Keys: with ``localpart`` the local part (``user+detail``, then
       ``user``), else the address (``user+detail@domain``, then ``user@domain``). The
       value is a comma-separated list of targets, each resolved again from step 1:
       ``user@domain``, a bare ``user`` (a user of this host), ``/path`` (a file) or
       ``|command`` (a program). Files and programs are refused (``550 5.7.1``) unless
       the aliases section has the flag ``file`` or ``program`` (D-POL-12; meta1 has no
       agent for them yet: such a route has mailer ``file``/``program``). A key found
       without the detail expands as written: the detail is dropped.
    3. **Local users**, for a local domain only (D-POL-11): ``postmaster`` always exists
       (RFC 5321 §4.5.1); otherwise, with a ``local_user_map``, the key (local part with
       ``localpart``, else the address, each with and without detail) must be found, or
       the recipient is ``550 5.1.1`` (B47). Without a ``local_user_map`` every local part
       is accepted and the delivery agent decides. The route is ``lmtp`` to the LMTP
       socket (smtpc's ``LMTP_socket``, B63) with the address as given.
    4. **Mailertable**, for other domains (``mailertable { name; flags = { full_address
       }; }``). Keys: with ``full_address`` the address (with and without detail), then the
       domain, its parents with a leading dot (``.example.org``), then ``.`` — the
       default route. Values: ``esmtp:host`` (MX lookup of *host*), ``esmtp:[host]`` (no
       MX lookup: the host's or literal's addresses), ``esmtp:`` (the recipient's domain),
       ``lmtp:/path/to/socket``, ``lmtp:`` (the LMTP socket). ``smtp`` is a synonym of
       ``esmtp``. A value that is none of these is a map failure (4xx).
    5. Otherwise ``esmtp`` to the recipient's domain (MX lookup; an address literal is
       its own next hop).

Loops and limits (D-POL-13)
    An address met again inside its own expansion is not expanded again: it is a local
    user if there is one (so ``a: a, b`` keeps a copy for the user ``a``), otherwise an
    alias loop, ``550 5.4.6``. An expansion deeper than ``max_alias_depth`` or with more
    than ``max_routes`` routes fails the same way. Expansion therefore always ends.

Failures
    Each target that cannot be delivered is a :class:`Failure` with its reply. A temporary
    one (a map TEMP/PERM, a malformed alias target or mailertable value) makes the whole
    recipient temporary (``451 4.3.0``): some targets must not be delivered twice when
    the client retries. Permanent failures of some targets leave the others' routes; the
    resolution keeps them so that qmgr can report them (a DSN). Without any route the
    recipient fails with the first failure's reply.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meta1.maps.keys import domain_keys, local_part_keys
from meta1.policy.plan import Steps, first_found
from meta1.policy.relay import LocalDomains, canonical_domain
from meta1.smtp.address import AddressError, Mailbox, parse_forward_path
from meta1.smtp.replies import R, Reply

ESMTP, LMTP, FILE, PROGRAM = "esmtp", "lmtp", "file", "program"
#: Next-hop texts qmgr reads (D-POL-21): ``lmtp:<socket path>`` ("lmtp:" alone: smtpc's
#: LMTP_socket), and ``error:<reply>`` for a target whose expansion failed for good.
LMTP_NEXTHOP, ERROR_NEXTHOP = "lmtp:", "error:"
_MAILERS = {"esmtp": ESMTP, "smtp": ESMTP, "lmtp": LMTP}
ROUTING_CHARACTERS = frozenset("%!@")
DEFAULT_ROUTE_KEY = "."
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class MapUse:
    """A map named for one purpose, with that section's flags that are on."""

    name: str
    flags: frozenset[str] = frozenset()

    def has(self, flag: str) -> bool:
        return flag in self.flags


@dataclass(frozen=True)
class RoutingSettings:
    local: LocalDomains
    local_user_map: MapUse | None = None
    aliases: MapUse | None = None
    mailertable: MapUse | None = None
    lmtp_socket: str = ""          # "" : smtpc's LMTP_socket (qmgr knows it)
    max_alias_depth: int = 20
    max_routes: int = 1000


@dataclass(frozen=True)
class Route:
    """Where one copy goes. ``esmtp``: ``host`` is a domain (MX lookup) or ``[host]`` (no
    MX lookup); ``lmtp``: ``host`` is the socket path (``""``: smtpc's ``LMTP_socket``);
    ``file``/``program``: ``address`` is the path or the command."""

    mailer: str
    host: str
    address: str

    @property
    def mx(self) -> bool:
        """Does the next hop need an MX lookup?"""
        return self.mailer == ESMTP and not self.host.startswith("[")

    @property
    def nexthop(self) -> str:
        """qmgr's next-hop text: the domain or ``[host]``, ``lmtp:<path>``, ``file:``, ``program:``."""
        if self.mailer == ESMTP:
            return self.host
        if self.mailer == LMTP:
            return f"{LMTP_NEXTHOP}{self.host}"
        return f"{self.mailer}:"

    def __str__(self) -> str:
        return f"{self.mailer}:{self.host} {self.address}"


@dataclass(frozen=True)
class Failure:
    """A target that cannot be delivered, with the reply that says why."""

    address: str
    reply: Reply
    detail: str

    @property
    def temporary(self) -> bool:
        return self.reply.transient


@dataclass(frozen=True)
class Resolution:
    """The routes of a recipient and the failures of its expansion (see the module)."""

    address: str
    routes: tuple[Route, ...] = ()
    failures: tuple[Failure, ...] = ()

    @property
    def temporary(self) -> bool:
        return any(f.temporary for f in self.failures)

    @property
    def ok(self) -> bool:
        return bool(self.routes) and not self.temporary

    @property
    def reply(self) -> Reply | None:
        """None when the recipient can be accepted, else the reply that refuses it."""
        if self.ok:
            return None
        for failure in self.failures:
            if failure.temporary:
                return failure.reply
        return self.failures[0].reply if self.failures else R.MAP_TEMPFAIL

    @property
    def local(self) -> bool:
        """Every route is local delivery (lmtp to the LMTP socket)."""
        return bool(self.routes) and all(r.mailer == LMTP for r in self.routes)


def mailbox_text(local_part: str, domain: str) -> str:
    """The address as smtps writes it (a local part that needs it is quoted)."""
    return str(Mailbox(local_part, domain))


def _address_keys(local_part: str, domain: str) -> list[str]:
    """``user+detail@domain``, ``user@domain`` (lower case): full-address keys."""
    return [f"{lp}@{canonical_domain(domain)}" for lp in local_part_keys(local_part)]


@dataclass
class _Expansion:
    settings: RoutingSettings
    routes: list[Route] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def fail(self, address: str, reply: Reply, detail: str) -> None:
        self.failures.append(Failure(address, reply, detail))

    def add(self, route: Route) -> None:
        if route in self.routes:
            return
        if len(self.routes) >= self.settings.max_routes:
            self.fail(route.address, R.ALIAS_LOOP.format(address=route.address),
                      f"more than {self.settings.max_routes} routes")
            return
        self.routes.append(route)

    def resolve(self, local_part: str, domain: str, chain: tuple[str, ...], depth: int) -> Steps[None]:
        s = self.settings
        address = mailbox_text(local_part, domain)
        norm = address.lower()
        is_local = domain in s.local
        if depth > s.max_alias_depth:
            self.fail(address, R.ALIAS_LOOP.format(address=address), f"alias expansion deeper than {s.max_alias_depth}")
            return
        if is_local and ROUTING_CHARACTERS.intersection(local_part):
            self.fail(address, R.UNKNOWN_USER.format(address=address), "routing characters in a local part (D-POL-8)")
            return
        aliases = s.aliases
        if aliases is not None and norm not in chain and (is_local or not aliases.has("local_domains")):
            keys = local_part_keys(local_part) if aliases.has("localpart") else _address_keys(local_part, domain)
            outcome = yield from first_found(aliases.name, "", lambda: keys)
            if outcome.failed:
                self.fail(address, R.MAP_TEMPFAIL, f"aliases {outcome.key}: {outcome.result.status.name} "
                          f"{outcome.result.reason}".rstrip())
                return
            if outcome.found:
                targets = split_targets(outcome.value)
                if not targets:
                    self.fail(address, R.MAP_TEMPFAIL, f"aliases {outcome.key}: no target")
                    return
                for target in targets:
                    yield from self.target(target, address, chain + (norm,), depth + 1)
                return
        if is_local:
            yield from self.local_user(local_part, domain, address, looped=norm in chain)
            return
        yield from self.remote(local_part, domain, address)

    def target(self, target: str, alias: str, chain: tuple[str, ...], depth: int) -> Steps[None]:
        s = self.settings
        if target[0] in "/|":
            kind, flag = (FILE, "file") if target[0] == "/" else (PROGRAM, "program")
            if s.aliases is not None and s.aliases.has(flag):
                self.add(Route(kind, "", target))
            else:
                self.fail(alias, R.ALIAS_TARGET_REFUSED.format(address=alias),
                          f"alias target {target[:60]!r} refused (aliases flag {flag} is off)")
            return
        text = target[1:-1] if target.startswith("<") and target.endswith(">") else target
        if "@" not in text:
            text = f"{text}@{s.local.hostname or 'localhost'}"
        try:
            mailbox = parse_forward_path(f"<{text}>", smtputf8=True).mailbox
        except AddressError as error:
            self.fail(alias, R.MAP_TEMPFAIL, f"alias target {target[:60]!r}: {error}")
            return
        assert mailbox is not None
        yield from self.resolve(mailbox.local_part, mailbox.domain, chain, depth)

    def local_user(self, local_part: str, domain: str, address: str, looped: bool) -> Steps[None]:
        s = self.settings
        route = Route(LMTP, s.lmtp_socket, address)
        if local_part.lower() == "postmaster" or s.local_user_map is None:
            self.add(route)
            return
        users = s.local_user_map
        keys = local_part_keys(local_part) if users.has("localpart") else _address_keys(local_part, domain)
        outcome = yield from first_found(users.name, "", lambda: keys)
        if outcome.failed:
            self.fail(address, R.MAP_TEMPFAIL, f"local_user_map {outcome.key}: {outcome.result.status.name} "
                      f"{outcome.result.reason}".rstrip())
        elif outcome.found:
            self.add(route)
        elif looped:
            self.fail(address, R.ALIAS_LOOP.format(address=address), "alias loop")
        else:
            self.fail(address, R.UNKNOWN_USER.format(address=address), "not a local user (B47)")

    def remote(self, local_part: str, domain: str, address: str) -> Steps[None]:
        s = self.settings
        table = s.mailertable
        if table is not None:
            keys = _address_keys(local_part, domain) if table.has("full_address") else []
            keys += domain_keys(domain) + [DEFAULT_ROUTE_KEY]
            outcome = yield from first_found(table.name, "", lambda: dict.fromkeys(keys))
            if outcome.failed:
                self.fail(address, R.MAP_TEMPFAIL, f"mailertable {outcome.key}: {outcome.result.status.name} "
                          f"{outcome.result.reason}".rstrip())
                return
            if outcome.found:
                try:
                    self.add(parse_mailertable(outcome.value, domain, address, s.lmtp_socket))
                except ValueError as error:
                    self.fail(address, R.MAP_TEMPFAIL, f"mailertable {outcome.key}: {error}")
                return
        self.add(Route(ESMTP, canonical_domain(domain), address))


def split_targets(value: str) -> list[str]:
    """The comma-separated targets of an alias value; commas inside quotes do not split."""
    targets, current, quoted, escaped = [], [], False, False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            targets.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    targets.append("".join(current).strip())
    return [t for t in targets if t]


def _check_host(host: str) -> str:
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if not name or any(not label or len(label) > 63 or not _LDH.issuperset(label)
                       or label[0] == "-" or label[-1] == "-" for label in labels):
        raise ValueError(f"not a host name: {host[:80]!r}")
    return name


def parse_mailertable(value: str, domain: str, address: str, lmtp_socket: str = "") -> Route:
    """The route of a mailertable value for a recipient (see the module); ValueError."""
    mailer_text, colon, host = value.strip().partition(":")
    mailer = _MAILERS.get(mailer_text.strip().lower())
    if mailer is None or not colon:
        raise ValueError(f"not mailer:host with mailer esmtp, smtp or lmtp: {value[:80]!r}")
    host = host.strip()
    if mailer == LMTP:
        if host.startswith("["):
            raise ValueError("lmtp takes a socket path, not a host")
        if any(c.isspace() for c in host):
            raise ValueError(f"bad LMTP socket path: {host[:80]!r}")
        return Route(LMTP, host or lmtp_socket, address)
    if not host:
        return Route(ESMTP, canonical_domain(domain), address)
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        body = inner[5:] if inner.lower().startswith("ipv6:") else inner
        try:
            ip = ipaddress.ip_address(body)
        except ValueError:
            return Route(ESMTP, f"[{_check_host(inner)}]", address)
        return Route(ESMTP, f"[ipv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]", address)
    return Route(ESMTP, _check_host(host), address)


def route_steps(settings: RoutingSettings, local_part: str, domain: str) -> Steps[Resolution]:
    """Resolve the recipient ``local_part@domain`` (``domain`` empty: ``<Postmaster>``)."""
    if not domain:
        local_part, domain = "postmaster", settings.local.hostname or "localhost"
    expansion = _Expansion(settings)
    yield from expansion.resolve(local_part, domain, (), 0)
    return Resolution(mailbox_text(local_part, domain), tuple(expansion.routes), tuple(expansion.failures))
