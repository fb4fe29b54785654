"""mailq: the read-only listing, per-recipient state from IBDB and DEFEDB, its text and JSON
forms, and times past 2038 on any platform."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from meta1.ipc.records import Recipient, RecipientsDone
from meta1.queue.defedb import (DeferredRecipient, DeferredTransaction, PutRecipient, PutTransaction,
                                RecipientState as StoredState, defedb_path, open_defedb)
from meta1.queue.ibdb import IncomingLog, log_files
from meta1.queue.mailq import (QueuedMessage, QueuedRecipient, RecipientState, format_json, format_text,
                               list_queue)
from meta1.queue.recordfile import pack_record
from meta1.queue.timefmt import iso_utc, text_utc
from test_queue_support import AFTER_2038_US, make_queue, store, ta_id


def queue_with(tmp_path: pathlib.Path, transactions_of) -> tuple:
    layout = make_queue(tmp_path)
    transactions = transactions_of(layout)
    log = IncomingLog(layout)
    log.open()
    log.append_batch(transactions)
    log.close()
    return layout, transactions


def test_list_queue_reports_every_transaction_in_log_order(tmp_path: pathlib.Path) -> None:
    layout, transactions = queue_with(tmp_path, lambda layout: [store(layout, 2, recipients=2), store(layout, 1)])
    assert list_queue(layout) == [
        QueuedMessage(ta_id=ta_id(2), arrival=AFTER_2038_US + 2, size=transactions[0].size,
                      sender="sender2@example.org",
                      recipients=(QueuedRecipient(f"{ta_id(2)}-0000", "rcpt0@example.net"),
                                  QueuedRecipient(f"{ta_id(2)}-0001", "rcpt1@example.net"))),
        QueuedMessage(ta_id=ta_id(1), arrival=AFTER_2038_US + 1, size=transactions[1].size,
                      sender="sender1@example.org",
                      recipients=(QueuedRecipient(f"{ta_id(1)}-0000", "rcpt0@example.net"),)),
    ]
    assert not defedb_path(layout).exists()  # no DEFEDB: every recipient is queued, nothing created


def test_list_queue_is_read_only(tmp_path: pathlib.Path) -> None:
    layout, _ = queue_with(tmp_path, lambda layout: [store(layout, 1)])
    (_, path), = log_files(layout)
    with open(path, "ab") as stream:  # an append in progress
        stream.write(pack_record(store(layout, 2))[:20])
    before = path.read_bytes()
    assert [m.ta_id for m in list_queue(layout)] == [ta_id(1)]
    assert path.read_bytes() == before and list(layout.quarantine.iterdir()) == []


def test_format_text(tmp_path: pathlib.Path) -> None:
    layout, _ = queue_with(tmp_path, lambda layout: [
        store(layout, 1, content=b"x" * 1234, recipients=2),
        dataclasses.replace(store(layout, 2), sender=""),
    ])
    text = format_text(list_queue(layout))
    lines = text.splitlines()
    assert lines[0].split() == ["Queue", "ID", "Size", "Arrival", "(UTC)", "Sender/Recipient"]
    assert lines[1].split() == [ta_id(1), "1234", "2242-03-16", "12:56:32", "<sender1@example.org>"]
    assert lines[2].split() == ["<rcpt0@example.net>", "queued"] and lines[3].split() == ["<rcpt1@example.net>",
                                                                                          "queued"]
    assert lines[2].index("<") == lines[1].index("<")  # recipients stand under the sender
    assert lines[4].split()[-1] == "<>"  # the null sender
    assert lines[-1] == "2 messages"
    assert format_text(list_queue(layout)[:1]).splitlines()[-1] == "1 message"
    assert format_text([]) == "Mail queue is empty\n"


def test_format_json(tmp_path: pathlib.Path) -> None:
    layout, transactions = queue_with(tmp_path, lambda layout: [store(layout, 1, recipients=2)])
    assert json.loads(format_json(list_queue(layout))) == [{
        "id": ta_id(1),
        "arrival": "2242-03-16T12:56:32.000001Z",
        "arrival_us": AFTER_2038_US + 1,
        "size": transactions[0].size,
        "sender": "sender1@example.org",
        "held": False,
        "recipients": [{"id": f"{ta_id(1)}-{i:04d}", "address": f"rcpt{i}@example.net", "state": "queued",
                        "attempts": 0, "next_try": None, "next_try_us": None, "last_reply": None}
                       for i in range(2)],
    }]
    assert json.loads(format_json([])) == []


def test_odd_octets_and_control_characters_never_reach_the_terminal_raw(tmp_path: pathlib.Path) -> None:
    odd = b"a\x1b[2J\\\xff@example.org".decode("utf-8", "surrogateescape")
    layout, _ = queue_with(tmp_path, lambda layout: [dataclasses.replace(
        store(layout, 1), sender=odd, recipients=(Recipient(f"{ta_id(1)}-0000", "\u00e9@example.org", None,
                                                            None, None),))])
    messages = list_queue(layout)
    text = format_text(messages)
    assert "<a\\x1b[2J\\\\\\xff@example.org>" in text and "<\u00e9@example.org>" in text
    assert "\x1b" not in text
    encoded = format_json(messages)
    assert encoded.isascii() and json.loads(encoded)[0]["sender"] == odd


def test_times_format_without_time_t_far_past_2038() -> None:
    assert text_utc(AFTER_2038_US) == "2242-03-16 12:56:32"
    assert iso_utc(2**31 * 10**6) == "2038-01-19T03:14:08.000000Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999999Z"
    assert text_utc(2**62) == f"@{2**62}" and iso_utc(2**62) is None  # beyond year 9999
    recipient = QueuedRecipient(f"{ta_id(1)}-0000", "c@d", RecipientState.DEFERRED, 1, 2**62, "451 4.0.0 x")
    message = QueuedMessage(ta_id(1), 2**62, 1, "a@b", (recipient,))
    assert f"@{2**62}" in format_text([message]) and f"next try @{2**62}" in format_text([message])
    [shown] = json.loads(format_json([message]))
    assert shown["arrival"] is None and shown["recipients"][0]["next_try"] is None
    assert shown["recipients"][0]["next_try_us"] == 2**62


# -- per-recipient state from DEFEDB ----------------------------------------------------------------

NEXT_TRY = AFTER_2038_US + 3_600_000_000


def deferred(transaction, index: int, attempts: int, state: StoredState = StoredState.DEFERRED,
             reply: tuple = (451, "4.3.0", "try again later")) -> PutRecipient:
    recipient = transaction.recipients[index]
    code, status, text = reply
    return PutRecipient(DeferredRecipient(transaction.ta_id, index, recipient.address, None, None, None, state,
                                          attempts, NEXT_TRY, first_fail=AFTER_2038_US, last_attempt=AFTER_2038_US,
                                          reply_code=code, status=status, reply_text=text))


def with_defedb(layout, *changes) -> None:
    db, _ = open_defedb(layout)
    with db:
        db.apply(changes)


def test_recipients_show_state_attempts_next_try_and_last_reply(tmp_path: pathlib.Path) -> None:
    layout, (first, second) = queue_with(tmp_path, lambda layout: [store(layout, 1, recipients=4),
                                                                  store(layout, 2)])
    log = IncomingLog(layout)
    log.open()
    log.append_batch([RecipientsDone(first.ta_id, (first.recipients[3].rcpt_id,), "delivered", AFTER_2038_US)])
    log.close()
    with_defedb(layout, PutTransaction(DeferredTransaction.from_transaction(first)),
                deferred(first, 1, 2), deferred(first, 2, 3, StoredState.FAILED, (550, "5.1.1", "no such user")))
    [one, two] = list_queue(layout)
    assert one.recipients == (  # the delivered recipient is left out
        QueuedRecipient(first.recipients[0].rcpt_id, "rcpt0@example.net"),
        QueuedRecipient(first.recipients[1].rcpt_id, "rcpt1@example.net", RecipientState.DEFERRED, 2, NEXT_TRY,
                        "451 4.3.0 try again later"),
        QueuedRecipient(first.recipients[2].rcpt_id, "rcpt2@example.net", RecipientState.FAILED, 3, None,
                        "550 5.1.1 no such user"),
    )
    assert not one.held and two.recipients == (QueuedRecipient(second.recipients[0].rcpt_id, "rcpt0@example.net"),)
    lines = format_text([one]).splitlines()
    assert lines[2].split() == ["<rcpt0@example.net>", "queued"]
    assert lines[3].split("  ")[-1] == "deferred, 2 attempts, next try 2242-03-16 13:56:32"
    assert lines[4].strip() == "(451 4.3.0 try again later)"
    assert lines[4].index("(") == lines[3].index("<") + 2  # the reply stands under its recipient
    assert lines[5].split("  ")[-1] == "failed, 3 attempts" and lines[6].strip() == "(550 5.1.1 no such user)"
    [shown] = json.loads(format_json([one]))
    assert shown["recipients"][1] == {"id": first.recipients[1].rcpt_id, "address": "rcpt1@example.net",
                                      "state": "deferred", "attempts": 2, "next_try": "2242-03-16T13:56:32.000000Z",
                                      "next_try_us": NEXT_TRY, "last_reply": "451 4.3.0 try again later"}
    assert [r["state"] for r in shown["recipients"]] == ["queued", "deferred", "failed"]


def test_a_held_transaction_shows_every_recipient_held(tmp_path: pathlib.Path) -> None:
    layout, (transaction,) = queue_with(tmp_path, lambda layout: [store(layout, 1, recipients=2)])
    with_defedb(layout, PutTransaction(dataclasses.replace(DeferredTransaction.from_transaction(transaction),
                                                           held=True)),
                deferred(transaction, 0, 1))
    [message] = list_queue(layout)
    assert message.held and [(r.state, r.attempts) for r in message.recipients] == [(RecipientState.HELD, 1),
                                                                                   (RecipientState.HELD, 0)]
    text = format_text([message])
    assert "held, 1 attempt\n" in text and "next try" not in text
    [shown] = json.loads(format_json([message]))
    assert shown["held"] is True and [r["state"] for r in shown["recipients"]] == ["held", "held"]


def test_an_unreadable_defedb_is_reported_and_the_listing_goes_on(tmp_path: pathlib.Path) -> None:
    layout, _ = queue_with(tmp_path, lambda layout: [store(layout, 1)])
    path = defedb_path(layout)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"this is not an SQLite database, it only has the name of one" * 100)
    before = path.read_bytes()
    problems: list[str] = []
    [message] = list_queue(layout, problems)
    assert message.recipients[0].state is RecipientState.QUEUED
    assert len(problems) == 1 and problems[0].startswith("DEFEDB not read")
    assert path.read_bytes() == before and list(layout.quarantine.iterdir()) == []  # read-only: nothing moved
