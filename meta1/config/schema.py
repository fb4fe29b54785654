"""The schema: every section and option of a meta1 configuration, typed and documented.

Responsibilities
    Say, as data, what a configuration may contain: for each section its options (type,
    default, documentation, where the name comes from), its subsections, whether it takes
    a name, may repeat, or exists with its defaults when the file leaves it out; and the
    cross-field rules that no single type can check (:class:`SectionSpec.finish`).

The loader (:mod:`meta1.config.loader`) applies it; the option reference
``spec/config-reference.md`` is generated from it (a test fails on drift), so the
documentation of an option lives here, next to its type and default, exactly once.

Origins
    Every option carries where its name comes from, with the confidence tag of
    ``shared/reference/meta1.md``: ``MeTA1 [V]`` (verified in MeTA1's own documents),
    ``MeTA1 [V3]`` (third-party documentation of MeTA1), ``MeTA1 [R]`` (named in the
    reference as recalled or inferred) — or ``meta1``: an option this project needs that
    MeTA1 is not known to have, named in MeTA1's style (``spec/decisions.md``).

Layout of the file (as in ``meta1.conf(5)``: each daemon's section doubles as its MCP
service entry)::

    <global options>
    mcp   { ... }                      MCP's own options
    qmgr  { ... smtpc { ... } }        queue manager; smtpc = per-destination limits
    smtps [NAME] { ... listen_socket { ... } tls { ... } policy_milter { socket { ... } } }
    smtpc { ... tls { ... } }
    smar  { ... map NAME { ... } local_user_map { } aliases { } mailertable { }
            access_map { } greylisting { } dnsbl NAME { } }
    lmtpd { ... }                      meta1's own LMTP delivery agent (only when written)
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from meta1.config.types import (
    Endpoint,
    Enum,
    FlagChanges,
    Flags,
    Integer,
    Interval,
    IPAddress,
    ListOf,
    Path,
    Reference,
    Size,
    String,
    ValueType,
)


class _NotSet:
    """Default of an option that has no value unless the file gives one."""

    def __repr__(self) -> str:
        return "NOT_SET"

    def __deepcopy__(self, memo: dict) -> _NotSet:  # a singleton: compared with `is`
        return self


NOT_SET: Any = _NotSet()


@dataclass(frozen=True)
class Inherit:
    """Default taken from the option of the same name in the enclosing (global) section."""

    option: str


class Naming(enum.Enum):
    NONE = "takes no name"
    OPTIONAL = "name optional"
    REQUIRED = "name required"


V, V3, R, EXT = "MeTA1 [V]", "MeTA1 [V3]", "MeTA1 [R]", "meta1"


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: ValueType
    default: Any
    doc: str
    origin: str = EXT
    required: bool = False
    unset_means: str = ""  # what NOT_SET means, for the reference

    @property
    def key(self) -> str:
        return self.name.lower()


# A finish hook sees the built section and reports problems through ``report(key, msg)``
# (key: the option to blame, or None for the section itself). It may also fill in
# defaults that depend on other options.
Finish = Callable[[Any, Callable[[str | None, str], None]], None]


@dataclass(frozen=True)
class SectionSpec:
    keyword: str
    doc: str
    options: tuple[OptionSpec, ...] = ()
    sections: tuple[SectionSpec, ...] = ()
    naming: Naming = Naming.NONE
    repeat: bool = False
    implicit: bool = False  # present, with its defaults, when the file leaves it out
    origin: str = EXT
    finish: Finish | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return self.keyword.lower()

    def option(self, key: str) -> OptionSpec | None:
        return next((o for o in self.options if o.key == key), None)

    def section(self, key: str) -> SectionSpec | None:
        return next((s for s in self.sections if s.key == key), None)


# ---------------------------------------------------------------------------------------
# Building blocks shared by several sections


def _log_options() -> tuple[OptionSpec, ...]:
    return (
        OptionSpec("Log_Level", Integer(0, 15), Inherit("Log_Level"),
                   "Logging verbosity of this daemon; defaults to the global Log_Level.", V),
        OptionSpec("debug_level", Integer(0, 100), Inherit("debug_level"),
                   "Debug output of this daemon; defaults to the global debug_level.", R),
    )


SERVICES = ("qmgr", "smtps", "smtpc", "smar", "lmtpd")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _service_options(start_action: str, restart_dependencies: tuple[str, ...]) -> tuple[OptionSpec, ...]:
    """The options by which each daemon section is also an MCP service entry (§1.7)."""
    return (
        OptionSpec("path", Path(), NOT_SET, "Program MCP starts for this service.", V,
                   unset_means="this meta1's own daemon (python -m meta1.<daemon>)"),
        OptionSpec("arguments", String(), NOT_SET,
                   "Command line, argv[0] first, e.g. \"smtps -f /etc/meta1/meta1.conf\".", V,
                   unset_means="the daemon name and -f with this configuration file"),
        OptionSpec("user", String(nonempty=True, what="user name"), NOT_SET,
                   "User (name or number) MCP runs the service as; MCP itself runs as root.", V,
                   unset_means="the user MCP runs as (only sensible when MCP is not root)"),
        OptionSpec("start_action", Enum(("wait", "pass")), start_action,
                   "wait: MCP starts the service and waits for it; pass: MCP binds "
                   "listen_socket itself and passes the descriptor over pass_fd_socket.", V),
        OptionSpec("restart_dependencies", ListOf(Reference("service", case_insensitive=True)),
                   restart_dependencies,
                   "Services MCP restarts together with this one when it dies.", V),
    ) + _log_options()


def _no_self_dependency(node, report) -> None:
    if node.spec.key in node.values["restart_dependencies"]:
        report("restart_dependencies", f"{node.spec.keyword} lists itself in restart_dependencies")


def _socket_section(keyword: str, doc: str, origin: str, defaults: dict[str, Any],
                    implicit: bool = False) -> SectionSpec:
    """A socket: ``type = inet`` with address and port, or ``type = unix`` with path."""

    def finish(node, report) -> None:
        values = node.values
        if values["type"] == "inet":
            if values["path"] is not NOT_SET:
                report("path", "path is for type = unix; an inet socket has address and port")
            if values["port"] is NOT_SET:
                report(None, "an inet socket needs a port")
        else:
            for opt in ("address", "port"):
                if node.explicit(opt):
                    report(opt, f"{opt} is for type = inet; a unix socket has a path")
                values[opt] = NOT_SET
            if values["path"] is NOT_SET:
                report(None, "a unix socket needs a path")

    return SectionSpec(
        keyword, doc, origin=origin, finish=finish, implicit=implicit,
        options=(
            OptionSpec("type", Enum(("inet", "unix")), defaults.get("type", "inet"),
                       "inet: TCP on address and port; unix: a UNIX-domain socket at path.", origin),
            OptionSpec("address", IPAddress(), defaults.get("address", NOT_SET),
                       "IP address (inet).", origin, unset_means=defaults.get("address_unset", "")),
            OptionSpec("port", Integer(0, 65535), defaults.get("port", NOT_SET),
                       "TCP port (inet); 0 lets the system choose one (tests).", origin),
            OptionSpec("path", Path(), NOT_SET, "Socket file (unix), relative to the queue directory.", origin),
        ),
    )


def _tls_section(server: bool) -> SectionSpec:
    flags = Flags({"request_cert": True},
                  docs={"request_cert": "ask the client for a certificate (MeTA1 [V]: on by default)"})

    def finish(node, report) -> None:
        has_cert, has_key = (node.values[k] is not NOT_SET for k in ("cert_file", "key_file"))
        if server and not (has_cert and has_key):
            report(None, "a server tls section needs cert_file and key_file")
        elif has_cert != has_key:
            report("key_file" if has_cert else "cert_file", "cert_file and key_file go together")

    options = (
        OptionSpec("cert_file", Path(), NOT_SET, "PEM certificate chain, own certificate first.", R),
        OptionSpec("key_file", Path(), NOT_SET, "PEM private key of cert_file.", R),
        OptionSpec("CA_file", Path(), NOT_SET, "PEM file of trusted CA certificates.", R),
        OptionSpec("CA_path", Path(), NOT_SET, "Directory of hashed trusted CA certificates.", R),
        OptionSpec("CRL_file", Path(), NOT_SET, "PEM certificate revocation lists.", R),
        OptionSpec("verify_depth", Integer(1, 64), 9, "Longest certificate chain accepted.", R),
        OptionSpec("cipher_list", String(nonempty=True, what="cipher list"), NOT_SET,
                   "OpenSSL cipher list.", EXT, unset_means="the ssl module's defaults"),
    )
    if server:
        options += (OptionSpec("flags", flags, flags.defaults(), "TLS flags.", V),)
    doc = ("STARTTLS for the SMTP server: offered when this section is present (RFC 3207)."
           if server else "TLS for the SMTP client: certificate to present and CAs to trust.")
    return SectionSpec("tls", doc, options=options, origin=V if server else R, finish=finish)


def _map_use(keyword: str, doc: str, flags: dict[str, bool], origin: str) -> SectionSpec:
    """A section that names a declared map for one purpose (local users, aliases, ...)."""
    flag_type = Flags(flags, docs={
        "localpart": "look up only the local part of an address",
        "local_domains": "look up only addresses in local domains",
        "full_address": "look up the full address, not just the domain",
        "file": "allow alias targets that are files (/path); meta1 has no agent to deliver them yet",
        "program": "allow alias targets that are programs (|command); meta1 has no agent to run them yet",
    })
    options = (OptionSpec("name", Reference("map"), NOT_SET, "The declared map to use.", origin, required=True),)
    if flags:
        options += (OptionSpec("flags", flag_type, flag_type.defaults(), "Lookup flags.", origin),)
    return SectionSpec(keyword, doc, origin=origin, options=options)


# ---------------------------------------------------------------------------------------
# Maps (smar)

MAP_TYPE_OPTIONS = {
    "hash": {"file", "source"},
    "regex": {"file"},
    "passwd": set(),
    "inline": {"entries"},
    "socket": {"path", "address", "port", "mapname", "timeout", "min_connections", "max_connections"},
    "sequence": {"maps"},
}
_MAP_REQUIRED = {"hash": ("file",), "regex": ("file",), "inline": ("entries",), "sequence": ("maps",)}


def _finish_map(node, report) -> None:
    map_type = node.values["type"]
    if map_type is NOT_SET:
        return
    allowed = MAP_TYPE_OPTIONS[map_type]
    for opt in node.spec.options:
        if opt.key not in ("type",) and opt.name not in allowed:
            if node.explicit(opt.key):
                report(opt.key, f"{opt.name} is not an option of a map of type {map_type}")
            node.values[opt.key] = NOT_SET
    for opt in _MAP_REQUIRED.get(map_type, ()):
        if node.values[opt] is NOT_SET:
            report(None, f"a map of type {map_type} needs {opt}")
    if map_type == "hash" and node.values["source"] is NOT_SET and isinstance(node.values["file"], str):
        file = node.values["file"]
        if file.endswith(".db") and len(file) > 3:
            node.values["source"] = file[:-3]
    if map_type == "inline" and node.values["entries"] is not NOT_SET:
        from meta1.maps.source import parse_lines
        _, errors = parse_lines(node.values["entries"], "")
        for error in errors:
            report("entries", f"entries: item {error.line}: {error.message.replace('line', 'item')}")
        for number, item in enumerate(node.values["entries"], 1):
            if not item.strip(" \t") or item.strip(" \t").startswith("#"):
                report("entries", f"entries: item {number} has no key")
    if map_type == "socket":
        has_path = node.values["path"] is not NOT_SET
        has_inet = node.values["address"] is not NOT_SET or node.values["port"] is not NOT_SET
        if has_path == has_inet:
            report(None, "a socket map needs either path (unix) or address and port (inet)")
        elif has_inet and NOT_SET in (node.values["address"], node.values["port"]):
            report(None, "an inet socket map needs both address and port")
        if node.values["mapname"] is NOT_SET:
            node.values["mapname"] = node.name
        elif any(ch.isspace() for ch in node.values["mapname"]):
            report("mapname", "mapname: a socket map name cannot contain whitespace (the server splits at a space)")
        for opt, default in (("timeout", 5), ("min_connections", 0), ("max_connections", 4)):
            if node.values[opt] is NOT_SET:
                node.values[opt] = default
        if node.values["min_connections"] > node.values["max_connections"]:
            report("min_connections", "min_connections is larger than max_connections")


MAP = SectionSpec(
    "map",
    "A map declaration; other sections refer to it by its name. Map types, file formats "
    "and lookup semantics: spec/maps.md.",
    naming=Naming.REQUIRED, repeat=True, origin=V3, finish=_finish_map,
    options=(
        OptionSpec("type", Enum(tuple(MAP_TYPE_OPTIONS)), NOT_SET,
                   "hash: key/value file built by meta1 createmap; passwd: system users; "
                   "socket: socket map server; sequence: maps tried in order; regex: file of "
                   "regular expressions; inline: entries written in this section.",
                   V3, required=True),
        OptionSpec("file", Path(), NOT_SET,
                   "Map file: for hash the file meta1 createmap builds, for regex the "
                   "/pattern/ value lines.", V3),
        OptionSpec("source", Path(), NOT_SET,
                   "Text file (key value lines) meta1 createmap builds a hash map's file from; "
                   "default: file without its .db suffix (aliases.db: aliases).", EXT),
        OptionSpec("entries", ListOf(String(what="entry")), NOT_SET,
                   "The entries of an inline map, each a string \"key value\" as a line of a "
                   "map source (keys lower-cased; a key twice is an error).", EXT),
        OptionSpec("path", Path(), NOT_SET, "UNIX socket of a socket map server.", V3),
        OptionSpec("address", IPAddress(), NOT_SET, "Address of a socket map server (inet).", R),
        OptionSpec("port", Integer(1, 65535), NOT_SET, "Port of a socket map server (inet).", R),
        OptionSpec("mapname", String(nonempty=True, what="map name"), NOT_SET,
                   "Map name sent in socket map requests; defaults to this map's name.", V3),
        OptionSpec("timeout", Interval(1, 3600), NOT_SET,
                   "Longest a socket map lookup may take, waiting for a connection included "
                   "(default 5s); then it fails temporarily.", V3),
        OptionSpec("min_connections", Integer(0, 1000), NOT_SET, "Socket map connections kept open (default 0).", V3),
        OptionSpec("max_connections", Integer(1, 1000), NOT_SET, "Socket map connection limit (default 4).", V3),
        OptionSpec("maps", ListOf(Reference("map"), min_items=1), NOT_SET,
                   "Maps of a sequence, tried in order; the first that finds the key answers, "
                   "NOMORE, TEMP or PERM from a member ends the sequence.", V3),
    ),
)


# ---------------------------------------------------------------------------------------
# The daemons


def _finish_queue_delays(node, report) -> None:
    v = node.values
    if v["min_queue_delay"] > v["max_queue_delay"]:
        report("min_queue_delay", "min_queue_delay is larger than max_queue_delay")
    if v["max_queue_delay"] > v["queue_lifetime"]:
        report("max_queue_delay", "max_queue_delay is larger than queue_lifetime")
    _no_self_dependency(node, report)


def _finish_connection_limits(node, report) -> None:
    if node.values["initial_connections"] > node.values["max_connections"]:
        report("initial_connections", "initial_connections is larger than max_connections")


QMGR = SectionSpec(
    "qmgr",
    "The queue manager: owns IQDB, IBDB, AQ and DEFEDB, schedules deliveries, retries, bounces.",
    implicit=True, origin=V, finish=_finish_queue_delays,
    options=_service_options("wait", ("smtps", "smtpc", "smar")) + (
        OptionSpec("AQ_max_entries", Integer(1, 1_000_000), 8192,
                   "Most recipients in the active queue at once.", V),
        OptionSpec("wait_for_server", Interval(0, 3600), 4, "How long qmgr waits for smar at start.", V),
        OptionSpec("wait_for_client", Interval(0, 3600), 4, "How long qmgr waits for smtps/smtpc at start.", V),
        OptionSpec("min_queue_delay", Interval(1), 5 * 60,
                   "First retry delay after a temporary failure; doubled on each retry.", EXT),
        OptionSpec("max_queue_delay", Interval(1), 3600, "Longest delay between two retries.", EXT),
        OptionSpec("queue_lifetime", Interval(1), 5 * 86400,
                   "A recipient not delivered within this time is bounced (RFC 5321 §4.5.4.1: 4-5 days).", EXT),
        OptionSpec("delay_warning", Interval(0), 0,
                   "Age of a message at which the sender of a deferred recipient gets one "
                   "'delayed' DSN (RFC 3464); 0: never.", EXT),
        OptionSpec("config_map", Reference("map"), NOT_SET,
                   "Map of per-IP limits (oci:, ocm:, ocr:, oct:, icm:, icr: tags) and of smtpc's "
                   "reply timers per server address (smtpc_session_conf:, D-POL-28); qmgr opens it "
                   "itself and counts incoming sessions for every smtps process and, for ocr:, new "
                   "connections to each server address (spec/policy.md).", R,
                   unset_means="no per-IP limits or timers beyond the smtpc section's"),
        OptionSpec("IBDB_file_size", Size(4096), 64 << 20,
                   "Size at which qmgr starts a new incoming-log file; a file whose "
                   "transactions are all complete (and all older ones too) is removed.", EXT),
        OptionSpec("content_sync", Enum(("filesystem", "files")), "filesystem",
                   "How a commit batch is made durable: 'filesystem', the IBDB append and then "
                   "one syncfs(2) of the queue file system for it and the content files "
                   "together (D-RCV-6); 'files', an fdatasync per content file and an fsync "
                   "per directory before the IBDB append is written and synced. Both are "
                   "durable; 'files' keeps other writers' data on a shared file system out of "
                   "meta1's commits (D-RCV-4).",
                   EXT),
    ),
    sections=(
        SectionSpec(
            "smtpc", "Outgoing connection limits per destination (slow start).", implicit=True, origin=V,
            finish=_finish_connection_limits,
            options=(
                OptionSpec("initial_connections", Integer(1, 10_000), 4,
                           "Parallel connections to a destination at first.", V),
                OptionSpec("max_connections", Integer(1, 10_000), 20,
                           "Parallel connections to a destination at most.", V),
            ),
        ),
    ),
)

SMTPS_FLAGS = Flags(
    {"8bitmime": False, "pipelining": True, "chunking": True, "dsn": True, "smtputf8": True,
     "delay_checks": False},
    docs={
        "8bitmime": "advertise 8BITMIME (RFC 6152); MeTA1's flag, off unless named",
        "pipelining": "advertise PIPELINING (RFC 2920)",
        "chunking": "advertise CHUNKING/BDAT (RFC 3030)",
        "dsn": "advertise DSN (RFC 3461)",
        "smtputf8": "advertise SMTPUTF8 (RFC 6531)",
        "delay_checks": "hold client, DNSBL and sender rejections until RCPT, where a to: OK or "
                        "RELAY entry or a relay grant (AUTH, TLS) overrides them; QUICK: entries "
                        "still apply at once (B43-B46, spec/policy.md)",
    },
)


def _finish_smtps(node, report) -> None:
    _no_self_dependency(node, report)
    if node.values["start_action"] == "pass" and node.values["pass_fd_socket"] is NOT_SET:
        report("start_action", "start_action = pass needs pass_fd_socket")


SMTPS = SectionSpec(
    "smtps",
    "The SMTP server. Several may be declared with different names (e.g. one for port 25 "
    "and one for submission); the unnamed one is the default.",
    naming=Naming.OPTIONAL, repeat=True, implicit=True, origin=V, finish=_finish_smtps,
    options=_service_options("pass", ()) + (
        OptionSpec("flags", SMTPS_FLAGS, SMTPS_FLAGS.defaults(), "SMTP server flags.", V),
        OptionSpec("IO_timeout", Interval(1, 3600), 5 * 60,
                   "Longest wait for the client's next command or data (RFC 5321 §4.5.3.2: >= 5m).", V),
        OptionSpec("CDB_gid", Integer(0, 2**32 - 1), NOT_SET,
                   "Group of content files, so smtpc may read them.", V,
                   unset_means="the group smtps runs as"),
        OptionSpec("pass_fd_socket", Path(), "smtps/smtpsfd",
                   "UNIX socket smtps creates to receive the listen descriptor from MCP.", V),
        OptionSpec("max_message_size", Size(1024), 10 << 20,
                   "Largest message accepted (announced in EHLO SIZE, RFC 1870).", EXT),
        OptionSpec("max_rcpts_per_transaction", Integer(1, 100_000), 1000,
                   "Recipients per transaction; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8).", EXT),
        OptionSpec("max_errors_per_session", Integer(1, 10_000), 20,
                   "Error replies after which the session is closed with 421.", EXT),
        OptionSpec("max_junk_commands", Integer(1, 10_000), 100,
                   "NOOP, RSET, VRFY, HELP commands allowed per session.", EXT),
        OptionSpec("max_command_line_length", Integer(512, 65_536), 2048,
                   "Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: >= 512).", EXT),
        OptionSpec("max_data_line_length", Integer(998, 1 << 20), 998,
                   "Longest message line, CRLF excluded (RFC 5322 §2.1.1: 998).", EXT),
        OptionSpec("max_sessions", Integer(1, 100_000), 1000, "Concurrent sessions of this server.", EXT),
        OptionSpec("processes", Integer(1, 64), 1,
                   "SMTP server processes sharing the listen socket, each with its own process "
                   "index in ids (reference §1.2a: the last two hex digits) and max_sessions "
                   "sessions. More than one uses more CPU cores (D-SMTPS-11).", EXT),
        OptionSpec("min_free_space", Size(0), 32 << 20,
                   "Free space the queue file system must keep; below it MAIL gets 452 4.3.1.", EXT),
    ),
    sections=(
        _socket_section("listen_socket", "Where the server listens (bound by MCP when start_action = pass).", V,
                        {"port": 25, "address_unset": "all IPv4 addresses"}, implicit=True),
        _tls_section(server=True),
        SectionSpec(
            "policy_milter",
            "The policy milter (pmilter) consulted at each SMTP stage.", origin=V3,
            options=(
                OptionSpec("timeout", Interval(1, 3600), 30, "Longest wait for a pmilter reply.", V3),
                OptionSpec("flags", Flags({"abort": True, "accept_but_reconnect": False},
                                          exclusive=(("abort", "accept_but_reconnect"),),
                                          docs={"abort": "on timeout, end the session with 421",
                                                "accept_but_reconnect": "on timeout, go on without the "
                                                "pmilter and reconnect for the next session"}),
                           {"abort": True, "accept_but_reconnect": False}, "What a pmilter timeout does.", V3),
            ),
            sections=(
                _socket_section("socket", "The pmilter's socket.", V3, {"type": "inet"}),
            ),
            finish=lambda node, report: None if node.sections["socket"] is not None
            else report(None, "policy_milter needs a socket section"),
        ),
    ),
)

#: The smtps options an ``smtps_session_conf:`` access-map entry may set for the one
#: session of the client it names (spec/policy.md, D-POL-26): those that shape one SMTP
#: dialogue. Not the process's (user, path, Log_Level, ...), not the listener's or the
#: server's shared resources (listen_socket, max_sessions, processes, min_free_space,
#: CDB_gid, pass_fd_socket), and not delay_checks, which is how smar decides, not how
#: smtps talks — the entry is read after the client check it would change.
SMTPS_SESSION_OPTIONS = ("flags", "IO_timeout", "max_message_size", "max_rcpts_per_transaction",
                         "max_errors_per_session", "max_junk_commands", "max_command_line_length",
                         "max_data_line_length")
SMTPS_SESSION_FLAGS = FlagChanges({flag: on for flag, on in SMTPS_FLAGS.known.items() if flag != "delay_checks"},
                                  docs={flag: doc for flag, doc in SMTPS_FLAGS.docs.items() if flag != "delay_checks"})


def _session_option(section: SectionSpec, name: str, types: dict[str, ValueType] | None = None) -> OptionSpec:
    """Option ``name`` of ``section`` as a ``*_session_conf:`` entry may set it: the same
    type and bounds (``types`` may narrow one), no default — unset keeps the section's."""
    option = section.option(name.lower())
    assert option is not None, name
    return replace(option, default=NOT_SET, unset_means=f"the {section.keyword} section's value",
                   type=(types or {}).get(option.key, option.type))


SMTPS_SESSION_CONF = SectionSpec(
    "smtps_session_conf",
    "Not a section of the file: the value of an access-map entry `smtps_session_conf:<client>` "
    "(client IP keys, then its validated name; README 3.10.1) is configuration text with these "
    "smtps options, which apply to that client's sessions only, over the smtps section's "
    "values. Flags it does not name keep the section's value. A value with another option, a "
    "section or a syntax error, or a lookup that fails, closes the session with 421 4.3.0 "
    "(B33, D-POL-10, D-POL-26).",
    origin=R, options=tuple(_session_option(SMTPS, name, {"flags": SMTPS_SESSION_FLAGS})
                            for name in SMTPS_SESSION_OPTIONS),
)

SMTPC = SectionSpec(
    "smtpc",
    "The SMTP/LMTP client.", implicit=True, origin=V, finish=_no_self_dependency,
    options=_service_options("wait", ()) + (
        OptionSpec("IO_timeout", Interval(1, 3600), 5 * 60,
                   "Longest wait for a server reply (RFC 5321 §4.5.3.2: 5m for MAIL and RCPT).", V),
        OptionSpec("final_dot_timeout", Interval(1, 7200), 10 * 60,
                   "Longest wait for the reply to the final dot (RFC 5321 §4.5.3.2.6: 10m).", EXT),
        OptionSpec("wait_for_server", Interval(0, 3600), 4, "How long smtpc waits for qmgr at start.", V),
        OptionSpec("LMTP_socket", Path(), NOT_SET,
                   "UNIX socket of the local delivery agent (LMTP).", V3, unset_means="no local delivery"),
        OptionSpec("remote_port", Integer(1, 65535), 25,
                   "TCP port of the SMTP servers smtpc connects to (RFC 5321 §4.5.4.2: 25).", EXT),
    ),
    sections=(_tls_section(server=False),),
)

#: The smtpc options a ``smtpc_session_conf:`` entry of qmgr's configuration map may set
#: for the connections to the server address it names (spec/policy.md, D-POL-28): the
#: reply timers of one SMTP dialogue (RFC 5321 §4.5.3.2). Not the process's, not
#: ``remote_port`` or ``LMTP_socket`` (where to connect is qmgr's route), not ``tls``
#: (its requirements per server and recipient come with the STARTTLS issue, D-POL-27).
SMTPC_SESSION_OPTIONS = ("IO_timeout", "final_dot_timeout")

SMTPC_SESSION_CONF = SectionSpec(
    "smtpc_session_conf",
    "Not a section of the file: the value of an entry `smtpc_session_conf:<server>` in qmgr's "
    "configuration map (`qmgr { config_map }`; server IP keys) is configuration text with these "
    "smtpc options, which apply to every connection to that server address, over the smtpc "
    "section's values. qmgr reads it with the address's `oci:`/`ocm:`/`ocr:`/`oct:` and hands the "
    "values to smtpc with each delivery. A value with another option, a section or a syntax error, "
    "or a lookup that fails, defers the deliveries to that address with 451 4.3.0 "
    "(B33, D-POL-10, D-POL-28).",
    origin=R, options=tuple(_session_option(SMTPC, name) for name in SMTPC_SESSION_OPTIONS),
)


def _finish_smar(node, report) -> None:
    _no_self_dependency(node, report)
    _finish_local_domains(node, report)
    if node.explicit("nameserver") and node.values["flags"]["use_resolvconf"]:
        report("nameserver", "nameserver and the flag use_resolvconf exclude each other")


def _finish_local_domains(node, report) -> None:
    for domain in node.values["local_domains"]:
        problem = _local_domain_problem(domain)
        if problem:
            report("local_domains", f"local_domains: {domain!r} {problem}")
            return


def _local_domain_problem(domain: str) -> str:
    """Why ``domain`` cannot be a local_domains entry, or ``""``."""
    if domain.startswith("[") and domain.endswith("]"):
        text = domain[1:-1]
        text = text[5:] if text.lower().startswith("ipv6:") else text
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return "is not an address literal ([192.0.2.1], [IPv6:2001:db8::1])"
        return ""
    name = domain[1:] if domain.startswith(".") else domain
    labels = name.lower().rstrip(".").split(".")
    if not name or any(not label or len(label) > 63 or label[0] == "-" or label[-1] == "-"
                       or not set(label) <= _LDH for label in labels):
        return "is not a domain name (letters, digits, '-'; a leading '.' for subdomains)"
    return ""


def _finish_dnsbl(node, report) -> None:
    problem = _local_domain_problem(node.values["domain"]) if node.values["domain"] is not NOT_SET else ""
    if problem or str(node.values["domain"]).startswith((".", "[")):
        report("domain", "domain must be a DNS domain name")
    for code in node.values["codes"]:
        try:
            ipaddress.ip_network(code, strict=False)
        except ValueError:
            report("codes", f"codes: {code!r} is not an address or a network (127.0.0.2, 127.0.0.0/24)")
            break
    if node.values["reply"] is not NOT_SET:
        from meta1.policy.rhs import Action, RhsError, parse_rhs
        try:
            rhs = parse_rhs(node.values["reply"])
        except RhsError as error:
            report("reply", f"reply: {error}")
        else:
            if rhs.quick or rhs.action not in (Action.REPLY, Action.REJECT, Action.TEMPFAIL):
                report("reply", "reply: a 4xx or 5xx reply, REJECT or TEMPFAIL")


def _finish_greylisting(node, report) -> None:
    if node.values["min_delay"] >= node.values["max_delay"]:
        report("min_delay", "min_delay must be shorter than max_delay")


SMAR = SectionSpec(
    "smar",
    "The address resolver: DNS and all map lookups.", implicit=True, origin=V, finish=_finish_smar,
    options=_service_options("wait", ("smtps", "qmgr")) + (
        OptionSpec("nameserver", ListOf(Endpoint(53), min_items=1), NOT_SET,
                   "DNS servers, tried in order.", V,
                   unset_means="127.0.0.1, or those of /etc/resolv.conf with the flag use_resolvconf"),
        OptionSpec("DNS_timeout", Interval(1, 300), 5, "Longest wait for one DNS answer.", V),
        OptionSpec("flags", Flags({"use_resolvconf": False},
                                  docs={"use_resolvconf": "take the nameservers from /etc/resolv.conf"}),
                   {"use_resolvconf": False}, "Resolver flags.", R),
        OptionSpec("local_domains", ListOf(String(nonempty=True, what="domain")), (),
                   "Domains delivered locally, besides the host name and localhost, which always "
                   "are: a name matches itself, '.example.org' every name below example.org, "
                   "'[192.0.2.1]' that address literal. Mail for them is never relayed; "
                   "unknown users in them get 550 5.1.1 (spec/policy.md, D-POL-6).", EXT),
    ),
    sections=(
        MAP,
        _map_use("local_user_map", "The map of valid local users.", {"localpart": False, "local_domains": False}, V3),
        _map_use("aliases", "The aliases map: local part to addresses.",
                 {"localpart": False, "local_domains": False, "file": False, "program": False}, V3),
        _map_use("mailertable", "The routing map: domain to mailer:host.", {"full_address": False}, V3),
        _map_use("access_map", "The access map (cltaddr:, from:, to:, ... tags).", {}, R),
        SectionSpec(
            "greylisting", "Greylisting of (client, sender, recipient) triplets; on when present.",
            origin=V, finish=_finish_greylisting,
            options=(
                OptionSpec("min_delay", Interval(0), 5 * 60, "A retry is accepted only after this delay.", EXT),
                OptionSpec("max_delay", Interval(1), 4 * 3600, "A retry later than this starts over.", EXT),
                OptionSpec("expire", Interval(1), 36 * 86400, "How long a passed triplet stays accepted.", EXT),
                OptionSpec("database", Path(), "greylist.db", "The greylisting database file.", EXT),
                OptionSpec("IPv4_prefix", Integer(0, 32), 24, "Client IPv4 addresses are grouped by this prefix.", EXT),
                OptionSpec("IPv6_prefix", Integer(0, 128), 64, "Client IPv6 addresses are grouped by this prefix.", EXT),
            ),
        ),
        SectionSpec(
            "dnsbl", "A DNS block list asked about every client (RFC 5782); lists are asked in "
            "the order declared and the first that lists the client gives its reply. A list "
            "that does not answer does not list (fail open). The reply applies at MAIL, or "
            "at RCPT with delay_checks; from: OK and relay grants override it (B45, D-POL-14).",
            naming=Naming.REQUIRED, repeat=True, origin=EXT, finish=_finish_dnsbl,
            options=(
                OptionSpec("domain", String(nonempty=True, what="domain"), NOT_SET,
                           "The list's DNS domain (client 192.0.2.1 is asked as 1.2.0.192.<domain>).",
                           EXT, required=True),
                OptionSpec("reply", String(nonempty=True, what="reply"), NOT_SET,
                           "Reply for a listed client: \"554 5.7.1 text\" (macros as in access-map "
                           "replies, ${dnsbl} is the domain), REJECT or TEMPFAIL.", EXT,
                           unset_means="554 5.7.1 Client <address> is listed at <domain>"),
                OptionSpec("codes", ListOf(String(nonempty=True, what="address or network")), (),
                           "A records that mean 'listed': addresses or networks; the default, an "
                           "empty list, means 127.0.0.2 to 127.0.0.255. Other answers (such as the "
                           "127.255.255.x error codes) are ignored with a warning.", EXT),
            ),
        ),
    ),
)

LMTPD = SectionSpec(
    "lmtpd",
    "meta1's own local delivery agent (spec/lmtpd.md): an LMTP server (RFC 2033) on a UNIX "
    "socket that stores each message in one Maildir per mailbox. MeTA1 leaves local delivery "
    "to an external LDA; point smtpc's LMTP_socket at this section's socket to use it "
    "instead (the two paths must name the same file).",
    origin=EXT, finish=_no_self_dependency,
    options=_service_options("wait", ()) + (
        OptionSpec("socket", Path(), "lmtpd/lmtpsock",
                   "UNIX socket lmtpd listens on, relative to queue_directory; its directory is "
                   "created (mode 0750) and a stale socket file left by a dead lmtpd is "
                   "replaced. smtpc's LMTP_socket must name the same file.", EXT),
        OptionSpec("mail_directory", Path(), "mail",
                   "Directory of the mailboxes, relative to queue_directory: the mailbox of "
                   "a recipient is the Maildir <mail_directory>/<mailbox>/ (tmp, new, cur; "
                   "created on first delivery, mode 0700), where <mailbox> is the local part "
                   "lower-cased without its +detail. Only [a-z0-9._-], not starting with a "
                   "dot, at most 64 characters; other recipients are refused with 550 5.1.1.",
                   EXT),
    ),
)

MCP = SectionSpec(
    "mcp",
    "The master control program's own options (its services are the daemon sections).",
    implicit=True, origin=V,
    options=_log_options() + (
        OptionSpec("pid_file", Path(), "mcp.pid", "File holding MCP's process id.", EXT),
        OptionSpec("restart_limit", Integer(1, 1000), 5,
                   "Deaths within restart_period after which a service counts as failed for good.", EXT),
        OptionSpec("restart_period", Interval(1), 60, "Window for restart_limit.", EXT),
        OptionSpec("shutdown_timeout", Interval(1, 3600), 30,
                   "How long MCP waits for services to stop before killing them.", EXT),
        OptionSpec("start_timeout", Interval(1, 3600), 60,
                   "How long MCP waits for a service to say it is ready before it stops it "
                   "and starts it again (counted as a death).", EXT),
    ),
)

ROOT = SectionSpec(
    "",
    "Global options, read by every daemon.",
    origin=V,
    options=(
        OptionSpec("hostname", String(what="host name"), "",
                   "Fully qualified name used in the greeting, EHLO and Received: headers; "
                   "empty means the system's host name.", R),
        OptionSpec("queue_directory", Path(), "/var/spool/meta1",
                   "Working directory of every daemon; relative paths are relative to it. "
                   "A leading ~/ means the home directory of the user reading the file.", EXT),
        OptionSpec("CDB_base_directory", Path(), "cdb", "Directory of the content database.", R),
        OptionSpec("Log_Level", Integer(0, 15), 9, "Logging verbosity, the default for every daemon.", V),
        OptionSpec("debug_level", Integer(0, 100), 0, "Debug output, the default for every daemon.", R),
        OptionSpec("log_file", Path(), NOT_SET,
                   "File every daemon logs to (appended; mcp opens it and the daemons it starts "
                   "inherit it), relative to the queue directory.", EXT,
                   unset_means="standard error; `meta1 start` in the background: meta1.log in the "
                               "queue directory"),
        OptionSpec("syslog_facility", Enum(("mail", "daemon", "local0", "local1", "local2", "local3", "local4",
                                            "local5", "local6", "local7")), NOT_SET,
                   "Also send every log line to syslog with this facility.", EXT, unset_means="no syslog"),
        OptionSpec("syslog_socket", Path(), "/dev/log", "The syslog daemon's socket (syslog_facility).", EXT),
        OptionSpec("trace_file", Path(), NOT_SET,
                   "File every daemon appends its state-machine transitions to, one JSON object "
                   "per line (daemon, machine, id, old, input, new, time, pid), for "
                   "`python3 -m meta1.tools.tracecheck` and `meta1 trace`; relative to the queue directory.", EXT,
                   unset_means="no trace"),
    ),
    sections=(MCP, QMGR, SMTPS, SMTPC, SMAR, LMTPD),
)


def walk(spec: SectionSpec = ROOT, path: tuple[str, ...] = ()):
    """Every section spec with its path of keywords, depth first, in schema order."""
    yield path, spec
    for child in spec.sections:
        yield from walk(child, path + (child.keyword,))
