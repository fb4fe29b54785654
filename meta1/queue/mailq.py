"""``mailq``: list the queued transactions, as text for people or JSON for scripts.

Responsibilities
    Read the queue the way qmgr would rebuild it at start (:func:`list_queue`), without
    changing anything on disk, and print it (:func:`format_text`, :func:`format_json`).

Strategy
    :func:`list_queue` is a read-only replay (:func:`meta1.queue.ibdb.replay` with
    ``read_only=True``): it neither cuts a torn tail (an append may be under way) nor
    quarantines, so it is safe to run while qmgr is writing. Only transactions whose
    content passes the cheap check are listed, in log (commit) order. As long as the queue
    knows no delivery results this is every accepted transaction.

    Text output follows sendmail's ``mailq`` in spirit — id, size, arrival time, sender,
    then the recipients indented under the sender — with the time in UTC, formatted from
    the 64-bit microsecond count without ``time_t`` (:mod:`.timefmt`), so an arrival after
    2038 prints correctly on i386. Addresses may hold any octet a client sent (the codec
    keeps non-UTF-8 octets as surrogate escapes): the text output shows control
    characters, backslashes and such octets as backslash escapes so that nothing reaches
    the terminal raw. JSON output is ASCII-only (``\\uXXXX`` escapes; an escaped octet
    0xHH appears as ``\\udcHH``, which Python's ``json`` reads back exactly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from meta1.queue.ibdb import replay
from meta1.queue.layout import QueueLayout
from meta1.queue.timefmt import iso_utc, text_utc


@dataclass(frozen=True)
class QueuedMessage:
    """One queued transaction as mailq shows it; ``arrival`` in microseconds since the epoch."""

    ta_id: str
    arrival: int
    size: int
    sender: str
    recipients: tuple[str, ...]
    rcpt_ids: tuple[str, ...]


def list_queue(layout: QueueLayout) -> list[QueuedMessage]:
    """The queued transactions in log order; reads only."""
    found = replay(layout, read_only=True)
    return [
        QueuedMessage(ta_id=t.ta_id, arrival=t.arrival, size=t.size, sender=t.sender,
                      recipients=tuple(r.address for r in t.recipients),
                      rcpt_ids=tuple(r.rcpt_id for r in t.recipients))
        for t in found.transactions.values()
    ]


def _printable(text: str) -> str:
    """``text`` with anything a terminal might act on shown as an escape."""
    if text.isprintable() and "\\" not in text:
        return text
    shown = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an octet that was not UTF-8
            shown.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            shown.append("\\\\")
        elif char.isprintable():
            shown.append(char)
        else:
            shown.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(shown)


_ID_WIDTH = 19
_SIZE_WIDTH = 10
_TIME_WIDTH = 19
_INDENT = " " * (_ID_WIDTH + 1 + _SIZE_WIDTH + 2 + _TIME_WIDTH + 2)


def format_text(messages: Iterable[QueuedMessage]) -> str:
    """The queue as a table: one block per message, then a count line."""
    messages = list(messages)
    if not messages:
        return "Mail queue is empty\n"
    lines = [f"{'Queue ID':<{_ID_WIDTH}} {'Size':>{_SIZE_WIDTH}}  {'Arrival (UTC)':<{_TIME_WIDTH}}  Sender/Recipient"]
    for message in messages:
        lines.append(f"{_printable(message.ta_id):<{_ID_WIDTH}} {message.size:>{_SIZE_WIDTH}}  "
                     f"{text_utc(message.arrival):<{_TIME_WIDTH}}  <{_printable(message.sender)}>")
        lines += [f"{_INDENT}<{_printable(address)}>" for address in message.recipients]
    count = len(messages)
    lines.append(f"{count} message{'s' if count != 1 else ''}")
    return "\n".join(lines) + "\n"


def format_json(messages: Iterable[QueuedMessage]) -> str:
    """The queue as a JSON array; ``arrival`` is ISO 8601 UTC (null if beyond year 9999),
    ``arrival_us`` the exact microsecond count."""
    return json.dumps([
        {
            "id": message.ta_id,
            "arrival": iso_utc(message.arrival),
            "arrival_us": message.arrival,
            "size": message.size,
            "sender": message.sender,
            "recipients": [{"id": rcpt_id, "address": address}
                           for rcpt_id, address in zip(message.rcpt_ids, message.recipients)],
        }
        for message in messages
    ], indent=2, ensure_ascii=True) + "\n"
