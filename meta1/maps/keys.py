"""Lookup orders: the keys tried, in order, for an address, a domain or an IP address.

Responsibilities
    Turn what is looked up (a client's IP address, a host or domain name, an e-mail
    address, a local part) into the list of map keys tried one after the other until one
    is found (reference meta1.md §2.5, README 3.12.1 "Lookup Orders in Maps";
    spec/maps.md, D-MAP-…). Pure functions; every map lookup in meta1 goes through them,
    and ``meta1 lookup`` prints them.

The orders
    * **IP addresses** (``cltaddr:``, ``icm:``, ``oci:`` …): the whole address, then the
      address with its least significant component removed *keeping the delimiter*, down
      to one component: ``10.1.2.3``, ``10.1.2.``, ``10.1.``, ``10.`` — so an entry must
      end with the delimiter to match a network (``10.`` matches 10.1.2.3, ``10`` does
      not; MeTA1 2013-11-29, B17/B18). IPv6 addresses are written uncompressed, lower
      case, without leading zeros and without ``::`` (MeTA1 2013-11-20, B20), and lose one
      16-bit group at a time: ``2001:db8:0:0:0:0:0:1``, ``2001:db8:0:0:0:0:0:``, …,
      ``2001:`` (B21). An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``) is its IPv4
      address.
    * **Domains**: the name itself, then each parent with a leading dot:
      ``mail.example.com``, ``.example.com``, ``.com``. An entry without a leading dot
      matches that name only; one with a leading dot matches every name below it
      (reference Q3). An address literal (``[192.0.2.1]``) is looked up as written only.
    * **Addresses**: ``user+detail@domain``, ``user@domain`` (without the detail), the
      domain keys, then ``user+detail@``, ``user@`` (the local part in any domain).
    * **Local parts** (maps with the ``localpart`` flag): ``user+detail``, ``user``.

    Keys are lower case: map files are built lower-cased (``meta1 createmap``), so a
    lookup never depends on how a client spelled a name. The detail delimiter is ``+``.
    Duplicates are dropped (``user@domain`` without a detail appears once).
"""

from __future__ import annotations

import ipaddress

DETAIL_DELIMITER = "+"


def ip_keys(address: str) -> list[str]:
    """The keys for an IP address (without a tag), most specific first."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        parts, delimiter = str(ip).split("."), "."
    else:
        parts, delimiter = [format(int(group, 16), "x") for group in ip.exploded.split(":")], ":"
    keys = [delimiter.join(parts)]
    keys += [delimiter.join(parts[:n]) + delimiter for n in range(len(parts) - 1, 0, -1)]
    return keys


def uncompressed_ipv6(address: str) -> str:
    """``2001:db8::1`` → ``2001:db8:0:0:0:0:0:1`` (the form IPv6 keys use, B20)."""
    return ip_keys(address)[0]


def domain_keys(domain: str) -> list[str]:
    """The keys for a host or domain name, the name itself first."""
    domain = domain.lower().rstrip(".")
    if domain.startswith("[") or not domain:
        return [domain] if domain else []
    labels = domain.split(".")
    return [domain] + ["." + ".".join(labels[n:]) for n in range(1, len(labels))]


def local_part_keys(local: str) -> list[str]:
    """The keys for a local part: with its detail, then without."""
    local = local.lower()
    base, delimiter, _ = local.partition(DETAIL_DELIMITER)
    return _unique([local, base] if delimiter and base else [local])


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` → (local, domain); an address without ``@`` has no domain."""
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def address_keys(address: str) -> list[str]:
    """The keys for an e-mail address: the address, without detail; the domain keys; the
    local part in any domain (``user@``)."""
    local, domain = split_address(address.lower())
    if not domain:
        return local_part_keys(local)
    locals_ = local_part_keys(local)
    return _unique([f"{lp}@{domain}" for lp in locals_] + domain_keys(domain) + [f"{lp}@" for lp in locals_])


def tagged(tag: str, keys: list[str]) -> list[str]:
    """``keys`` with the access-map tag in front (``tagged("cltaddr:", ...)``)."""
    return [tag + key for key in keys]


def _unique(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(keys))
