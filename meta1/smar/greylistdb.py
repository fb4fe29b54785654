"""The greylisting store of smar: the triplets on SQLite, for the pure greylisting core.

Responsibilities
    :class:`SqliteGreylistStore` implements :class:`meta1.policy.greylist.GreylistStore`
    (``get``, ``put``, ``delete``, ``entries``) in the file named by ``greylisting {
    database }`` (relative to the queue directory). ``meta1 greyprint`` and ``meta1
    greyrm`` open the same file.

Durability (D-POL-20)
    WAL with ``synchronous = NORMAL``: a commit is a write to the log, not an fsync, so a
    greylisting decision costs smar's loop tens of microseconds. A power cut may forget
    the last triplets: their clients are greylisted once more — a delay, never a loss of
    mail, and no accepting decision can come from a lost write.
"""

from __future__ import annotations

import sqlite3
from typing import Iterator

from meta1.policy.greylist import Entry, State, Triplet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    network TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
    state TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    attempts INTEGER NOT NULL, passed_at INTEGER,
    PRIMARY KEY (network, sender, recipient)
)"""


class SqliteGreylistStore:
    """See the module docstring."""

    def __init__(self, path: str, *, read_only: bool = False):
        uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
        if not read_only:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute(_SCHEMA)

    def get(self, key: Triplet) -> Entry | None:
        row = self.db.execute("SELECT state, first_seen, last_seen, attempts, passed_at FROM triplets "
                              "WHERE network = ? AND sender = ? AND recipient = ?", (key.network, key.sender, key.recipient)).fetchone()
        return None if row is None else Entry(State[row[0]], row[1], row[2], row[3], row[4])

    def put(self, key: Triplet, entry: Entry) -> None:
        self.db.execute("INSERT OR REPLACE INTO triplets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (key.network, key.sender, key.recipient, entry.state.name, entry.first_seen, entry.last_seen, entry.attempts,
                         entry.passed_at))

    def delete(self, key: Triplet) -> bool:
        cursor = self.db.execute("DELETE FROM triplets WHERE network = ? AND sender = ? AND recipient = ?",
                                 (key.network, key.sender, key.recipient))
        return cursor.rowcount > 0

    def entries(self) -> Iterator[tuple[Triplet, Entry]]:
        rows = self.db.execute("SELECT network, sender, recipient, state, first_seen, last_seen, attempts, "
                               "passed_at FROM triplets ORDER BY network, sender, recipient").fetchall()
        for row in rows:
            yield Triplet(*row[:3]), Entry(State[row[3]], row[4], row[5], row[6], row[7])

    def close(self) -> None:
        self.db.close()
