"""Maildir delivery: one message into one or more mailboxes, durable before it counts.

Responsibilities
    :class:`MaildirWriter` stores a :class:`~meta1.lmtpd.mailbox.DeliveryRequest` in the
    Maildir of each of its recipients, ``<mail_directory>/<mailbox>/``, and says per
    recipient whether the message is durable there (:class:`~meta1.lmtpd.mailbox.Outcome`).
    It is blocking file work: lmtpd's daemon runs it in a worker thread, never on the
    event loop.

The Maildir layout (https://cr.yp.to/proto/maildir.html, qmail's maildir(5))
    ``<mailbox>/tmp``, ``new`` and ``cur``, created on the first delivery with mode 0700
    (and ``mail_directory`` itself). A message is written in ``tmp/`` under a unique
    name and then appears in ``new/`` under the same name, complete: a reader never sees
    a partial message in ``new/``. ``cur/`` is the reader's.

The write sequence (spec/lmtpd.md, "Why a 250 is durable")
    1. create the directories that are missing; each new one is fsynced into its parent,
       so the path to ``new/`` survives a power cut too;
    2. create ``tmp/<unique>`` (``O_EXCL``: never an existing file), write the message,
       ``fsync`` it, close it;
    3. ``link`` it to ``new/<unique>`` (a file system without hard links: ``rename``);
    4. unlink ``tmp/<unique>``;
    5. ``fsync`` the ``new/`` directory: now the name is durable as well as the data.
    Only after step 5 is the outcome durable (the session answers ``250``). Any error
    before it removes what was made — the ``new/`` name included, so that the ``451``
    the recipient gets cannot be followed by a duplicate when the client tries again —
    and the outcome carries the error. A crash between 3 and 5 can leave a message in
    ``new/`` for which the client saw no ``250``: at most a duplicate, never a loss (the
    window DESIGN.md allows). A crash before 3 leaves a file in ``tmp/``; Maildir
    readers remove those after 36 hours.

Unique names
    ``<seconds>.M<microseconds>P<pid>Q<count>.<host>``, the modern Maildir convention:
    the time of the delivery, this process's id and a per-process delivery counter (so
    two deliveries in the same microsecond differ), then the host name with ``/`` and
    ``:`` written ``\\057`` and ``\\072`` as the convention asks. The time is taken as
    64-bit integer nanoseconds (``time.time_ns``), never through ``time_t``.

What is written (D-LMTPD-3)
    ``Return-Path: <sender>`` (RFC 5321 §4.4: the delivering MTA adds it), then
    ``Delivered-To: <recipient>`` (the address as given in RCPT, the header Postfix,
    qmail and Dovecot write, which also lets a forwarding loop be detected), then the
    message with every CRLF turned into LF. Everything else is byte for byte as
    received. Why LF: Maildir files are UNIX text files — qmail, Postfix's local and
    virtual agents and Dovecot all store LF, and readers (mutt, Dovecot) count sizes and
    lines that way. Nothing is lost: smtps accepts CRLF-only content (a bare CR or LF
    is refused, D-SMTP-16), so converting LF back to CRLF gives the original bytes; a
    bare CR or LF from another client is kept as it came. Header values are made
    printable (:func:`meta1.smtp.text.printable`), except that an address of an SMTPUTF8
    transaction keeps its UTF-8 (RFC 6532 §3); control characters can never appear
    (the path parsers refuse them).
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Callable

from meta1.lmtpd.mailbox import DeliveryRequest, Outcome
from meta1.queue.cdb import fsync_directories
from meta1.smtp.text import printable

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
SUBDIRECTORIES = ("tmp", "new", "cur")
#: link(2) errors that mean "no hard links here": fall back to rename(2).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                            errno.EXDEV})


def maildir_host(hostname: str) -> str:
    """The host part of a unique name: ``/`` and ``:`` escaped as the convention asks,
    anything unprintable replaced."""
    return printable(hostname).replace("/", "\\057").replace(":", "\\072") or "localhost"


def header_value(text: str, utf8: bool) -> bytes:
    """An address as a header value: UTF-8 only for an SMTPUTF8 transaction (RFC 6532)."""
    if utf8 and text.isprintable():
        return text.encode("utf-8")
    return printable(text).encode("ascii")


def message_bytes(request: DeliveryRequest, recipient_address: str) -> bytes:
    """What goes into one recipient's file (see the module documentation)."""
    return (b"Return-Path: <" + header_value(request.sender, request.utf8) + b">\n"
            + b"Delivered-To: " + header_value(recipient_address, request.utf8) + b"\n"
            + request.content.replace(b"\r\n", b"\n"))


class MaildirWriter:
    """Delivers into the Maildirs below ``root``; safe to call from several threads."""

    def __init__(self, root: str | os.PathLike, hostname: str, *,
                 clock_ns: Callable[[], int] = time.time_ns, pid: int | None = None):
        self.root = Path(root)
        self.host = maildir_host(hostname)
        self.clock_ns = clock_ns
        self.pid = os.getpid() if pid is None else pid
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def unique_name(self) -> str:
        """A name no other delivery of this host uses (the Maildir convention)."""
        with self._lock:
            count = next(self._counter)
        now_us = self.clock_ns() // 1000
        seconds, microseconds = divmod(now_us, 1_000_000)
        return f"{seconds}.M{microseconds}P{self.pid}Q{count}.{self.host}"

    def maildir(self, mailbox: str) -> Path:
        return self.root / mailbox

    def deliver(self, request: DeliveryRequest) -> tuple[Outcome, ...]:
        """Store ``request`` for each recipient; one outcome each, in order. Never raises
        for a file system error: that is the recipient's outcome."""
        outcomes = []
        for recipient in request.recipients:
            try:
                path = self.deliver_one(recipient.mailbox, message_bytes(request, recipient.address))
            except OSError as error:
                outcomes.append(Outcome(False, _describe(error)))
            else:
                outcomes.append(Outcome(True, str(path)))
        return tuple(outcomes)

    def deliver_one(self, mailbox: str, data: bytes) -> Path:
        """Store ``data`` in ``mailbox``'s Maildir; the path in ``new/`` once durable."""
        maildir = self.maildir(mailbox)
        self._ensure(maildir)
        name = self.unique_name()
        temporary, final = maildir / "tmp" / name, maildir / "new" / name
        _write_synced(temporary, data)
        linked = False
        try:
            try:
                os.link(temporary, final)
            except OSError as error:
                if error.errno not in _NO_HARD_LINKS:
                    raise
                os.rename(temporary, final)     # same directory tree: atomic
            linked = True
            _unlink_quietly(temporary)
            fsync_directories((final.parent,))
        except BaseException:
            _unlink_quietly(temporary)
            if linked:
                _unlink_quietly(final)          # no 250 was given: leave no copy behind
            raise
        return final

    def _ensure(self, maildir: Path) -> None:
        """Create what is missing of root and ``maildir/{tmp,new,cur}``, each new
        directory synced into its parent."""
        for directory in (self.root, maildir, *(maildir / sub for sub in SUBDIRECTORIES)):
            try:
                os.mkdir(directory, DIRECTORY_MODE)
            except FileExistsError:
                continue
            fsync_directories((directory.parent,))


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _describe(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return where + (error.strerror or str(error))
