"""qmgr, the queue manager daemon: the IBDB log, group commit, replay at start.

Responsibilities (this version: the receive half of DESIGN.md's message life)
    * Own the envelope state. smtps sends each finished transaction as one ``Commit``
      record (its content file written and closed, not synced); qmgr makes the content
      durable, then appends the envelope to the incoming log (IBDB), and answers
      ``CommitResult`` only after both are on stable storage (D-RCV-1).
    * Group commit (DESIGN.md, "Speed comes from the same places as safety"): records
      that arrive while a flush is running wait, and the next flush — started the moment
      the previous one ends, with no timer — writes all their envelopes to IBDB and makes
      them, their content files and the files' names durable with one ``syncfs`` of the
      queue file system (``content_sync = filesystem``, D-RCV-6), or syncs the content
      files and their directories first and the IBDB append after (``files``).
      Every 250 waits only for the flush that covers it. Measured by
      ``benchmarks/accept_rate.py``.
    * On start: take the queue lock (one qmgr per queue, reliability T55), replay IBDB
      (a torn last record is cut off, a damaged file is quarantined, transactions whose
      content is missing are reported), and hold the result as the incoming queue.
      Content files no transaction refers to are removed once they are older than
      ``ORPHAN_GRACE`` (a crash of smtps between writing content and committing leaves
      them; the grace keeps a file that smtps is about to commit).
    * Refuse nothing silently: an append that fails answers ``ok=False`` to every
      transaction of that batch (smtps answers 451 4.3.0), and the next batch is tried
      again — disk-full is transient (reliability T57).

Delivery (the scheduler, smar, smtpc, DEFEDB, DSNs) is :mod:`meta1.qmgr.delivery`; the
operator's control socket (``meta1 qmgrctl``) is :mod:`meta1.qmgr.control`.
"""

from __future__ import annotations

import fcntl
from concurrent.futures import ThreadPoolExecutor
import logging
import os
import signal
import stat
import time

from meta1.ids import ID_PATTERN
from meta1.eventloop import EventLoop, GroupCommit, WorkerPool
from meta1.ipc.records import Commit, CommitResult, PolicyCheck, Transaction
from meta1.qmgr.control import ControlServer
from meta1.qmgr.delivery import DeliveryManager
from meta1.queue.cdb import syncfs
from meta1.queue.ibdb import IncomingLog, LogFileUse, replay
from meta1.queue.layout import QueueLayout
from meta1.runtime.link import LinkServer, RecordLink
from meta1.runtime.process import announce_ready, run_loop

log = logging.getLogger("meta1.qmgr")

ORPHAN_GRACE = 3600.0
SYNC_THREADS = 8


class QueueLocked(Exception):
    """Another qmgr holds this queue."""


class QueueManager:
    def __init__(self, config, *, loop: EventLoop | None = None):
        self.config = config
        self.loop = loop or EventLoop()
        self.layout = QueueLayout(config.queue_directory, config.cdb_base_directory)
        self.layout.ensure()
        self.lock_fd = self._lock()
        self.incoming: dict[str, Transaction] = {}
        self.pool = WorkerPool(self.loop, threads=1, name="ibdb")
        self.ibdb = IncomingLog(self.layout, max_file_size=config.qmgr.IBDB_file_size)
        self.log_use = LogFileUse()
        self.commits: GroupCommit[Transaction] = GroupCommit(self.pool, self._flush, name="ibdb")
        self.failed: dict[str, str] = {}
        self.syncers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="qmgr-sync")
        self.sync_filesystem = config.qmgr.content_sync == "filesystem"
        if self.sync_filesystem and syncfs is None:
            log.warning("content_sync = filesystem: no syncfs(2) here; syncing file by file")
            self.sync_filesystem = False
        self.root_fd = os.open(self.layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.directory_fds: dict[str, int] = {}
        self.smtps = LinkServer(self.loop, self.layout.smtps_socket, role="qmgr", peer_role="smtps",
                                on_record=self._record,
                                on_lost=lambda link, exc: self.delivery.policy.smtps_lost(link))
        self.stopping = False
        self.replayed = None
        self.delivery = DeliveryManager(self, config)
        self.control = ControlServer(self)  # meta1 qmgrctl

    def _lock(self) -> int:
        fd = os.open(self.layout.qmgr_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise QueueLocked(f"another qmgr is running on {self.layout.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    # -- start: replay ---------------------------------------------------------------------

    def recover(self) -> None:
        result = self.replayed = replay(self.layout)
        self.incoming = dict(result.transactions)
        for sequence in result.files:
            self.log_use.file(sequence)
        for ta_id, sequence in result.file_of.items():
            self.log_use.logged(ta_id, sequence)
        for path, why in result.quarantined:
            log.error("quarantined %s: %s", path, why)
        for ta_id in result.missing_content:
            # With content_sync = filesystem the envelope and its content become durable
            # in the same syncfs (D-RCV-6): after a power cut during that flush, the
            # envelope may be on disk and the content not — a message never answered 250.
            log.error("%s: content file missing or damaged; envelope not queued (a message whose commit a "
                      "crash interrupted never got its 250; otherwise its content was damaged on disk)", ta_id)
        if result.torn_tail:
            log.warning("IBDB: a torn last record (an unacknowledged append) was cut off")
        nrcpts = sum(len(t.recipients) for t in self.incoming.values())
        log.info("recovered %d transactions with %d recipients from IBDB", len(self.incoming), nrcpts)
        self._collect_orphans()
        self.ibdb.open()

    def _collect_orphans(self) -> None:
        referenced = {t.content for t in self.incoming.values()}
        now = time.time()
        removed = 0
        for directory in sorted(self.layout.cdb.iterdir()):
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                relpath = self.layout.content_relpath(path.name) if ID_PATTERN.match(path.name) else None
                if relpath in referenced:
                    continue
                try:
                    if now - path.stat().st_mtime < ORPHAN_GRACE:
                        continue
                    path.unlink()
                    removed += 1
                    log.info("removed orphaned content file %s (no transaction refers to it)", path)
                except FileNotFoundError:
                    pass
        if removed:
            log.info("removed %d orphaned content files", removed)

    # -- commits -------------------------------------------------------------------------------

    def _flush(self, batch: list[Transaction]) -> None:
        """In the worker thread: one batch's content, names and envelopes made durable.

        ``content_sync = filesystem`` (the default): the envelopes are appended to IBDB
        and one ``syncfs`` of the queue file system makes them, every content file of the
        batch and its directory entry durable at once — one journal commit per batch
        (D-RCV-6; measured here, 0.5 ms and 0.06 ms of CPU for ten 5 KB files, against 0.9
        ms and 0.5 ms of CPU for concurrent per-file syncs, and half the commit latency of
        a content flush followed by an IBDB flush). ``content_sync = files``: the content
        files' ``fdatasync``s run concurrently (the file system merges them into shared
        journal commits), then each directory that got a new file is synced once, then the
        IBDB append is written and synced. A transaction whose
        content cannot be synced (missing, not where its id says, an I/O error on its own
        file) fails alone: it is left out of the IBDB append and noted in ``self.failed``
        for its completion to report; the others go on. A failed ``syncfs`` fails the
        whole batch (it cannot say which file it was).
        """
        check = self._check_content if self.sync_filesystem else self._sync_content
        transactions = [item for item in batch if isinstance(item, Transaction)]
        outcomes = (list(map(check, transactions)) if self.sync_filesystem
                    else list(self.syncers.map(check, transactions)))
        failures = {t.ta_id: failure for t, failure in zip(transactions, outcomes) if failure is not None}
        self.failed.update(failures)
        # Done records (RecipientsDone) need no content; they keep their place in the batch.
        durable = [item for item in batch if not isinstance(item, Transaction) or item.ta_id not in failures]
        directories = {os.path.dirname(t.content) for t in transactions if t.ta_id not in failures}
        if not durable:
            return
        if self.sync_filesystem:
            # One flush for everything: the log records are written first, then one
            # syncfs makes them, the content files and their names durable together.
            sequence = self.ibdb.append_batch(durable, sync=lambda _fd: syncfs(self.root_fd))
        else:
            for _ in self.syncers.map(self._sync_directory, sorted(directories)):
                pass
            sequence = self.ibdb.append_batch(durable)
        logged = [item.ta_id for item in durable if isinstance(item, Transaction)]
        # Before the batch's completions run (both go through the loop in this order).
        self.loop.call_soon_threadsafe(lambda: self._logged(logged, sequence))
        self.ibdb.rotate_if_needed()

    def _logged(self, ta_ids: list[str], sequence: int) -> None:
        for ta_id in ta_ids:
            self.log_use.logged(ta_id, sequence)

    def transaction_complete(self, ta_id: str) -> None:
        """Every recipient of ``ta_id`` is done and durable: old log files may go."""
        self.log_use.completed(ta_id)
        removable = self.log_use.removable(self.ibdb.sequence)
        if removable:
            log.info("removing incoming-log files %s: every transaction in them is complete",
                     ", ".join(map(str, removable)))
            self.pool.submit(lambda: self.ibdb.remove_files(removable),
                             lambda _result, exc: exc and log.error("removing log files: %s", exc))

    def _check_content(self, transaction: Transaction) -> str | None:
        """The content file is where the id says, a regular file (syncfs syncs it)."""
        if transaction.content != self.layout.content_relpath(transaction.ta_id):
            return f"content path {transaction.content!r} does not match the id"
        try:
            mode = os.lstat(self.layout.root / transaction.content).st_mode
        except OSError as error:
            return f"content file: {error.strerror or error}"
        return None if stat.S_ISREG(mode) else "content file is not a regular file"

    def _sync_directory(self, directory: str) -> None:
        fd = self.directory_fds.get(directory)
        if fd is None:
            fd = os.open(self.layout.root / directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fd = self.directory_fds.setdefault(directory, fd)
        os.fsync(fd)

    def _sync_content(self, transaction: Transaction) -> str | None:
        """fdatasync one content file; None, or why it failed."""
        # The path comes from smtps: it must be exactly where the id says (no "..",
        # no symlink), so qmgr never syncs — or later reads — a file of someone else's.
        if transaction.content != self.layout.content_relpath(transaction.ta_id):
            return f"content path {transaction.content!r} does not match the id"
        try:
            fd = os.open(self.layout.root / transaction.content,
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            return f"content file: {error.strerror or error}"
        return None

    def _record(self, link: RecordLink, record: object) -> None:
        if isinstance(record, PolicyCheck):
            self.delivery.policy.check(link, record)
            return
        if not isinstance(record, Commit):
            log.error("unexpected record %s from smtps; closing the link", type(record).__name__)
            link.close()
            return
        transaction = record.transaction
        if not transaction.recipients:
            link.send(CommitResult(ta_id=transaction.ta_id, ok=False, reason="no recipients"))
            return

        def done(exc: BaseException | None) -> None:
            if self.stopping:
                self.loop.call_soon(self._stop_when_flushed)
            failure = self.failed.pop(transaction.ta_id, None)
            if exc is None and failure is not None:
                log.error("%s: not queued: %s", transaction.ta_id, failure)
                link.send(CommitResult(ta_id=transaction.ta_id, ok=False, reason=failure))
            elif exc is None:
                self.incoming[transaction.ta_id] = transaction
                log.info("%s: queued from=<%s> size=%d nrcpts=%d", transaction.ta_id,
                         transaction.sender, transaction.size, len(transaction.recipients))
                link.send(CommitResult(ta_id=transaction.ta_id, ok=True, reason=""))
                self.delivery.arrived(transaction)
            else:
                log.error("%s: IBDB append failed: %s", transaction.ta_id, exc)
                link.send(CommitResult(ta_id=transaction.ta_id, ok=False,
                                       reason=f"IBDB append failed: {exc}"))

        self.commits.request(transaction, done)

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self.smtps.start()
        self.delivery.start()
        self.control.start()
        self.delivery.replay(self.incoming, self.replayed.done, self.replayed.completed)
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_signal_handler(signal.SIGINT, self.shutdown)
        announce_ready(log, "%d messages in the queue; smtps socket %s", len(self.incoming),
                       self.layout.smtps_socket)

    def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down")
        self.smtps.stop_listening()
        self.control.stop()
        self.delivery.stop()
        self._stop_when_flushed()

    def _stop_when_flushed(self) -> None:
        # Answers for commits already flushed must still reach smtps; a batch in flight
        # finishes (it is on its way to disk either way).
        # Called at shutdown and after every commit answered while stopping.
        if self.commits.in_flight or self.commits.waiting:
            return
        self.smtps.close()
        self.loop.call_soon(self.loop.stop)

    def run(self) -> None:
        self.start()
        run_loop(self.loop, self._close, log)

    def _close(self) -> None:
        self.pool.shutdown(wait=True)
        self.syncers.shutdown(wait=True)
        self.delivery.close()
        self.ibdb.close()
        for fd in self.directory_fds.values():
            os.close(fd)
        os.close(self.root_fd)
        os.close(self.lock_fd)


def serve(config) -> int:
    manager = QueueManager(config)
    manager.run()
    return 0
