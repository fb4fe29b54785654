"""The incoming log (IBDB): qmgr's durable record of every accepted transaction.

Responsibilities
    Append batches of records with one fdatasync per batch (:class:`IncomingLog`, called
    by qmgr's group commit from a worker thread); rotate to a new file when the current
    one is large; rebuild the list of queued transactions at start (:func:`replay`);
    move damaged files aside with a note (:func:`quarantine`).

Files (spec/queue.md)
    ``ibdb/<16-digit decimal sequence>.ibdb``, each ``magic record*`` in the record
    container (:mod:`.recordfile`). The records are the IPC records themselves
    (:data:`LOG_RECORD_TYPES`; today only Transaction, later recipient-state records) and,
    in a file that was rotated, a final :class:`~meta1.queue.recordfile.IbdbEnd` holding
    its own offset. A new file is created with O_EXCL, given its magic, fdatasynced, and
    the directory fsynced before any transaction goes into it.

Appending (durability rule, DESIGN.md)
    A batch is packed completely before the file is touched (a record that cannot be
    encoded fails the batch, not the file), written with one ``os.write`` where the kernel
    takes it whole, then fdatasynced: one flush covers every transaction waiting in the
    batch, and each of them is acknowledged only after it returns.

    * A write error (ENOSPC, EIO…) truncates the file back to where the batch started,
      fdatasyncs that, and re-raises: the records of a failed batch are answered 451, so
      they must not come back at replay. If the truncation fails too, the file is
      abandoned like after an fsync error.
    * An fdatasync error abandons the file: after a failed fsync Linux may already have
      dropped the dirty pages and marked them clean, so a second fsync "succeeding"
      proves nothing (fsyncgate, reliability.md R2). Nothing more is written to it, not
      even an End; the next batch starts a new file. At the next replay the abandoned file
      is not the newest and has no End, so it is quarantined as a whole (or, when it is
      still the newest, replayed with its torn tail cut).

    fdatasync rather than fsync: appends change the size, which fdatasync does flush; it
    skips only the modification time, which nothing reads.

Replay (qmgr start-up; spec/receive-path.md, "Record files")
    Files are read in sequence order. Any file may be damaged and is then quarantined
    whole — never half-used — while the transactions of the other files are kept. The one
    tolerated defect is a torn tail in the newest file: an append that a crash cut short
    was never acknowledged, so it is cut off (ftruncate + fsync), after a copy of the cut
    bytes has been put into quarantine, since the truncation is the only place where this
    package destroys data. A file other than the newest must end with End. Then every
    transaction's content file gets the cheap check (:func:`meta1.queue.cdb.content_ok`):
    a transaction whose content is missing or damaged is reported, its damaged content
    file quarantined, and it is left out — the content was made durable before the commit
    (spec/receive-path.md), so this is damage, not a crash window.

    ``read_only=True`` (for ``mailq``, safe while qmgr runs) changes nothing on disk: a
    torn tail is ignored (it may be an append in progress), damaged files are reported in
    ``quarantined`` under their own names but not moved.

Growth
    A reader refuses a record type it does not know (that is damage), so a new record type
    (recipient done, deferred, …) is added to :data:`LOG_RECORD_TYPES` here and to the
    replay's fold at the same time; files written before keep their meaning.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import pathlib
import re
import shutil
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from meta1.ipc.records import RecipientsDone, Transaction
from meta1.queue.cdb import content_problem, fsync_directories, write_all
from meta1.queue.layout import QueueLayout
from meta1.queue.recordfile import (IBDB_MAGIC, MAGIC_SIZE, DamagedFile, IbdbEnd, TornTail, check_magic,
                                    file_size, iter_records, pack_record, read_record_at)
from meta1.queue.timefmt import iso_utc, now_us

log = logging.getLogger("meta1.queue")

LOG_RECORD_TYPES: tuple[type, ...] = (Transaction, RecipientsDone)
"""The record types an IBDB file may hold besides its End."""
LOG_FILE = re.compile(r"(\d{16})\.ibdb")
_QUARANTINED_LOG_FILE = re.compile(r"(\d{16})\.ibdb(\.\d+)?")
FILE_MODE = 0o640
_END_SIZE = len(pack_record(IbdbEnd(0)))


def log_file_name(sequence: int) -> str:
    return f"{sequence:016d}.ibdb"


def log_files(layout: QueueLayout) -> list[tuple[int, pathlib.Path]]:
    """``(sequence, path)`` of the IBDB files, oldest first."""
    try:
        names = os.listdir(layout.ibdb)
    except FileNotFoundError:
        return []
    found = [(int(match.group(1)), layout.ibdb / name) for name in names if (match := LOG_FILE.fullmatch(name))]
    return sorted(found)


def _next_sequence(layout: QueueLayout) -> int:
    """One past every sequence number in use, including those of quarantined files, so
    that no number is ever given to two different files."""
    used = [seq for seq, _ in log_files(layout)]
    try:
        quarantined = os.listdir(layout.quarantine)
    except FileNotFoundError:
        quarantined = []
    used += [int(match.group(1)) for name in quarantined if (match := _QUARANTINED_LOG_FILE.fullmatch(name))]
    return max(used, default=0) + 1


# -- quarantine -----------------------------------------------------------------------------

def _reserve(layout: QueueLayout, base: str) -> tuple[pathlib.Path, int]:
    """A free name in quarantine/ (``base``, ``base.1``, …), claimed by creating its
    ``.why`` note exclusively; the note's open descriptor."""
    layout.quarantine.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        target = layout.quarantine / (base if n == 0 else f"{base}.{n}")
        if os.path.lexists(target):
            continue
        try:
            fd = os.open(f"{target}.why", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                         FILE_MODE)
        except FileExistsError:
            continue
        return target, fd
    raise AssertionError("unreachable")


def _finish_note(fd: int, reason: str, source: pathlib.Path, now: int | None) -> None:
    moment = iso_utc(now_us() if now is None else now)
    try:
        write_all(fd, f"reason: {reason}\nfile: {source}\nquarantined: {moment}\n".encode("utf-8", "backslashreplace"))
        os.fsync(fd)
    finally:
        os.close(fd)


def quarantine(layout: QueueLayout, path: pathlib.Path, reason: str, *, now: int | None = None) -> pathlib.Path:
    """Move ``path`` into quarantine/ under a free name with a ``<name>.why`` note beside it;
    the new path. Both directories are fsynced, so the move survives a crash."""
    path = pathlib.Path(path)
    target, note = _reserve(layout, path.name)
    try:
        try:
            os.rename(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # CDB_base_directory may be on another filesystem
                raise
            shutil.copyfile(path, target, follow_symlinks=False)
            _fsync_file(target)
            os.unlink(path)
    except BaseException:
        os.close(note)
        os.unlink(f"{target}.why")
        raise
    _finish_note(note, reason, path, now)
    fsync_directories([layout.quarantine, path.parent])
    log.warning("quarantined %s as %s: %s", path, target, reason)
    return target


def _fsync_file(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_cut_bytes(layout: QueueLayout, path: pathlib.Path, offset: int, reason: str) -> pathlib.Path:
    """Copy what a torn-tail truncation is about to remove into quarantine/."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        cut = stream.read()
    target, note = _reserve(layout, f"{path.name}.tail")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        try:
            write_all(fd, cut)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        os.close(note)
        raise
    _finish_note(note, f"{reason}; these {len(cut)} octets from offset {offset} were cut off", path, None)
    fsync_directories([layout.quarantine])
    return target


# -- replay ---------------------------------------------------------------------------------

@dataclass
class Replay:
    """What replay found. ``quarantined`` holds ``(path, reason)`` of every file moved to
    quarantine (with ``read_only``, the files that would have been, under their own names)."""

    transactions: dict[str, Transaction] = field(default_factory=dict)
    #: recipients already done, per transaction still in ``transactions``
    done: dict[str, set[str]] = field(default_factory=dict)
    #: transactions all of whose recipients are done (their content may still exist)
    completed: list[str] = field(default_factory=list)
    #: the sequence numbers of the files read, oldest first, and of the file that holds
    #: each queued transaction's record (for removing files no longer needed)
    files: list[int] = field(default_factory=list)
    file_of: dict[str, int] = field(default_factory=dict)
    quarantined: list[tuple[pathlib.Path, str]] = field(default_factory=list)
    torn_tail: bool = False
    missing_content: list[str] = field(default_factory=list)


def _read_log_file(path: pathlib.Path, newest: bool) -> tuple[list[object], TornTail | None]:
    """The records (transactions, recipients done) of one IBDB file and its torn tail, if any; DamagedFile for anything
    replay may not use (which includes a torn tail in a file that is not the newest)."""
    transactions: list[object] = []
    sealed_at: int | None = None
    with open(path, "rb") as stream:
        try:
            for offset, rec in iter_records(stream, IBDB_MAGIC, path):
                if sealed_at is not None:
                    raise DamagedFile(path, offset, "a record after End")
                if isinstance(rec, IbdbEnd):
                    if rec.size != offset:
                        raise DamagedFile(path, offset, f"End says it stands at offset {rec.size}")
                    sealed_at = offset
                elif isinstance(rec, LOG_RECORD_TYPES):
                    transactions.append(rec)
                else:
                    raise DamagedFile(path, offset, f"{type(rec).__name__} does not belong in the incoming log")
        except TornTail as torn:
            if newest and sealed_at is None:
                return transactions, torn
            raise DamagedFile(path, torn.offset, f"{torn.reason}, in a file that is "
                                                 f"{'sealed' if newest else 'not the newest'}") from None
        if sealed_at is None and not newest:
            raise DamagedFile(path, file_size(stream), "no End record in a file that is not the newest")
    return transactions, None


def _cut_torn_tail(layout: QueueLayout, path: pathlib.Path, torn: TornTail) -> pathlib.Path | None:
    saved = None
    if os.stat(path).st_size > torn.offset:
        saved = _save_cut_bytes(layout, path, torn.offset, torn.reason)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.ftruncate(fd, torn.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("%s: cut a torn tail at offset %d (%s)", path, torn.offset, torn.reason)
    return saved


def _check_content(layout: QueueLayout, transaction: Transaction) -> tuple[str | None, pathlib.Path | None]:
    """(what is wrong with the transaction's content file or None, the file if it exists)."""
    try:
        expected = layout.content_relpath(transaction.ta_id)
    except ValueError as exc:
        return str(exc), None
    if transaction.content != expected:
        return f"content path {transaction.content!r} is not {expected!r}", None
    path = layout.root / expected
    problem = content_problem(path)
    return problem, (path if problem is not None and os.path.lexists(path) else None)


def replay(layout: QueueLayout, read_only: bool = False) -> Replay:
    """Rebuild the queued transactions from IBDB (see the module documentation)."""
    result = Replay()
    files = log_files(layout)
    logged: list[object] = []
    file_of: dict[str, int] = {}
    for index, (sequence, path) in enumerate(files):
        newest = index == len(files) - 1
        try:
            transactions, torn = _read_log_file(path, newest)
        except FileNotFoundError:
            if read_only:  # qmgr moved it meanwhile
                continue
            raise
        except DamagedFile as damage:
            reason = f"at offset {damage.offset}: {damage.reason}"
            if read_only:
                result.quarantined.append((path, reason))
            else:
                result.quarantined.append((quarantine(layout, path, reason), reason))
            continue
        if torn is not None:
            result.torn_tail = True
            if not read_only:
                saved = _cut_torn_tail(layout, path, torn)
                if saved is not None:
                    result.quarantined.append((saved, f"torn tail of {path.name} at offset {torn.offset}: "
                                                      f"{torn.reason}"))
        logged += transactions
        result.files.append(sequence)
        for rec in transactions:
            if isinstance(rec, Transaction):
                file_of.setdefault(rec.ta_id, sequence)
    pending = _fold(logged, result)
    for transaction in pending:
        problem, damaged = _check_content(layout, transaction)
        if problem is None:
            result.transactions[transaction.ta_id] = transaction
            result.file_of[transaction.ta_id] = file_of[transaction.ta_id]
            continue
        result.done.pop(transaction.ta_id, None)
        result.missing_content.append(transaction.ta_id)
        log.warning("transaction %s is in the incoming log but its content is not usable: %s",
                    transaction.ta_id, problem)
        if damaged is not None:
            reason = f"content of {transaction.ta_id}, which is in the incoming log: {problem}"
            result.quarantined.append((damaged if read_only else quarantine(layout, damaged, reason), reason))
    return result


def _fold(logged: list[object], result: Replay) -> list[Transaction]:
    """Apply the log in order: the transactions with recipients still to do (in log
    order); ``result.done`` and ``result.completed`` filled. A RecipientsDone for an
    unknown transaction (its file quarantined) is ignored."""
    transactions: dict[str, Transaction] = {}
    done: dict[str, set[str]] = {}
    for rec in logged:
        if isinstance(rec, Transaction):
            if rec.ta_id in transactions:
                log.warning("transaction %s is logged more than once; the first record counts", rec.ta_id)
                continue
            transactions[rec.ta_id] = rec
        elif rec.ta_id in transactions:
            done.setdefault(rec.ta_id, set()).update(rec.rcpt_ids)
    pending = []
    for ta_id, transaction in transactions.items():
        finished = done.get(ta_id, set())
        if all(r.rcpt_id in finished for r in transaction.recipients):
            result.completed.append(ta_id)
            continue
        if finished:
            result.done[ta_id] = finished
        pending.append(transaction)
    return pending


# -- removing files no longer needed -------------------------------------------------------

class LogFileUse:
    """Which IBDB files still hold the record of a transaction that is not complete.

    A file may be removed when it is older than the file being written (so it is sealed,
    or abandoned), every transaction whose record it holds is complete, and so is every
    older file. Oldest first, because a file also holds done records (RecipientsDone) of
    transactions logged in older files: those records matter exactly as long as the older
    file's transactions are not complete. Without removal IBDB would grow for ever and
    replay with it. Pure bookkeeping: qmgr tells it what was logged where and what
    completed, and removes the files it names.
    """

    def __init__(self) -> None:
        self._open: dict[int, set[str]] = {}     # sequence -> transactions not complete
        self._file_of: dict[str, int] = {}

    def file(self, sequence: int) -> None:
        """A file exists (found at replay, or written to)."""
        self._open.setdefault(sequence, set())

    def logged(self, ta_id: str, sequence: int) -> None:
        """``ta_id``'s Transaction record is in file ``sequence``."""
        self.file(sequence)
        self._open[sequence].add(ta_id)
        self._file_of[ta_id] = sequence

    def completed(self, ta_id: str) -> None:
        sequence = self._file_of.pop(ta_id, None)
        if sequence is not None:
            self._open[sequence].discard(ta_id)

    def removable(self, current: int) -> list[int]:
        """The files that may go now (oldest first); they are forgotten here."""
        gone = []
        for sequence in sorted(self._open):
            if sequence >= current or self._open[sequence]:
                break
            gone.append(sequence)
            del self._open[sequence]
        return gone


# -- appending ------------------------------------------------------------------------------

def _sealed_or_foreign(path: pathlib.Path) -> bool:
    """True if the file must not be continued: it ends with End, or does not start with
    the IBDB magic. (Replay has already quarantined damaged files.)"""
    with open(path, "rb") as stream:
        size = file_size(stream)
        if size == 0:
            return False
        try:
            check_magic(stream, IBDB_MAGIC, path)
        except DamagedFile:
            return True
        if size < MAGIC_SIZE + _END_SIZE:
            return False
        try:
            found = read_record_at(stream, size - _END_SIZE, path)
        except DamagedFile:
            return False  # the last octets are the end of some other record
        return found is not None and isinstance(found[0], IbdbEnd) and found[0].size == size - _END_SIZE


class IncomingLog:
    """The append side of IBDB. One instance per queue (qmgr holds the queue lock); the
    methods may be called from different threads, one at a time (an internal lock makes
    sure of it)."""

    def __init__(self, layout: QueueLayout, max_file_size: int = 64 << 20):
        self.layout = layout
        self.max_file_size = max_file_size
        self.path: pathlib.Path | None = None
        self.sequence = 0
        self._fd: int | None = None
        self._size = 0
        self._opened = False
        self._lock = threading.Lock()

    def open(self) -> None:
        """Continue the newest file, or start a new one if it is sealed (or there is none)."""
        with self._lock:
            files = log_files(self.layout)
            if files and not _sealed_or_foreign(files[-1][1]):
                sequence, path = files[-1]
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
                self._use(fd, path, sequence)
                if self._size == 0:  # created, then the crash came before its magic
                    self._append(IBDB_MAGIC)
                    fsync_directories([self.layout.ibdb])
            else:
                self._start()
            self._opened = True

    def _use(self, fd: int, path: pathlib.Path, sequence: int) -> None:
        self._fd, self.path, self.sequence = fd, path, sequence
        self._size = os.fstat(fd).st_size

    def _start(self) -> None:
        sequence = _next_sequence(self.layout)
        path = self.layout.ibdb / log_file_name(sequence)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                     FILE_MODE)
        try:
            write_all(fd, IBDB_MAGIC)
            os.fdatasync(fd)
            fsync_directories([self.layout.ibdb])
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("removing the unusable new log file %s: %s", path, exc)
            raise
        self._use(fd, path, sequence)
        log.info("incoming log now writes %s", path)

    def _append(self, data: bytes, sync: Callable[[int], None] | None = None) -> None:
        """Write ``data`` and make it durable with ``sync(fd)``; on failure leave the file
        as it was or abandon it."""
        assert self._fd is not None
        start = self._size
        try:
            write_all(self._fd, data)
        except OSError:
            self._truncate_back(start)
            raise
        try:
            (sync or os.fdatasync)(self._fd)
        except OSError as exc:
            self._abandon(f"sync failed: {exc}")
            raise
        self._size = start + len(data)

    def _truncate_back(self, size: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
            os.fdatasync(self._fd)
        except OSError as exc:
            self._abandon(f"could not truncate a failed append back to {size} octets: {exc}")

    def _abandon(self, why: str) -> None:
        log.error("incoming log %s can no longer be trusted (%s); later batches go to a new file", self.path, why)
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def append_batch(self, records: Iterable[object], sync: Callable[[int], None] | None = None) -> int:
        """Append the records and sync once (``sync(fd)``, by default fdatasync of the log; or — when
        the caller makes the whole file system durable anyway — its ``syncfs``); the
        sequence number of the file they went to. Raises (OSError, ProtocolError,
        TypeError) if the batch is not durable, in which case none of it will be replayed
        — unless the file had to be abandoned, see the module documentation."""
        records = list(records)
        for rec in records:
            if not isinstance(rec, LOG_RECORD_TYPES):
                raise TypeError(f"{type(rec).__name__} does not belong in the incoming log")
        if not records:
            return self.sequence
        data = b"".join(pack_record(rec) for rec in records)
        with self._lock:
            if not self._opened:
                raise RuntimeError("IncomingLog.append_batch before open()")
            if self._fd is None:
                self._start()
            self._append(data, sync)
            return self.sequence

    def remove_files(self, sequences: Iterable[int]) -> None:
        """Remove old log files that :class:`LogFileUse` says are no longer needed, then
        sync the directory. Never the file being written. Call from the appending thread."""
        removed = False
        with self._lock:
            for sequence in sequences:
                if sequence >= self.sequence:
                    raise ValueError(f"log file {sequence} is not older than the current one")
                try:
                    os.unlink(self.layout.ibdb / log_file_name(sequence))
                    removed = True
                except FileNotFoundError:
                    pass
            if removed:
                fsync_directories([self.layout.ibdb])

    def rotate_if_needed(self) -> None:
        """If the current file is over ``max_file_size``: seal it with End, fdatasync, start
        the next. Call it after a successful :meth:`append_batch`, from the same thread.

        Never raises OSError: the batch before it is durable and must not be answered
        451 because of a rotation. A failure is logged and only concerns later batches —
        End not written: the file stays current and rotation is tried again next time;
        End not synced: the file is abandoned; next file not created: the next batch
        tries again and fails itself if the problem persists."""
        with self._lock:
            if self._fd is None or self._size <= self.max_file_size:
                return
            try:
                self._append(pack_record(IbdbEnd(self._size)))
                fd, self._fd = self._fd, None
                os.close(fd)
                self._start()
            except OSError as exc:
                log.error("rotating the incoming log %s: %s", self.path, exc)

    def close(self) -> None:
        """Close the file; it is continued by the next :meth:`open`."""
        with self._lock:
            fd, self._fd = self._fd, None
            self._opened = False
            if fd is not None:
                os.close(fd)
