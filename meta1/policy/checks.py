"""The lookups of each SMTP stage, as smar runs them: one lookup plan per stage.

Responsibilities
    What smtps asks (through qmgr) at each stage of a session, and smar answers by
    running a lookup plan (:class:`meta1.policy.plan.Plan`) over its maps:

    * :func:`connect_plan` — the client check (``cltaddr:``, ``cltname:``,
      ``cltresolve:``; :mod:`meta1.policy.access`). The DNS block lists are DNS, not
      maps: :func:`dnsbl_needed` says whether to ask them, :mod:`meta1.policy.dnsbl` what
      to ask and what the answers mean.
    * :func:`mail_plan` — the sender check (``from:``).
    * :func:`rcpt_plan` — the recipient: ``to:``, ``protectedrcpt:``, the relay rule
      (:mod:`meta1.policy.relay`) and, when the recipient may be accepted, its routes
      (:mod:`meta1.policy.route`), all in one :class:`RecipientResult`.
    * :func:`limits_plan` — qmgr's per-IP limits (:mod:`meta1.policy.limits`).

    The results are plain frozen values: smtps's
    :class:`~meta1.policy.session.SessionChecks` combines them with what earlier stages
    held (delay_checks) into the reply.

Why the recipient plan stops early
    The lookups are ordered so that none is made whose answer cannot change the reply: a
    ``to:`` rejection or failure ends the plan, so does a protected recipient refused to
    this client, and a recipient that may not be relayed to is never routed (no alias or
    mailertable lookups for a relay attempt).
"""

from __future__ import annotations

from dataclasses import dataclass

from meta1.policy.access import NO_ENTRY, Check, Protection, ResolveStatus, client_steps, protected_steps, \
    recipient_steps, sender_steps
from meta1.policy.limits import TAGS, Limits, limits_steps
from meta1.policy.plan import Plan, Steps
from meta1.policy.relay import RelayGrants, canonical_domain
from meta1.policy.rhs import Action
from meta1.policy.route import Resolution, mailbox_text, route_steps
from meta1.policy.settings import PolicySettings
from meta1.smtp.address import Mailbox


def connect_plan(settings: PolicySettings, client_addr: str, client_name: str = "",
                 resolve: ResolveStatus = ResolveStatus.FAIL) -> Plan[Check]:
    return Plan(client_steps(settings.access_map, client_addr, client_name, resolve))


def dnsbl_needed(settings: PolicySettings, client: Check) -> bool:
    """Ask the DNS block lists only when no client entry decided (an accepting entry
    exempts the client, a rejecting one makes the listing moot)."""
    return bool(settings.dnsbl) and client.entry is None and not client.failed


def mail_plan(settings: PolicySettings, sender: str) -> Plan[Check]:
    """``sender`` is the reverse path's address, ``""`` for ``<>``."""
    return Plan(sender_steps(settings.access_map, sender))


@dataclass(frozen=True)
class RecipientResult:
    """Everything the RCPT decision needs from smar.

    ``local``: the recipient's domain is local. ``rcpt_relay``: a ``to:`` RELAY entry.
    ``resolution``: the routes, or None when the plan stopped before routing (a ``to:``
    rejection, a refused protected recipient, relaying denied)."""

    address: str
    check: Check = NO_ENTRY
    protection: Protection = Protection()
    local: bool = False
    rcpt_relay: bool = False
    resolution: Resolution | None = None


def rcpt_steps(settings: PolicySettings, mailbox: Mailbox, client_addr: str,
               grants: RelayGrants) -> Steps[RecipientResult]:
    address = mailbox_text(mailbox.local_part, mailbox.domain) if mailbox.domain else \
        mailbox_text("postmaster", settings.hostname)
    domain = canonical_domain(mailbox.domain) if mailbox.domain else settings.hostname
    local = domain in settings.local
    check = yield from recipient_steps(settings.access_map, address)
    rhs = check.rhs
    if check.failed or (rhs is not None and rhs.rejects):
        return RecipientResult(address, check, local=local)
    protection = yield from protected_steps(settings.access_map, address, client_addr)
    if protection.failed or not protection.allowed:
        return RecipientResult(address, check, protection, local)
    rcpt_relay = rhs is not None and rhs.action is Action.RELAY
    if not (local or rcpt_relay or grants.any):
        return RecipientResult(address, check, protection, local, rcpt_relay)
    resolution = yield from route_steps(settings.routing, mailbox.local_part, mailbox.domain)
    return RecipientResult(address, check, protection, local, rcpt_relay, resolution)


def rcpt_plan(settings: PolicySettings, mailbox: Mailbox, client_addr: str,
              grants: RelayGrants = RelayGrants()) -> Plan[RecipientResult]:
    """The recipient's checks; ``grants`` are the session's (:attr:`SessionChecks.grants`)."""
    return Plan(rcpt_steps(settings, mailbox, client_addr, grants))


def limits_plan(settings: PolicySettings, address: str, tags: tuple[str, ...] = TAGS) -> Plan[Limits]:
    return Plan(limits_steps(settings.config_map, address, tags))
