"""The policy settings of one SMTP server, read from a loaded configuration.

:class:`PolicySettings` gathers what the cores need from the configuration
(``spec/config-reference.md``): the access map (``smar { access_map }``), the
``delay_checks`` flag of the smtps server in question, the local domains, the routing
maps, greylisting, the DNS block lists, qmgr's configuration map, the LMTP socket. The
host name is passed in: finding the system's name is I/O (``socket.gethostname``), which
the cores never do.
"""

from __future__ import annotations

from dataclasses import dataclass

from meta1.config.schema import NOT_SET
from meta1.policy.dnsbl import DnsblList
from meta1.policy.greylist import GreylistSettings
from meta1.policy.relay import LocalDomains
from meta1.policy.route import MapUse, RoutingSettings


def _map_use(section) -> MapUse | None:
    if section is None:
        return None
    # values["name"]: a Node's attribute ``name`` is the section's own name (None here).
    flags = section.values.get("flags") or {}
    return MapUse(section.values["name"], frozenset(flag for flag, on in flags.items() if on))


@dataclass(frozen=True)
class PolicySettings:
    hostname: str
    local: LocalDomains
    routing: RoutingSettings
    access_map: str | None = None
    delay_checks: bool = False
    greylisting: GreylistSettings | None = None
    dnsbl: tuple[DnsblList, ...] = ()
    config_map: str | None = None

    @classmethod
    def from_config(cls, config, hostname: str, server: str | None = None) -> PolicySettings:
        """The settings for smtps server ``server`` (None: the unnamed one) of ``config``."""
        smar = config.smar
        local = LocalDomains(hostname, smar.local_domains)
        lmtp = config.smtpc.LMTP_socket
        routing = RoutingSettings(
            local=local,
            local_user_map=_map_use(smar.local_user_map),
            aliases=_map_use(smar.aliases),
            mailertable=_map_use(smar.mailertable),
            lmtp_socket=lmtp if isinstance(lmtp, str) else "",
        )
        smtps = config.smtps.get(server) if server in config.smtps else None
        delay = bool(smtps.flags["delay_checks"]) if smtps is not None else False
        grey = GreylistSettings.from_config(smar.greylisting) if smar.greylisting is not None else None
        lists = tuple(DnsblList(name, d.domain, d.reply if d.reply is not NOT_SET else "",
                                tuple(d.codes)) for name, d in smar.dnsbl.items())
        config_map = config.qmgr.config_map
        return cls(
            hostname=hostname,
            local=local,
            routing=routing,
            access_map=smar.access_map.values["name"] if smar.access_map is not None else None,
            delay_checks=delay,
            greylisting=grey,
            dnsbl=lists,
            config_map=config_map if isinstance(config_map, str) else None,
        )
