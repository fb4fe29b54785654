"""smar's nameservers: from the configuration, or from resolv.conf, or a clear refusal.

Responsibilities
    Turn smar's options — ``nameserver = { addr[:port], … }``, ``DNS_timeout`` and the
    flag ``use_resolvconf`` (reference §1.5, config decision D-SCH-6) — into the
    :class:`ResolverSettings` the resolver runs with, and refuse with
    :class:`NoNameserverError`, whose message names the option to fix, when that leaves
    no nameserver (B62: smar does not start without one).

The rule (D-SCH-6, reference Q6)
    * ``nameserver`` set: those servers, in that order (the loader already refuses it
      together with ``use_resolvconf``, and an empty list);
    * else the flag ``use_resolvconf``: the ``nameserver`` lines of resolv.conf, in
      order, and its ``options attempts:N`` (resolv.conf(5)); none there is an error;
    * else ``127.0.0.1``, port 53 (a local caching resolver, MeTA1's default).

Strategies and why
    * :func:`parse_resolv_conf` and :func:`resolver_settings` are pure (text in); only
      :func:`load_resolver_settings` reads the file, once, at start-up. A resolv.conf that
      changes later is not followed: smar is restarted to pick it up, as a daemon that
      re-reads files behind the operator's back is harder to reason about (D-SMAR-4).
    * resolv.conf is read the way resolv.conf(5) says the resolver does: ``#`` and ``;``
      start comments, unknown keywords and malformed lines are skipped, an address that is
      not an IP address is skipped. All listed servers are used, not only the first three
      (glibc's MAXNS is a C array size, not a rule).
    * ``DNS_timeout`` is the wait for one reply from one server; resolv.conf's
      ``timeout:`` is not used, so the one option means the same with or without the flag.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meta1.config.schema import NOT_SET
from meta1.smar.exchange import Nameserver

RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_NAMESERVERS: tuple[Nameserver, ...] = (("127.0.0.1", 53),)
DEFAULT_ATTEMPTS = 2       # rounds over the servers (resolv.conf(5)'s default)
MAX_ATTEMPTS = 5           # resolv.conf(5) caps attempts:N at 5
DNS_PORT = 53


class NoNameserverError(Exception):
    """smar has no nameserver to ask; the message names the option to fix (B62)."""


@dataclass(frozen=True)
class ResolvConf:
    """What meta1 takes from a resolv.conf: the nameservers and ``attempts:``."""

    nameservers: tuple[Nameserver, ...]
    attempts: int | None = None


@dataclass(frozen=True)
class ResolverSettings:
    """What the resolver runs with, and where the nameservers came from (for the log)."""

    nameservers: tuple[Nameserver, ...]
    timeout: float
    attempts: int
    source: str


def parse_resolv_conf(text: str) -> ResolvConf:
    """The ``nameserver`` addresses (port 53) and ``options attempts:N`` of resolv.conf text."""
    servers: list[Nameserver] = []
    attempts: int | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0][0] in "#;":
            continue
        if words[0] == "nameserver" and len(words) >= 2:
            try:
                address = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            servers.append((str(address), DNS_PORT))
        elif words[0] == "options":
            for option in words[1:]:
                key, _, value = option.partition(":")
                if key == "attempts" and value.isascii() and value.isdigit():
                    attempts = max(1, min(int(value), MAX_ATTEMPTS))
    return ResolvConf(tuple(dict.fromkeys(servers)), attempts)


def _use_resolvconf(smar: Any) -> bool:
    return bool(smar.flags.get("use_resolvconf", False))


def resolver_settings(smar: Any, resolv_conf: str | None = None,
                      resolv_conf_path: str = RESOLV_CONF) -> ResolverSettings:
    """Settings from smar's config node and, with ``use_resolvconf``, the resolv.conf text.

    ``resolv_conf`` is the file's text (None: not read, or unreadable); the path is only
    used in messages. Raises :class:`NoNameserverError`.
    """
    timeout = float(smar.DNS_timeout)
    configured = smar.nameserver
    if configured is not NOT_SET:
        servers = _checked(configured)
        if not servers:
            raise NoNameserverError("smar: option nameserver lists no nameserver")
        return ResolverSettings(servers, timeout, DEFAULT_ATTEMPTS, "option nameserver")
    if not _use_resolvconf(smar):
        return ResolverSettings(DEFAULT_NAMESERVERS, timeout, DEFAULT_ATTEMPTS, "default 127.0.0.1")
    if resolv_conf is None:
        raise _unreadable(resolv_conf_path, "not read")
    parsed = parse_resolv_conf(resolv_conf)
    if not parsed.nameservers:
        raise NoNameserverError(
            f"smar: flag use_resolvconf is set but {resolv_conf_path} lists no nameserver; "
            "add a nameserver line there or set smar's option nameserver = { ADDRESS, ... }")
    return ResolverSettings(parsed.nameservers, timeout, parsed.attempts or DEFAULT_ATTEMPTS,
                            resolv_conf_path)


def _checked(servers: Sequence[Nameserver]) -> tuple[Nameserver, ...]:
    return tuple(dict.fromkeys((str(ipaddress.ip_address(host)), int(port)) for host, port in servers))


def load_resolver_settings(smar: Any, resolv_conf_path: str = RESOLV_CONF) -> ResolverSettings:
    """:func:`resolver_settings`, reading ``resolv_conf_path`` when the flag asks for it."""
    text: str | None = None
    if smar.nameserver is NOT_SET and _use_resolvconf(smar):
        try:
            with open(resolv_conf_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            raise _unreadable(resolv_conf_path, exc.strerror or str(exc)) from exc
    return resolver_settings(smar, text, resolv_conf_path)


def _unreadable(path: str, why: str) -> NoNameserverError:
    return NoNameserverError(
        f"smar: flag use_resolvconf is set but {path} cannot be read ({why}); "
        "set smar's option nameserver = { ADDRESS, ... } or make the file readable")
