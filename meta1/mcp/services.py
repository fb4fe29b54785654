"""The services of a configuration, as mcp runs them: order, command line, account.

Responsibilities
    Read a loaded configuration (:mod:`meta1.config`) into the list mcp supervises: one
    :class:`Service` per daemon section — qmgr, each smtps (named ones too), smtpc, smar
    and lmtpd when declared — in the order of the file, each with the command mcp runs,
    the account it runs as and what the supervisor needs (:class:`ServiceSpec`). Pure:
    account lookups go through an injected function, nothing is started here.

Order (B73, D-MCP-1)
    MeTA1 starts services in the reverse of their order in the file and stops them in
    that order. Sections the file declares keep their places; the ones it leaves out
    (present with their defaults) follow, in the order smtps, smtpc, lmtpd, qmgr, smar —
    so a file that declares nothing stops smtps first (its sessions finish while qmgr
    still commits) and starts smar and qmgr first.

Command (§1.7 ``path``/``arguments``)
    Without ``path`` a service is this meta1's own daemon: the running Python with
    ``-m meta1 <daemon> -f FILE`` (the built-in configuration's own file when mcp read
    none), ``--name NAME`` for a named smtps. With ``path``, ``arguments`` is its command line, argv[0] first, split at white
    space (MeTA1's convention; no shell is involved).

Accounts (reference §1.1, D-MCP-5)
    As root, each service runs as its ``user``, by default MeTA1's accounts: meta1s
    (smtps), meta1q (qmgr), meta1c (smtpc), meta1m (smar) and meta1 (lmtpd). Content
    files belong to the "content group" — ``CDB_gid`` of the smtps section, by default
    smtpc's group — which smtps and qmgr get as their one supplementary group: smtps
    writes content, qmgr reads and removes it, smtpc reads it (spec/mcp.md has the whole
    permission table). Not root, every service runs as mcp's own user; a ``user`` naming
    someone else is an error.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from dataclasses import dataclass
from typing import Callable

from meta1.config import Config, effective_options, effective_section
from meta1.config.schema import NOT_SET
from meta1.config.tree import Document, format_document
from meta1.mcp.supervisor import ServiceSpec

#: Where services the file leaves out go (after the declared ones), in file order.
ABSENT_ORDER = ("smtps", "smtpc", "lmtpd", "qmgr", "smar")
#: MeTA1's accounts (FreeBSD port, reference §1.1) for services without ``user``.
DEFAULT_USERS = {"smtps": "meta1s", "qmgr": "meta1q", "smtpc": "meta1c", "smar": "meta1m", "lmtpd": "meta1"}


class ServiceError(Exception):
    """The configuration cannot be run as asked (e.g. an unknown user)."""


@dataclass(frozen=True)
class Account:
    """Who a service runs as: a user, its group, and at most one supplementary group."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Service:
    """One daemon mcp runs. ``kind`` is its section keyword, ``section`` the smtps name
    (None for the others and the unnamed smtps), ``account`` None when mcp does not change
    users, ``passed`` whether mcp binds its listen socket and passes it (start_action =
    pass, smtps only)."""

    spec: ServiceSpec
    kind: str
    section: str | None
    argv: tuple[str, ...]
    executable: str
    account: Account | None
    passed: bool

    @property
    def name(self) -> str:
        return self.spec.name


#: (user name or number) -> (name, uid, gid); raises KeyError for an unknown user.
UserLookup = Callable[[str], tuple[str, int, int]]


def system_user(user: str) -> tuple[str, int, int]:
    """The account ``user`` (a name or a number) from the system's password database."""
    import pwd
    entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def services_of(config: Config, config_file: str | None, *, as_root: bool,
                lookup: UserLookup = system_user, python: str = sys.executable) -> list[Service]:
    """The services of ``config`` in file order (see the module docstring).
    ``config_file``: the file mcp read (None: the built-in configuration)."""
    nodes = _daemon_nodes(config)
    accounts = _accounts(nodes, as_root, lookup)
    services = []
    for kind, name, node in nodes:
        label = kind if name is None else f"{kind}:{name}"
        argv, executable = _command(node, kind, name, config_file or config.filename, python)
        spec = ServiceSpec(label, tuple(node.restart_dependencies), _fingerprint(config, node))
        passed = kind == "smtps" and node.start_action == "pass"
        services.append(Service(spec, kind, name, argv, executable, accounts.get(label), passed))
    return services


def _daemon_nodes(config: Config) -> list[tuple[str, str | None, object]]:
    """(kind, smtps name, section node) of every service, declared ones in file order first."""
    nodes = []
    for kind in ABSENT_ORDER:
        section = config.root.sections.get(kind)
        if section is None:
            continue
        for name, node in (section.items() if isinstance(section, dict) else [(None, section)]):
            nodes.append((kind, name, node))
    declared = sorted((n for n in nodes if n[2].declared), key=lambda n: (n[2].pos.line, n[2].pos.col))
    absent = [n for n in nodes if not n[2].declared]
    return declared + absent


def _command(node, kind: str, name: str | None, config_file: str,
             python: str) -> tuple[tuple[str, ...], str]:
    if node.path is not NOT_SET:
        arguments = node.arguments if node.arguments is not NOT_SET else str(node.path)
        argv = tuple(shlex.split(arguments, posix=True)) or (str(node.path),)
        return argv, str(node.path)
    # Always -f: a daemon running as another user would otherwise pick its own built-in
    # configuration (default.conf, not root's default-root.conf).
    argv = [python, "-m", "meta1", kind, "-f", config_file]
    if name is not None:
        argv += ["--name", name]
    return tuple(argv), python


def _accounts(nodes, as_root: bool, lookup: UserLookup) -> dict[str, Account]:
    """The account of each service (label → Account); empty when not root."""
    if not as_root:
        for kind, name, node in nodes:
            if node.user is not NOT_SET:
                raise ServiceError(f"{kind}: user = {node.user} needs mcp to run as root")
        return {}
    found: dict[str, tuple[str, int, int]] = {}
    for kind, name, node in nodes:
        user = node.user if node.user is not NOT_SET else DEFAULT_USERS[kind]
        try:
            found[_label(kind, name)] = lookup(str(user))
        except (KeyError, ValueError):
            raise ServiceError(f"{_label(kind, name)}: user {user} does not exist (create MeTA1's accounts "
                               f"with `meta1 accounts --create`, or set user = ... in the section)") from None
    for label, (user, uid, _) in found.items():
        if uid == 0:
            raise ServiceError(f"{label}: user {user} is root; only mcp may run as root")
    content_group = _content_group(nodes, found)
    accounts = {}
    for label, (user, uid, gid) in found.items():
        kind = label.partition(":")[0]
        groups = (content_group,) if kind in ("smtps", "qmgr") and content_group != gid else ()
        accounts[label] = Account(user, uid, gid, groups)
    return accounts


def content_group_of(config: Config, *, lookup: UserLookup = system_user) -> int:
    """The group that owns the content files when mcp runs as root (see the docstring)."""
    nodes = _daemon_nodes(config)
    return _content_group(nodes, {_label(k, n): lookup(str(node.user if node.user is not NOT_SET
                                                             else DEFAULT_USERS[k]))
                                  for k, n, node in nodes if k in ("smtps", "smtpc")})


def _content_group(nodes, found: dict[str, tuple[str, int, int]]) -> int:
    for kind, name, node in nodes:
        if kind == "smtps" and node.cdb_gid is not NOT_SET:
            return int(node.cdb_gid)
    return found["smtpc"][2]


def _label(kind: str, name: str | None) -> str:
    return kind if name is None else f"{kind}:{name}"


def _fingerprint(config: Config, node) -> str:
    """Changes when the service's section or a global option changes (a reload restarts it)."""
    text = format_document(Document(effective_options(config.root) + (effective_section(node),)))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
