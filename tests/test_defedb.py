"""DEFEDB (meta1/queue/defedb.py): round trips, batches, queries, versions, damage."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.qmgr.dsn import MessageKind
from meta1.queue.defedb import (SCHEMA_VERSION, Counts, DefedbDamaged, DefedbError, DefedbVersionError,
                                DeferredRecipient, DeferredTransaction, PutRecipient, PutTransaction,
                                RecipientState, RemoveRecipient, RemoveTransaction, defedb_path, open_defedb)
from test_queue_support import AFTER_2038_US, make_queue, store, ta_id

MINUTE = 60 * 10**6


def envelope(n: int, nrcpts: int = 2, **changes) -> DeferredTransaction:
    ta = DeferredTransaction(
        ta_id=ta_id(n), session_id=ta_id(0), arrival=AFTER_2038_US + n, sender=f"sender{n}@example.org",
        size=1234, body="8BITMIME", smtputf8=False, ret="HDRS", envid="env+id", auth=None,
        client_address="192.0.2.1", client_port=40000 + n, helo="client.example",
        content=f"cdb/0/{ta_id(n)}", nrcpts=nrcpts)
    return dataclasses.replace(ta, **changes)


def recipient(n: int, index: int, **changes) -> DeferredRecipient:
    rcpt = DeferredRecipient(
        ta_id=ta_id(n), index=index, address=f"rcpt{index}@example.net", notify=("SUCCESS", "FAILURE"),
        orcpt_type="RFC822", orcpt=f"orig{index}@example.net", state=RecipientState.DEFERRED, attempts=1,
        next_try=AFTER_2038_US + 5 * MINUTE + index, first_fail=AFTER_2038_US, last_attempt=AFTER_2038_US,
        reply_code=451, status="4.3.0", reply_text="451 4.3.0 try later", remote_mta="mx.example.net")
    return dataclasses.replace(rcpt, **changes)


def put(n: int, nrcpts: int = 2, **changes) -> list:
    return [PutTransaction(envelope(n, nrcpts, **changes))] + [PutRecipient(recipient(n, i)) for i in range(nrcpts)]


@pytest.fixture
def queue(tmp_path: pathlib.Path):
    return make_queue(tmp_path)


@pytest.fixture
def db(queue):
    database, quarantined = open_defedb(queue)
    assert quarantined == []
    yield database
    database.close()


def test_a_new_database_is_created_in_wal_mode_with_its_version(queue) -> None:
    database, _ = open_defedb(queue)
    database.close()
    path = defedb_path(queue)
    assert path == queue.root / "defedb" / "defedb.sqlite"
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA application_id").fetchone()[0] == 0x4D314445
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()


def test_everything_round_trips_including_times_after_2038(db, queue) -> None:
    far = 2**62  # year ~146,000: SQLite's 64-bit INTEGER holds it on every architecture
    changes = put(1) + put(2, nrcpts=1, held=True, kind=MessageKind.DSN, sender="", envid=None, ret=None)
    changes.append(PutRecipient(recipient(2, 0, next_try=far, notify=None, orcpt_type=None, orcpt=None,
                                          last_attempt=None, reply_code=None, status=None, reply_text=None,
                                          remote_mta=None, warned=True, state=RecipientState.FAILED)))
    assert db.apply(changes) == ()
    db.close()
    reopened, quarantined = open_defedb(queue)
    assert quarantined == []
    loaded = list(reopened.load())
    assert [ta for ta, _ in loaded] == [envelope(1), envelope(2, 1, held=True, kind=MessageKind.DSN, sender="",
                                                                 envid=None, ret=None)]
    assert loaded[0][1] == (recipient(1, 0), recipient(1, 1))
    assert loaded[1][1][0].next_try == far and loaded[1][1][0].warned and loaded[1][1][0].notify is None
    assert reopened.transaction(ta_id(1)) == envelope(1)
    assert reopened.recipients(ta_id(1)) == (recipient(1, 0), recipient(1, 1))
    assert reopened.transaction(ta_id(9)) is None
    reopened.close()


def test_a_recipient_id_is_the_transaction_id_and_the_index() -> None:
    assert recipient(3, 10).rcpt_id == f"{ta_id(3)}-000A"


def test_from_transaction_takes_the_ibdb_envelope(queue) -> None:
    transaction = store(queue, 7, recipients=3)
    deferred = DeferredTransaction.from_transaction(transaction, MessageKind.DSN)
    assert (deferred.ta_id, deferred.sender, deferred.arrival, deferred.content) == (
        transaction.ta_id, transaction.sender, transaction.arrival, transaction.content)
    assert deferred.nrcpts == 3 and deferred.kind is MessageKind.DSN and not deferred.held


def test_octets_that_are_not_utf8_survive(db) -> None:
    odd = "caf\udce9@example.net"  # the codec's surrogate escape of the octet 0xE9
    db.apply([PutTransaction(envelope(1, 1, sender=odd, helo="h\udcff")),
              PutRecipient(recipient(1, 0, address=odd, reply_text="550 \udc80"))])
    (ta, rcpts), = db.load()
    assert ta.sender == odd and ta.helo == "h\udcff"
    assert rcpts[0].address == odd and rcpts[0].reply_text == "550 \udc80"


def test_updates_replace_a_recipient(db) -> None:
    db.apply(put(1))
    later = recipient(1, 0, attempts=2, next_try=AFTER_2038_US + 10 * MINUTE, reply_text="452 full")
    db.apply([PutRecipient(later)])
    assert db.recipients(ta_id(1))[0] == later
    db.apply([PutTransaction(envelope(1, held=True))])
    assert db.transaction(ta_id(1)).held and len(db.recipients(ta_id(1))) == 2  # recipients kept


def test_the_last_recipient_removed_removes_its_transaction(db) -> None:
    db.apply(put(1) + put(2))
    assert db.apply([RemoveRecipient(ta_id(1), 0)]) == ()
    assert db.apply([RemoveRecipient(ta_id(1), 1), RemoveRecipient(ta_id(2), 0)]) == (ta_id(1),)
    assert db.transaction(ta_id(1)) is None and db.recipients(ta_id(1)) == ()
    assert db.apply([RemoveTransaction(ta_id(2))]) == (ta_id(2),)  # with its recipients
    assert list(db.load()) == []
    assert db.apply([RemoveTransaction(ta_id(2)), RemoveRecipient(ta_id(3), 0)]) == ()  # gone already: no-ops


def test_a_held_transaction_stays_without_recipients(db) -> None:
    """The row keeps the hold (qmgrctl hold): removing its last recipient leaves it;
    only RemoveTransaction ends it."""
    db.apply([PutTransaction(envelope(1, nrcpts=1, held=True)), PutRecipient(recipient(1, 0))])
    assert db.apply([RemoveRecipient(ta_id(1), 0)]) == ()
    assert db.transaction(ta_id(1)).held and db.recipients(ta_id(1)) == ()
    assert db.apply([RemoveTransaction(ta_id(1))]) == (ta_id(1),)


def test_a_transaction_removed_with_its_last_recipient_is_written_again_with_the_next(db) -> None:
    """qmgr writes the envelope with every deferral: a recipient deferred after its
    sibling's delivery removed the transaction row still has its transaction."""
    db.apply(put(1, nrcpts=2)[:2])
    assert db.apply([RemoveRecipient(ta_id(1), 0)]) == (ta_id(1),)
    db.apply([PutTransaction(envelope(1, nrcpts=2)), PutRecipient(recipient(1, 1))])
    [(ta, rcpts)] = db.load()
    assert ta.ta_id == ta_id(1) and [r.index for r in rcpts] == [1]


def test_a_transaction_emptied_and_refilled_in_one_batch_stays(db) -> None:
    db.apply(put(1, nrcpts=1))
    assert db.apply([RemoveRecipient(ta_id(1), 0), PutRecipient(recipient(1, 1))]) == ()
    assert [r.index for r in db.recipients(ta_id(1))] == [1]


@pytest.mark.parametrize("bad", [
    PutRecipient(recipient(9, 0)),                       # its transaction does not exist
    PutRecipient(recipient(1, 5, attempts=2**64)),       # not a 64-bit integer
    "not a change",
])
def test_a_failing_change_rolls_back_the_whole_batch(db, bad) -> None:
    db.apply(put(1))
    before = list(db.load())
    with pytest.raises((sqlite3.Error, OverflowError, TypeError)):
        db.apply(put(2) + [RemoveRecipient(ta_id(1), 0), bad])
    assert list(db.load()) == before
    db.apply(put(3))  # and the database goes on working
    assert [ta.ta_id for ta, _ in db.load()] == [ta_id(1), ta_id(3)]


def test_due_recipients_come_earliest_first_and_never_from_held_transactions(db) -> None:
    db.apply(put(1) + put(2) + put(3, held=True))
    db.apply([PutRecipient(recipient(2, 1, next_try=AFTER_2038_US)),
              PutRecipient(recipient(1, 1, state=RecipientState.FAILED, next_try=0))])
    now = AFTER_2038_US + 5 * MINUTE
    assert [r.rcpt_id for r in db.due(now)] == [recipient(2, 1).rcpt_id, recipient(1, 0).rcpt_id,
                                                  recipient(2, 0).rcpt_id]
    assert [r.rcpt_id for r in db.due(now, limit=1)] == [recipient(2, 1).rcpt_id]
    assert db.due(AFTER_2038_US - 1) == []
    assert db.next_due_time() == AFTER_2038_US
    assert db.counts(now) == Counts(transactions=3, recipients=6, deferred=5, failed=1, held=1, due=3)
    assert db.counts() == Counts(transactions=3, recipients=6, deferred=5, failed=1, held=1, due=0)


def test_an_empty_database_has_nothing_due(db) -> None:
    assert db.next_due_time() is None
    assert db.counts(AFTER_2038_US) == Counts(0, 0, 0, 0, 0, 0)


def test_load_streams_many_transactions_in_order(db) -> None:
    db.apply([change for n in range(1, 1200) for change in put(n, nrcpts=3)])
    seen = [(ta.ta_id, tuple(r.index for r in rcpts)) for ta, rcpts in db.load()]
    assert seen == [(ta_id(n), (0, 1, 2)) for n in range(1, 1200)]


@settings(deadline=None, max_examples=40)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 3), st.booleans()), max_size=30))
def test_apply_matches_a_dictionary_model(tmp_path_factory, operations) -> None:
    """Random puts and removals: the database holds what a dictionary model holds, and a
    transaction exists exactly while it has a recipient (or was put and never emptied)."""
    database, _ = open_defedb(make_queue(tmp_path_factory.mktemp("q")))
    model: dict[str, dict[int, DeferredRecipient]] = {}
    with database:
        for n, index, add in operations:
            ta = ta_id(n)
            if add:
                rcpt = recipient(n, index, attempts=len(operations))
                changes = ([] if ta in model else [PutTransaction(envelope(n))]) + [PutRecipient(rcpt)]
                model.setdefault(ta, {})[index] = rcpt
                assert database.apply(changes) == ()
            else:
                removed = database.apply([RemoveRecipient(ta, index)])
                if ta in model:
                    model[ta].pop(index, None)
                    if not model[ta]:
                        del model[ta]
                        assert removed == (ta,)
            assert {ta.ta_id: {r.index: r for r in rcpts} for ta, rcpts in database.load()} == model


# -- versions and damage -----------------------------------------------------------------------

def test_another_schema_version_is_refused_and_left_alone(queue) -> None:
    database, _ = open_defedb(queue)
    database.close()
    raw = sqlite3.connect(defedb_path(queue))
    raw.execute("UPDATE schema_version SET version = 2")
    raw.commit()
    raw.close()
    with pytest.raises(DefedbVersionError, match="schema version \\[2\\].*knows only 1"):
        open_defedb(queue)
    with pytest.raises(DefedbVersionError):
        open_defedb(queue, read_only=True)
    assert defedb_path(queue).exists() and not any(queue.quarantine.iterdir())


def test_a_foreign_sqlite_database_is_refused(queue) -> None:
    path = defedb_path(queue)
    path.parent.mkdir()
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE something (x)")
    raw.commit()
    raw.close()
    with pytest.raises(DefedbVersionError, match="not a DEFEDB"):
        open_defedb(queue)


@pytest.mark.parametrize("garbage", [b"garbage " * 1000, b"\x00" * 100 + b"\xff" * 5000])
def test_a_garbage_file_is_quarantined_and_a_new_database_started(queue, garbage: bytes) -> None:
    path = defedb_path(queue)
    path.parent.mkdir()
    path.write_bytes(garbage)
    pathlib.Path(f"{path}-wal").write_bytes(b"stale wal")
    with pytest.raises(DefedbDamaged):
        open_defedb(queue, read_only=True)
    assert path.read_bytes() == garbage  # read-only changes nothing
    database, quarantined = open_defedb(queue, now=AFTER_2038_US)
    assert sorted(p.name for p in quarantined) == ["defedb.sqlite", "defedb.sqlite-wal"]
    assert quarantined[0].read_bytes() == garbage
    note = pathlib.Path(f"{quarantined[0]}.why").read_text()
    assert "DEFEDB damaged" in note and "2242-03-16" in note
    database.apply(put(1))
    assert len(list(database.load())) == 1
    database.close()


def test_a_damaged_page_is_found_by_the_quick_check(queue) -> None:
    database, _ = open_defedb(queue)
    database.apply([change for n in range(1, 300) for change in put(n, nrcpts=4)])
    database.close()  # the last close checkpoints the WAL into the main file
    path = defedb_path(queue)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(2 * page_size + 8, 2 * page_size + 200):  # the cells of a b-tree page
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    reopened, quarantined = open_defedb(queue)
    assert [p.name for p in quarantined] == ["defedb.sqlite"]
    assert list(reopened.load()) == []
    reopened.close()


def test_read_only_sees_the_writers_commits_and_cannot_write(db, queue) -> None:
    db.apply(put(1))
    reader, _ = open_defedb(queue, read_only=True)
    assert [ta.ta_id for ta, _ in reader.load()] == [ta_id(1)]
    db.apply(put(2))
    assert reader.counts().transactions == 2
    with pytest.raises(DefedbError, match="read-only"):
        reader.apply(put(3))
    reader.close()


def test_read_only_of_a_closed_database(queue) -> None:
    database, _ = open_defedb(queue)
    database.apply(put(1))
    database.close()
    reader, _ = open_defedb(queue, read_only=True)
    assert reader.counts().recipients == 2
    reader.close()


def test_read_only_of_a_missing_database_raises(queue) -> None:
    with pytest.raises(sqlite3.OperationalError):
        open_defedb(queue, read_only=True)
    assert not defedb_path(queue).exists()


def test_the_spec_names_every_column() -> None:
    spec = (pathlib.Path(__file__).parent.parent / "spec" / "defedb.md").read_text()
    tables = spec.split("```sql", 1)[1].split("```", 1)[0]
    transactions, recipients = tables.split("CREATE TABLE recipients")
    for record, text in ((DeferredTransaction, transactions), (DeferredRecipient, recipients)):
        for field in dataclasses.fields(record):
            assert re.search(rf'(^|[\s(,"]){field.name}"? ', text, re.M), (record.__name__, field.name)
