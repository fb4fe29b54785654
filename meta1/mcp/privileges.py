"""Who may do what in the queue directory, and making it so (mcp as root).

Responsibilities
    :func:`queue_plan` says, as data, the owner, group and mode of every directory of the
    queue when mcp runs the daemons as their own users (reference §1.1, reliability.md S1
    S2 S3, T70); :func:`prepare_queue` creates and adjusts them without ever following a
    symbolic link; :func:`unreachable` finds a directory above the queue that a daemon's
    user cannot pass. Without root nothing here is used: every daemon runs as mcp's user
    in a queue of mode 0750 (:meth:`QueueLayout.ensure`).

The table (spec/mcp.md, "Who may do what")
    ========================  ==============  ===============  =====  =========================
    directory                 owner           group            mode   why
    ========================  ==============  ===============  =====  =========================
    queue directory           root            root             0755   mcp's pid, status, log
    cdb, cdb/0 … cdb/f        qmgr            smtps's group    0771*  smtps writes, qmgr reads
                                                                      and removes, smtpc reads
    ibdb, defedb, quarantine  qmgr            qmgr             0700   envelopes: qmgr's alone
    qmgr                      qmgr            content group    2710   smtps and smtpc reach
                                                                      their sockets (0660)
    smtps                     smtps           smtps            0700   id state, pass_fd socket
    smar                      smar            qmgr's group     2710   qmgr reaches smarqmgr
    lmtpd socket directory    lmtpd           smtpc's group    2710   smtpc reaches lmtpsock
    mail directory            lmtpd           lmtpd            0700   mailboxes
    ========================  ==============  ===============  =====  =========================

    Socket directories are setgid (2710): a socket qmgr, smar or lmtpd creates there (mode
    0660) belongs to the directory's group, so its clients may connect and nobody else.

    \\* smtps writes there through its group, qmgr as the owner; everybody else may only
    pass (``x``), not list or write. Content files are created 0640 and given the content
    group (``fchown``: smtps and qmgr get its number from mcp in META1_CONTENT_GID), so
    smtpc reads them through its group and nobody else can. The content group is smtpc's
    group unless ``CDB_gid`` says otherwise; smtps and qmgr have it as their one
    supplementary group (MeTA1's port puts meta1s into meta1c likewise). smar is in no
    group of the queue: it can read none of it.

Symbolic links (S3, T72)
    mcp is root and the directories below the queue belong to the daemons, so a daemon
    could put a symbolic link where mcp expects a directory. Every directory is opened
    relative to an already opened parent with ``O_NOFOLLOW | O_DIRECTORY`` and changed
    through that descriptor (``fchown``, ``fchmod``): a link is refused, never followed.
    The queue directory itself must belong to root and be writable by nobody else, and so
    must every directory above it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from meta1.queue.layout import CDB_FANOUT, QueueLayout

ROOT = 0


class QueueSafetyError(Exception):
    """The queue directory cannot be made safe (a link, a foreign owner, a wrong type)."""


@dataclass(frozen=True)
class DirectoryRule:
    """``path`` relative to the queue directory ("" is the queue directory itself)."""

    path: str
    uid: int
    gid: int
    mode: int


@dataclass(frozen=True)
class Owners:
    """The uids and gids the table needs (from the services' accounts)."""

    qmgr: tuple[int, int]
    smtps: tuple[int, int]
    smtpc: tuple[int, int]
    smar: tuple[int, int]
    content_gid: int
    lmtpd: tuple[int, int] | None = None


def queue_plan(layout: QueueLayout, owners: Owners, *, lmtpd_socket_dir: str | None = None,
               mail_directory: str | None = None) -> list[DirectoryRule]:
    """The table of the module docstring for ``layout`` (parents before children)."""
    root = layout.root
    qmgr_uid, qmgr_gid = owners.qmgr
    cdb = os.path.relpath(layout.cdb, root)
    rules = [
        DirectoryRule("", ROOT, ROOT, 0o755),
        DirectoryRule(cdb, qmgr_uid, owners.smtps[1], 0o771),
        *(DirectoryRule(os.path.join(cdb, digit), qmgr_uid, owners.smtps[1], 0o771) for digit in CDB_FANOUT),
        DirectoryRule("ibdb", qmgr_uid, qmgr_gid, 0o700),
        DirectoryRule("defedb", qmgr_uid, qmgr_gid, 0o700),
        DirectoryRule("quarantine", qmgr_uid, qmgr_gid, 0o700),
        DirectoryRule("qmgr", qmgr_uid, owners.content_gid, stat.S_ISGID | 0o710),
        DirectoryRule("smtps", *owners.smtps, 0o700),
        DirectoryRule("smar", owners.smar[0], qmgr_gid, stat.S_ISGID | 0o710),
    ]
    if owners.lmtpd is not None and lmtpd_socket_dir:
        rules.append(DirectoryRule(lmtpd_socket_dir, owners.lmtpd[0], owners.smtpc[1], stat.S_ISGID | 0o710))
    if owners.lmtpd is not None and mail_directory:
        rules.append(DirectoryRule(mail_directory, *owners.lmtpd, 0o700))
    return rules


def prepare_queue(root: str, rules: list[DirectoryRule]) -> None:
    """Create the directories of ``rules`` below ``root`` and give them their owner,
    group and mode, following no symbolic link (module docstring). ``root`` is created
    if missing; it and its parents must be root's and writable by nobody else."""
    root = os.path.abspath(root)
    _check_parents(root)
    os.makedirs(root, mode=0o755, exist_ok=True)
    for rule in rules:
        parts = [p for p in rule.path.split(os.sep) if p and p != "."]
        if ".." in parts:
            raise QueueSafetyError(f"{rule.path}: outside the queue directory")
        fd = _open_directory(root, None)
        try:
            for index, part in enumerate(parts):
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                child = _open_directory(part, fd, shown=os.path.join(root, *parts[:index + 1]))
                os.close(fd)
                fd = child
            info = os.fstat(fd)
            if (info.st_uid, info.st_gid) != (rule.uid, rule.gid):
                os.fchown(fd, rule.uid, rule.gid)
            if stat.S_IMODE(info.st_mode) != rule.mode:
                os.fchmod(fd, rule.mode)
        finally:
            os.close(fd)


def _open_directory(name: str, dir_fd: int | None, shown: str | None = None) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise QueueSafetyError(f"{shown or name} is not a directory (a symbolic link?): refused") from None
        raise


def _check_parents(root: str) -> None:
    """The queue directory (if it exists) and every directory above it belong to root and
    are writable by nobody else (a sticky directory such as /tmp may be)."""
    path = root
    while True:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISLNK(info.st_mode) and path == root:
                raise QueueSafetyError(f"{path} is a symbolic link: refused")
            if not stat.S_ISLNK(info.st_mode):
                writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                if info.st_uid != ROOT or (writable and not info.st_mode & stat.S_ISVTX) or (
                        writable and path == root):
                    raise QueueSafetyError(
                        f"{path} belongs to uid {info.st_uid} or is writable by others (mode "
                        f"{stat.S_IMODE(info.st_mode):04o}): mcp runs as root and works only in directories "
                        "that root alone may change (reliability S3)")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def unreachable(path: str, uid: int, gids: tuple[int, ...]) -> str | None:
    """The first directory from / down to ``path`` that the user ``uid`` with groups
    ``gids`` may not pass (search permission), or None."""
    current = "/"
    for part in [p for p in os.path.abspath(path).split(os.sep) if p]:
        current = os.path.join(current, part)
        try:
            info = os.stat(current)
        except FileNotFoundError:
            return None          # mcp creates the rest with the table's modes
        if not _allowed(info, uid, gids, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return current
    return None


def _allowed(info: os.stat_result, uid: int, gids: tuple[int, ...], user_bit: int, group_bit: int,
             other_bit: int) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & user_bit)
    if info.st_gid in gids:
        return bool(info.st_mode & group_bit)
    return bool(info.st_mode & other_bit)


def cannot_use(path: str, uid: int, gids: tuple[int, ...], *, execute: bool) -> str | None:
    """Why the user ``uid`` (groups ``gids``) cannot read — or with ``execute``, run —
    the file ``path`` (symbolic links resolved), or None when it can."""
    real = os.path.realpath(path)
    blocked = unreachable(os.path.dirname(real), uid, gids)
    if blocked is not None:
        return f"{blocked} does not let it pass"
    try:
        info = os.stat(real)
    except OSError as error:
        return f"{real}: {error.strerror}"
    if execute and not _allowed(info, uid, gids, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
        return f"{real} is not executable for it"
    if not _allowed(info, uid, gids, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH) and not execute:
        return f"{real} is not readable for it"
    return None
