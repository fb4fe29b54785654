"""The deferred envelope database (DEFEDB): transactions and recipients waiting for a retry.

Responsibilities
    Keep, durably, every transaction that has a recipient which could not be delivered at
    its first attempt (reference meta1.md §1.4 point 7, B57): its whole envelope, and per
    recipient the state, attempt count, next-try time, first-failure time and the last
    reply. qmgr changes it in batches from its group-commit worker thread
    (:meth:`DeferredDB.apply`: one SQL transaction, one fsync of the WAL), reads it all at
    start (:meth:`DeferredDB.load`), asks for due recipients (:meth:`DeferredDB.due`,
    :meth:`DeferredDB.next_due_time`) and counts for ``mailq``
    (:meth:`DeferredDB.counts`). :func:`open_defedb` opens or creates it, refuses a
    database of another schema version, and quarantines a damaged file.

Storage (spec/defedb.md has the schema)
    SQLite through the standard library (DESIGN.md: "DEFEDB is SQLite … WAL, synchronous
    writes"), at ``defedb/defedb.sqlite`` below the queue directory (:func:`defedb_path`).
    ``journal_mode=WAL``: a commit appends to the log and fsyncs it once, readers
    (``mailq``) never block the writer; ``synchronous=FULL``: a commit is durable when
    :meth:`~DeferredDB.apply` returns, so qmgr may forget what it applied (D-DEFEDB-2).
    ``foreign_keys=ON``: a recipient without its transaction cannot exist. The file is
    marked with ``application_id`` 0x4D314445 ("M1DE") and a ``schema_version`` table.

    SQLite's file format is the same on every architecture (big-endian integers, 64-bit
    INTEGER), so a queue written on x86_64 is read on i386; times are INTEGER
    microseconds, never ``time_t`` — the mistake MeTA1's Berkeley DB records made
    (reference meta1.md, "Alpha15"). Strings that hold octets which are not UTF-8 (the
    codec's surrogate escapes, spec/queue.md D-Q-9) are stored as BLOBs of those octets
    and come back as the same strings (D-DEFEDB-3).

Batches (group commit)
    :meth:`DeferredDB.apply` takes a sequence of changes — :class:`PutTransaction`,
    :class:`PutRecipient` (insert or replace by ``(ta_id, index)``),
    :class:`RemoveRecipient` (delivered, or bounced with its DSN safely queued) and
    :class:`RemoveTransaction` — applies them in order inside ``BEGIN IMMEDIATE …
    COMMIT``, then deletes every touched transaction that has no recipient left and is
    not held (the row keeps the hold), and returns those ids. Any error rolls the whole batch back
    and re-raises: a batch is all or nothing, also across ``kill -9`` (the tests SIGKILL a
    writer at random moments). After an I/O error (``SQLITE_IOERR*``, ``SQLITE_FULL``
    is not one) the instance refuses further writes: like IBDB after a failed fsync
    (fsyncgate, reliability.md R2), a connection that saw its writes fail is not trusted
    to know what is on disk; qmgr reopens (restart).

Damage (same policy as IBDB, :func:`meta1.queue.ibdb.quarantine`)
    A file SQLite calls corrupt or "not a database", or whose ``PRAGMA quick_check`` is
    not ``ok``, is moved to ``quarantine/`` together with its ``-wal`` and ``-shm`` files,
    each with a ``.why`` note, and a fresh empty database is created; the caller gets the
    quarantined paths to report. A well-formed database that is not a DEFEDB (other
    tables, no ``schema_version``) or has another version is *refused* with
    :class:`DefedbVersionError` and left alone: it may belong to a newer meta1, and
    destroying it would lose mail. ``read_only=True`` (``mailq``) never quarantines or
    creates anything; damage is :class:`DefedbDamaged` then.

Threads
    One :class:`DeferredDB` may be used from several threads (the connection is opened
    with ``check_same_thread=False``); an internal lock makes every call atomic. qmgr
    calls :meth:`~DeferredDB.apply` from its commit worker and the queries from wherever
    it likes; :meth:`~DeferredDB.load` is meant for start-up, before the worker runs.
"""

from __future__ import annotations

import enum
import logging
import os
import pathlib
import sqlite3
import threading
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator, Sequence, Union

from meta1.qmgr.dsn import MessageKind
from meta1.queue.cdb import fsync_directories
from meta1.queue.ibdb import quarantine
from meta1.queue.layout import QueueLayout

log = logging.getLogger("meta1.queue")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4D314445  # "M1DE"
DEFEDB_DIRECTORY = "defedb"
DEFEDB_FILE = "defedb.sqlite"
_WAL = "-wal"
_SHM = "-shm"  # SQLite's shared-memory index of the WAL: derived data, rebuilt from the WAL
_DAMAGE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_FETCH = 512


class DefedbError(Exception):
    """DEFEDB cannot be used."""


class DefedbVersionError(DefedbError):
    """The file is a database, but not a DEFEDB of the version this code knows."""


class DefedbDamaged(DefedbError):
    """The file is damaged (raised only where it is not quarantined: ``read_only``)."""


class RecipientState(enum.Enum):
    """Where a deferred recipient stands."""

    DEFERRED = "deferred"  # failed temporarily; retried at next_try
    FAILED = "failed"      # failed permanently or expired; its DSN is not yet queued


def defedb_path(layout: QueueLayout) -> pathlib.Path:
    """``<queue>/defedb/defedb.sqlite``."""
    return layout.root / DEFEDB_DIRECTORY / DEFEDB_FILE


@dataclass(frozen=True)
class DeferredTransaction:
    """A transaction's envelope as qmgr needs it after a restart: the fields of the IBDB
    :class:`~meta1.ipc.records.Transaction` (without the recipients), ``nrcpts`` (how many
    recipients it was accepted with), ``kind`` (for DSN decisions) and ``held``
    (``qmgrctl hold``). Times in microseconds since the epoch."""

    ta_id: str
    session_id: str
    arrival: int
    sender: str
    size: int
    body: str | None
    smtputf8: bool
    ret: str | None
    envid: str | None
    auth: str | None
    client_address: str
    client_port: int
    helo: str
    content: str
    nrcpts: int
    kind: MessageKind = MessageKind.ORIGINAL
    held: bool = False

    @classmethod
    def from_transaction(cls, transaction: Any, kind: MessageKind = MessageKind.ORIGINAL, *,
                         held: bool = False) -> DeferredTransaction:
        """From an IBDB Transaction record."""
        names = {f.name for f in fields(cls)} - {"nrcpts", "kind", "held"}
        return cls(**{name: getattr(transaction, name) for name in names},
                   nrcpts=len(transaction.recipients), kind=kind, held=held)


@dataclass(frozen=True)
class DeferredRecipient:
    """One recipient of a deferred transaction. ``index`` is its position in the
    transaction (the ``NNNN`` of its recipient id); ``notify``/``orcpt_type``/``orcpt`` are
    its RCPT parameters; ``attempts`` counts failed attempts; ``next_try``, ``first_fail``
    and ``last_attempt`` are µs; ``reply_code``/``status``/``reply_text`` are the last
    reply (``status`` its enhanced code), ``remote_mta`` who gave it; ``warned`` says a
    "delayed" DSN was sent."""

    ta_id: str
    index: int
    address: str
    notify: tuple[str, ...] | None
    orcpt_type: str | None
    orcpt: str | None
    state: RecipientState
    attempts: int
    next_try: int
    first_fail: int
    last_attempt: int | None = None
    reply_code: int | None = None
    status: str | None = None
    reply_text: str | None = None
    remote_mta: str | None = None
    warned: bool = False

    @property
    def rcpt_id(self) -> str:
        return f"{self.ta_id}-{self.index:04X}"


@dataclass(frozen=True)
class PutTransaction:
    """Insert the transaction, or replace its envelope (e.g. to set ``held``)."""

    transaction: DeferredTransaction


@dataclass(frozen=True)
class PutRecipient:
    """Insert the recipient, or replace it (a new attempt count, next try, reply …); its
    transaction must exist (in the database or earlier in the same batch)."""

    recipient: DeferredRecipient


@dataclass(frozen=True)
class RemoveRecipient:
    """The recipient is done (delivered, or bounced and its DSN queued)."""

    ta_id: str
    index: int


@dataclass(frozen=True)
class RemoveTransaction:
    """Remove the transaction and every recipient of it (``qmgrctl delete``)."""

    ta_id: str


Change = Union[PutTransaction, PutRecipient, RemoveRecipient, RemoveTransaction]


@dataclass(frozen=True)
class Counts:
    """For ``mailq``: transactions, recipients by state, held transactions, and the
    recipients due at the ``now`` given (0 when none was)."""

    transactions: int
    recipients: int
    deferred: int
    failed: int
    held: int
    due: int


# -- schema -------------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE transactions (
        ta_id TEXT PRIMARY KEY NOT NULL,
        session_id TEXT NOT NULL,
        arrival INTEGER NOT NULL,
        sender TEXT NOT NULL,
        size INTEGER NOT NULL,
        body TEXT,
        smtputf8 INTEGER NOT NULL,
        ret TEXT,
        envid TEXT,
        auth TEXT,
        client_address TEXT NOT NULL,
        client_port INTEGER NOT NULL,
        helo TEXT NOT NULL,
        content TEXT NOT NULL,
        nrcpts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        held INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE recipients (
        ta_id TEXT NOT NULL REFERENCES transactions(ta_id) ON DELETE CASCADE,
        "index" INTEGER NOT NULL,
        address TEXT NOT NULL,
        notify TEXT,
        orcpt_type TEXT,
        orcpt TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_try INTEGER NOT NULL,
        first_fail INTEGER NOT NULL,
        last_attempt INTEGER,
        reply_code INTEGER,
        status TEXT,
        reply_text TEXT,
        remote_mta TEXT,
        warned INTEGER NOT NULL,
        PRIMARY KEY (ta_id, "index")
    ) WITHOUT ROWID""",
    "CREATE INDEX recipients_by_next_try ON recipients (state, next_try)",
)
_TRANSACTION_COLUMNS = tuple(f.name for f in fields(DeferredTransaction))
_RECIPIENT_COLUMNS = tuple(f.name for f in fields(DeferredRecipient))


def _upsert(table: str, columns: Sequence[str], keys: Sequence[str]) -> str:
    quoted = [f'"{c}"' for c in columns]
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in keys)
    key_list = ", ".join(f'"{k}"' for k in keys)
    return (f"INSERT INTO {table} ({', '.join(quoted)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({key_list}) DO UPDATE SET {updates}")


_PUT_TRANSACTION = _upsert("transactions", _TRANSACTION_COLUMNS, ("ta_id",))
_PUT_RECIPIENT = _upsert("recipients", _RECIPIENT_COLUMNS, ("ta_id", "index"))
# A deferred recipient of a transaction that is not held; with next_try: one that is due.
_WAITING = "state = ? AND ta_id IN (SELECT ta_id FROM transactions WHERE held = 0)"
_DUE = f"{_WAITING} AND next_try <= ?"
_SELECT_TRANSACTIONS = f"SELECT {', '.join(_TRANSACTION_COLUMNS)} FROM transactions"
_SELECT_RECIPIENTS = f"SELECT {', '.join(chr(34) + c + chr(34) for c in _RECIPIENT_COLUMNS)} FROM recipients"


# -- values in and out ----------------------------------------------------------------------------

def _text_in(value: str) -> str | bytes:
    """A str as SQLite can store it: itself, or its octets when it holds surrogate escapes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def _text_out(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _to_row(record: DeferredTransaction | DeferredRecipient) -> list[Any]:
    row: list[Any] = []
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        elif isinstance(value, tuple):
            value = ",".join(value)
        if isinstance(value, str):
            value = _text_in(value)
        row.append(value)
    return row


def _transaction_from_row(row: Sequence[Any]) -> DeferredTransaction:
    values = dict(zip(_TRANSACTION_COLUMNS, row))
    for name, value in values.items():
        if isinstance(value, bytes):
            values[name] = _text_out(value)
    values["smtputf8"] = bool(values["smtputf8"])
    values["held"] = bool(values["held"])
    values["kind"] = MessageKind(values["kind"])
    return DeferredTransaction(**values)


def _recipient_from_row(row: Sequence[Any]) -> DeferredRecipient:
    values = dict(zip(_RECIPIENT_COLUMNS, row))
    for name, value in values.items():
        if isinstance(value, bytes):
            values[name] = _text_out(value)
    values["notify"] = None if values["notify"] is None else tuple(values["notify"].split(","))
    values["state"] = RecipientState(values["state"])
    values["warned"] = bool(values["warned"])
    return DeferredRecipient(**values)


# -- the database ---------------------------------------------------------------------------------

def _is_damage(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_DAMAGE_CODES) or "not a database" in str(exc) or "malformed" in str(exc)


def _is_io_error(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_IOERR")


class DeferredDB:
    """An open DEFEDB; made by :func:`open_defedb`."""

    def __init__(self, connection: sqlite3.Connection, path: pathlib.Path, read_only: bool):
        self._db = connection
        self.path = path
        self.read_only = read_only
        self._lock = threading.Lock()
        self._broken: str | None = None

    # writing

    def apply(self, changes: Iterable[Change]) -> tuple[str, ...]:
        """Apply ``changes`` in order in one durable SQL transaction; the ids of the
        transactions removed (explicitly, or because no recipient of them is left).
        All or nothing: on any exception nothing of the batch is stored."""
        changes = tuple(changes)
        with self._lock:
            if self.read_only:
                raise DefedbError(f"{self.path}: opened read-only")
            if self._broken is not None:
                raise DefedbError(f"{self.path}: not written after an I/O error ({self._broken}); reopen")
            cursor = self._db.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                removed = self._apply(cursor, changes)
                cursor.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    try:
                        self._db.rollback()
                    except sqlite3.Error as rollback_error:
                        log.warning("%s: rollback failed: %s", self.path, rollback_error)
                if isinstance(exc, sqlite3.Error) and _is_io_error(exc):
                    self._broken = str(exc)
                raise
            finally:
                cursor.close()
        return removed

    @staticmethod
    def _apply(cursor: sqlite3.Cursor, changes: Sequence[Change]) -> tuple[str, ...]:
        touched: dict[str, None] = {}
        removed: dict[str, None] = {}
        for change in changes:
            if isinstance(change, PutTransaction):
                cursor.execute(_PUT_TRANSACTION, _to_row(change.transaction))
                removed.pop(change.transaction.ta_id, None)
            elif isinstance(change, PutRecipient):
                cursor.execute(_PUT_RECIPIENT, _to_row(change.recipient))
            elif isinstance(change, RemoveRecipient):
                cursor.execute('DELETE FROM recipients WHERE ta_id = ? AND "index" = ?', (change.ta_id, change.index))
                touched[change.ta_id] = None
            elif isinstance(change, RemoveTransaction):
                cursor.execute("DELETE FROM transactions WHERE ta_id = ?", (change.ta_id,))
                if cursor.rowcount:
                    removed[change.ta_id] = None
            else:
                raise TypeError(f"not a DEFEDB change: {change!r}")
        for ta_id in touched:
            cursor.execute("SELECT 1 FROM recipients WHERE ta_id = ? LIMIT 1", (ta_id,))
            if cursor.fetchone() is None:
                # A held transaction stays: its row is where the hold is kept.
                cursor.execute("DELETE FROM transactions WHERE ta_id = ? AND held = 0", (ta_id,))
                if cursor.rowcount:
                    removed[ta_id] = None
        return tuple(removed)

    # reading

    def load(self) -> Iterator[tuple[DeferredTransaction, tuple[DeferredRecipient, ...]]]:
        """Every transaction with its recipients (in index order), in ta_id order; streamed,
        so memory holds one transaction's recipients at a time plus a fetch buffer."""
        with self._lock:
            transactions = self._db.execute(f"{_SELECT_TRANSACTIONS} ORDER BY ta_id")
            recipients = self._db.execute(f'{_SELECT_RECIPIENTS} ORDER BY ta_id, "index"')
        pending = self._rows(recipients, _recipient_from_row)
        following = next(pending, None)
        for transaction in self._rows(transactions, _transaction_from_row):
            own = []
            while following is not None and following.ta_id <= transaction.ta_id:
                if following.ta_id == transaction.ta_id:
                    own.append(following)
                following = next(pending, None)
            yield transaction, tuple(own)

    def _rows(self, cursor: sqlite3.Cursor, convert) -> Iterator[Any]:
        while True:
            with self._lock:
                rows = cursor.fetchmany(_FETCH)
            if not rows:
                return
            yield from map(convert, rows)

    def transaction(self, ta_id: str) -> DeferredTransaction | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT_TRANSACTIONS} WHERE ta_id = ?", (ta_id,)).fetchone()
        return None if row is None else _transaction_from_row(row)

    def recipients(self, ta_id: str) -> tuple[DeferredRecipient, ...]:
        with self._lock:
            rows = self._db.execute(f'{_SELECT_RECIPIENTS} WHERE ta_id = ? ORDER BY "index"', (ta_id,)).fetchall()
        return tuple(map(_recipient_from_row, rows))

    def due(self, now: int, limit: int | None = None) -> list[DeferredRecipient]:
        """Deferred recipients of transactions not held whose next try is at or before
        ``now``, earliest first (at most ``limit``)."""
        query = f'{_SELECT_RECIPIENTS} WHERE {_DUE} ORDER BY next_try, ta_id, "index" LIMIT ?'
        with self._lock:
            rows = self._db.execute(query, (RecipientState.DEFERRED.value, now,
                                            -1 if limit is None else limit)).fetchall()
        return [_recipient_from_row(row) for row in rows]

    def next_due_time(self) -> int | None:
        """The earliest next try of a deferred recipient of a transaction not held."""
        with self._lock:
            row = self._db.execute(f"SELECT min(next_try) FROM recipients WHERE {_WAITING}",
                                   (RecipientState.DEFERRED.value,)).fetchone()
        return row[0]

    def counts(self, now: int | None = None) -> Counts:
        with self._lock:
            transactions, held = self._db.execute(
                "SELECT count(*), coalesce(sum(held), 0) FROM transactions").fetchone()
            by_state = dict(self._db.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())
            due = 0 if now is None else self._db.execute(f"SELECT count(*) FROM recipients WHERE {_DUE}",
                                                         (RecipientState.DEFERRED.value, now)).fetchone()[0]
        deferred = by_state.get(RecipientState.DEFERRED.value, 0)
        failed = by_state.get(RecipientState.FAILED.value, 0)
        return Counts(transactions, deferred + failed, deferred, failed, held, due)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeferredDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- opening --------------------------------------------------------------------------------------

def _connect(path: pathlib.Path, read_only: bool) -> sqlite3.Connection:
    if read_only:
        uri = f"{pathlib.Path(path).resolve().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    return sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)


def _inspect(connection: sqlite3.Connection, path: pathlib.Path) -> bool:
    """Check the file through ``connection``; True if it holds no table yet (new). sqlite3
    errors for damage, DefedbVersionError for a foreign or newer database."""
    result = connection.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {result}")
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return True
    if "schema_version" not in tables:
        raise DefedbVersionError(f"{path} is an SQLite database but not a DEFEDB (no schema_version table); "
                                 f"refusing to use it")
    versions = [v for (v,) in connection.execute("SELECT version FROM schema_version")]
    if versions != [SCHEMA_VERSION]:
        raise DefedbVersionError(f"{path} has DEFEDB schema version {versions}, this meta1 knows only "
                                 f"{SCHEMA_VERSION}; refusing to use it (was it written by another meta1 version?)")
    return False


def _open_checked(path: pathlib.Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` that passed :func:`_inspect`; DefedbDamaged for damage.

    Checking read-only first matters: a writable connection that SQLite finds damaged
    deletes the ``-wal`` file when it is closed, which would destroy the newest commits
    before they could be quarantined."""
    connection = _connect(path, read_only=True)
    try:
        _inspect(connection, path)
    except sqlite3.DatabaseError as exc:
        connection.close()
        if _is_damage(exc):
            raise DefedbDamaged(f"{path}: {exc}") from exc
        raise
    except BaseException:
        connection.close()
        raise
    return connection


def _create(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise


def _quarantine_files(layout: QueueLayout, path: pathlib.Path, reason: str,
                      now: int | None) -> list[pathlib.Path]:
    """Move the database and its WAL (which holds the newest commits) to quarantine; remove
    the ``-shm`` index, which describes the moved WAL and must not meet a new one."""
    moved = [quarantine(layout, path, reason, now=now)]
    wal = pathlib.Path(f"{path}{_WAL}")
    if os.path.lexists(wal) and os.lstat(wal).st_size > 0:  # an empty one holds nothing
        moved.append(quarantine(layout, wal, reason, now=now))
    for leftover in (wal, pathlib.Path(f"{path}{_SHM}")):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    return moved


def _open_writable(path: pathlib.Path) -> sqlite3.Connection:
    existed = path.exists()
    connection = _connect(path, read_only=False)
    try:
        connection.execute("PRAGMA journal_mode = WAL").fetchone()
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        if _inspect(connection, path):
            _create(connection)
        if not existed:  # the new file's name must survive a crash (SQLite syncs the WAL's itself)
            fsync_directories([path.parent])
    except BaseException:
        connection.close()
        raise
    return connection


def open_defedb(layout: QueueLayout, *, path: pathlib.Path | None = None, read_only: bool = False,
                now: int | None = None) -> tuple[DeferredDB, list[pathlib.Path]]:
    """Open (or create) the DEFEDB of ``layout`` (``path`` overrides where); the database
    and the paths of what was quarantined (empty unless the old file was damaged).

    DefedbVersionError for a database of another version or another program (never
    quarantined); with ``read_only``, DefedbDamaged for damage and sqlite3 errors (e.g. no
    file) as they come. ``now`` (µs) dates quarantine notes."""
    path = pathlib.Path(path) if path is not None else defedb_path(layout)
    if read_only:
        return DeferredDB(_open_checked(path), path, read_only=True), []
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    quarantined: list[pathlib.Path] = []
    if path.exists():
        try:
            _open_checked(path).close()
        except DefedbDamaged as damage:
            reason = f"DEFEDB damaged: {damage.__cause__}"
            log.error("%s: %s; moving it to quarantine and starting an empty DEFEDB", path, reason)
            quarantined = _quarantine_files(layout, path, reason, now)
    return DeferredDB(_open_writable(path), path, read_only=False), quarantined
