"""mailq: the read-only listing, its text and JSON forms, and times past 2038 on any platform."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from meta1.ipc.records import Recipient
from meta1.queue.ibdb import IncomingLog, log_files
from meta1.queue.mailq import QueuedMessage, format_json, format_text, list_queue
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
                      sender="sender2@example.org", recipients=("rcpt0@example.net", "rcpt1@example.net"),
                      rcpt_ids=(f"{ta_id(2)}-0000", f"{ta_id(2)}-0001")),
        QueuedMessage(ta_id=ta_id(1), arrival=AFTER_2038_US + 1, size=transactions[1].size,
                      sender="sender1@example.org", recipients=("rcpt0@example.net",),
                      rcpt_ids=(f"{ta_id(1)}-0000",)),
    ]


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
    assert lines[2].strip() == "<rcpt0@example.net>" and lines[3].strip() == "<rcpt1@example.net>"
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
        "recipients": [{"id": f"{ta_id(1)}-0000", "address": "rcpt0@example.net"},
                       {"id": f"{ta_id(1)}-0001", "address": "rcpt1@example.net"}],
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
    message = QueuedMessage(ta_id(1), 2**62, 1, "a@b", ("c@d",), (f"{ta_id(1)}-0000",))
    assert f"@{2**62}" in format_text([message])
    assert json.loads(format_json([message]))[0]["arrival"] is None
