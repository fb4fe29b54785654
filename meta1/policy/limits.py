"""Per-IP connection limits from qmgr's configuration map, and the admission decision.

Responsibilities
    ``qmgr { config_map = NAME; }`` names a map whose entries set limits per IP address
    (README 3.8.1, reference §2.3; IPv6 keys B70). :func:`limits_steps` looks them up
    (IP keys, most specific first: ``icm:10.1.2.3``, ``icm:10.1.2.``, …, ``icm:10.``) and
    :func:`admit_connection` decides whether a new incoming connection may proceed, with
    the counts passed in (B56). Pure: qmgr looks the limits up over its own map
    (:mod:`meta1.qmgr.limits`) and counts the sessions of every smtps process
    (:mod:`meta1.qmgr.admission`); :func:`address_key` is the form both key them by.

The tags (meanings of ocr and oct are meta1's, D-POL-16)
    ``icm:`` incoming connections from the address at most, concurrently;
    ``icr:`` new incoming connections from the address at most per 60 seconds;
    ``oci:`` outgoing connections to the address at first (slow start, qmgr's
    ``smtpc { initial_connections }`` for this address);
    ``ocm:`` outgoing connections to the address at most (``max_connections``);
    ``ocr:`` new outgoing connections to the address at most per 60 seconds (counted by
    qmgr's scheduler, :mod:`meta1.qmgr.destinations`);
    ``oct:`` seconds smtpc waits for a connection to the address to be established;
    ``smtpc_session_conf:`` smtpc options for the connections to the address (its reply
    timers, D-POL-28): configuration text, parsed by :mod:`meta1.policy.sessionconf`.

    A limit is a decimal number; ``0`` means no limit (as sendmail's ClientConn). The entry
    found applies to each address it covers, counted per address: ``icm:10. 5`` lets every
    client in 10/8 have five connections. A limit that is not a number, or a lookup that
    fails, is a failure: the connection is refused for now (``421 4.3.0``), never admitted
    with limits the map did not give (B33, D-POL-3); for a server address the route is
    deferred (``451 4.3.0``). So is an ``smtpc_session_conf:`` value that does not parse.

Admission
    With ``icm:`` = N, the connection that finds N connections from its address already
    open gets ``421 4.7.0`` and is closed: with ``icm:<ip> 2`` the third concurrent one
    (B56). With ``icr:`` = N, the connection that finds N connections from its address in
    the last 60 seconds gets the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meta1.maps.keys import ip_keys
from meta1.policy.access import SMTPC_SESSION_CONF
from meta1.policy.plan import Steps, first_found
from meta1.policy.sessionconf import SmtpcSessionConf, smtpc_session_conf_steps
from meta1.smtp.replies import R, Reply

TAGS = ("icm:", "icr:", "oci:", "ocm:", "ocr:", "oct:", SMTPC_SESSION_CONF)
INCOMING = ("icm:", "icr:")
#: What qmgr reads of a server address before it plans connections to it (D-POL-25, D-POL-28).
OUTGOING = ("oci:", "ocm:", "ocr:", "oct:", SMTPC_SESSION_CONF)
RATE_WINDOW = 60          # seconds, for icr: and ocr:
MAX_LIMIT = 1_000_000


@dataclass(frozen=True)
class Limits:
    """What the map says of one address: the limits found (None: no entry), the smtpc
    options of its ``smtpc_session_conf:`` entry (None: no entry), or a failure."""

    values: dict[str, int | None] = field(default_factory=dict)
    failure: str = ""
    session_conf: SmtpcSessionConf | None = None

    def get(self, tag: str) -> int | None:
        """The limit of ``tag`` (``"icm:"``); None for no entry or 0 (no limit)."""
        value = self.values.get(tag)
        return value or None

    @property
    def failed(self) -> bool:
        return bool(self.failure)


def address_key(address: str) -> str | None:
    """The canonical form limits are counted and cached under: the address's most specific
    IP key (``2001:db8:0:0:0:0:0:1``; an IPv4-mapped address as IPv4); None for what is
    not an IP address (a client on a UNIX socket has no limits)."""
    try:
        return ip_keys(address)[0]
    except ValueError:
        return None


def limits_steps(map_name: str | None, address: str, tags: tuple[str, ...] = TAGS) -> Steps[Limits]:
    """Look up each of ``tags`` for ``address`` in qmgr's configuration map; the first
    failure ends the lookups and names the key."""
    values: dict[str, int | None] = {}
    session_conf = None
    keys = ip_keys(address)
    for tag in tags:
        if tag == SMTPC_SESSION_CONF:         # configuration text, not a number (D-POL-28)
            found = yield from smtpc_session_conf_steps(map_name, address)
            if found.failed:
                return Limits(values, found.failure)
            session_conf = found.conf
            continue
        outcome = yield from first_found(map_name, tag, lambda: keys)
        if outcome.failed:
            result = outcome.result
            return Limits(values, f"{outcome.key}: {result.status.name} {result.reason}".rstrip())
        if not outcome.found:
            values[tag] = None
            continue
        text = outcome.value.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_LIMIT:
            return Limits(values, f"{outcome.key}: not a number 0..{MAX_LIMIT}: {text[:40]!r}")
        values[tag] = int(text)
    return Limits(values, session_conf=session_conf)


def admit_connection(limits: Limits, address: str, *, open_now: int, recent: int,
                     hostname: str = "") -> Reply | None:
    """None to admit a new connection from ``address``, else the 421 to close it with.

    ``open_now``: connections from the address already open (not counting this one);
    ``recent``: connections from it accepted in the last :data:`RATE_WINDOW` seconds.
    """
    if limits.failed:
        return R.LOCAL_ERROR.format(hostname=hostname)
    icm = limits.get("icm:")
    if icm is not None and open_now >= icm:
        return R.TOO_MANY_CONNECTIONS.format(hostname=hostname, address=address)
    icr = limits.get("icr:")
    if icr is not None and recent >= icr:
        return R.CONNECTION_RATE.format(hostname=hostname, address=address)
    return None
