"""``mailq``: list the queued transactions and the state of each recipient, as text for
people or JSON for scripts.

Responsibilities
    Read the queue the way qmgr would rebuild it at start (:func:`list_queue`), without
    changing anything on disk, and print it (:func:`format_text`, :func:`format_json`).
    Per recipient still to do: its state, failed attempts, next try and last reply.

Strategy
    :func:`list_queue` is a read-only replay (:func:`meta1.queue.ibdb.replay` with
    ``read_only=True``): it neither cuts a torn tail (an append may be under way) nor
    quarantines, so it is safe to run while qmgr is writing. Only transactions whose
    content passes the cheap check are listed, in log (commit) order; recipients IBDB
    records as done (delivered, bounced, deleted) are left out.

    The rest comes from DEFEDB (spec/defedb.md), opened read-only: SQLite's WAL lets a
    reader see the last commit while qmgr writes, and a read-only connection never
    creates, repairs or quarantines anything. A recipient without a DEFEDB record was never
    tried (B57: DEFEDB only after a failed first attempt). DEFEDB is read after IBDB, so a
    recipient done in between shows its last deferral — never the reverse. A missing
    DEFEDB (no deferral yet) is normal; one that cannot be read is reported through
    ``problems`` and the listing goes on without it (state ``queued`` is then a guess).

    States (:class:`RecipientState` values, spec/qmgrctl.md):

    * ``queued`` — never tried (no DEFEDB record);
    * ``deferred`` — failed temporarily; ``attempts``, ``next try`` and ``last reply`` say
      how and when it is tried again;
    * ``failed`` — failed permanently or expired, its DSN not yet queued (D-DEFEDB-7);
    * ``held`` — its transaction is held (``meta1 qmgrctl hold``), whatever else.

    Text output follows sendmail's ``mailq`` in spirit — id, size, arrival time, sender,
    then the recipients indented under the sender, each followed by its state, and the
    last reply in parentheses on a line of its own as Postfix's ``mailq`` shows it — with
    times in UTC, formatted from the 64-bit microsecond count without ``time_t``
    (:mod:`.timefmt`), so a time after 2038 prints correctly on i386. Addresses and
    replies may hold any octet a peer sent (the codec keeps non-UTF-8 octets as surrogate
    escapes): the text output shows control characters, backslashes and such octets as
    backslash escapes so that nothing reaches the terminal raw. JSON output is ASCII-only
    (``\\uXXXX`` escapes; an escaped octet 0xHH appears as ``\\udcHH``, which Python's
    ``json`` reads back exactly).
"""

from __future__ import annotations

import enum
import json
import sqlite3
from dataclasses import dataclass
from typing import Iterable

from meta1.queue.defedb import DefedbError, DeferredRecipient, RecipientState as StoredState, defedb_path, open_defedb
from meta1.queue.ibdb import replay
from meta1.queue.layout import QueueLayout
from meta1.queue.timefmt import iso_utc, text_utc


class RecipientState(enum.Enum):
    """A queued recipient's state as mailq shows it (see the module docstring)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    FAILED = "failed"
    HELD = "held"


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient still to do; ``next_try`` in microseconds since the epoch (None when
    not deferred), ``last_reply`` the last reply as ``"451 4.4.1 text"`` ("" when none)."""

    rcpt_id: str
    address: str
    state: RecipientState = RecipientState.QUEUED
    attempts: int = 0
    next_try: int | None = None
    last_reply: str = ""


@dataclass(frozen=True)
class QueuedMessage:
    """One queued transaction as mailq shows it; ``arrival`` in microseconds since the epoch."""

    ta_id: str
    arrival: int
    size: int
    sender: str
    recipients: tuple[QueuedRecipient, ...]
    held: bool = False


_Deferred = dict[str, tuple[bool, dict[str, DeferredRecipient]]]


def _read_defedb(layout: QueueLayout, problems: list[str] | None) -> _Deferred:
    """DEFEDB's transactions: held, and their recipients by id; empty if there is none."""
    if not defedb_path(layout).exists():
        return {}
    try:
        db, _ = open_defedb(layout, read_only=True)
        with db:
            return {transaction.ta_id: (transaction.held, {r.rcpt_id: r for r in recipients})
                    for transaction, recipients in db.load()}
    except (DefedbError, sqlite3.Error) as error:
        if problems is not None:
            problems.append(f"DEFEDB not read, attempts and next tries not shown: {error}")
        return {}


def _last_reply(record: DeferredRecipient) -> str:
    return " ".join(str(part) for part in (record.reply_code, record.status, record.reply_text) if part)


def _recipient(rcpt_id: str, address: str, held: bool, record: DeferredRecipient | None) -> QueuedRecipient:
    if record is None:
        return QueuedRecipient(rcpt_id, address, RecipientState.HELD if held else RecipientState.QUEUED)
    if held:
        state = RecipientState.HELD
    elif record.state is StoredState.FAILED:
        state = RecipientState.FAILED
    else:
        state = RecipientState.DEFERRED
    next_try = record.next_try if record.state is StoredState.DEFERRED else None
    return QueuedRecipient(rcpt_id, address, state, record.attempts, next_try, _last_reply(record))


def list_queue(layout: QueueLayout, problems: list[str] | None = None) -> list[QueuedMessage]:
    """The queued transactions in log order with their open recipients; reads only.
    What could not be read (a damaged DEFEDB) is appended to ``problems``."""
    found = replay(layout, read_only=True)
    deferred = _read_defedb(layout, problems)
    messages = []
    for transaction in found.transactions.values():
        done = found.done.get(transaction.ta_id, set())
        held, records = deferred.get(transaction.ta_id, (False, {}))
        recipients = tuple(_recipient(r.rcpt_id, r.address, held, records.get(r.rcpt_id))
                           for r in transaction.recipients if r.rcpt_id not in done)
        messages.append(QueuedMessage(ta_id=transaction.ta_id, arrival=transaction.arrival, size=transaction.size,
                                      sender=transaction.sender, recipients=recipients, held=held))
    return messages


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


def _state_text(recipient: QueuedRecipient) -> str:
    """``deferred, 2 attempts, next try 2038-01-19 03:14:08``."""
    parts = [recipient.state.value]
    if recipient.attempts:
        parts.append(f"{recipient.attempts} attempt{'s' if recipient.attempts != 1 else ''}")
    if recipient.next_try is not None and recipient.state is RecipientState.DEFERRED:
        parts.append(f"next try {text_utc(recipient.next_try)}")
    return ", ".join(parts)


def format_text(messages: Iterable[QueuedMessage]) -> str:
    """The queue as a table: one block per message — the sender, then each recipient with
    its state and, if it has one, its last reply in parentheses — then a count line."""
    messages = list(messages)
    if not messages:
        return "Mail queue is empty\n"
    lines = [f"{'Queue ID':<{_ID_WIDTH}} {'Size':>{_SIZE_WIDTH}}  {'Arrival (UTC)':<{_TIME_WIDTH}}  Sender/Recipient"]
    for message in messages:
        lines.append(f"{_printable(message.ta_id):<{_ID_WIDTH}} {message.size:>{_SIZE_WIDTH}}  "
                     f"{text_utc(message.arrival):<{_TIME_WIDTH}}  <{_printable(message.sender)}>")
        for recipient in message.recipients:
            lines.append(f"{_INDENT}<{_printable(recipient.address)}>  {_state_text(recipient)}")
            if recipient.last_reply:
                lines.append(f"{_INDENT}  ({_printable(recipient.last_reply)})")
    count = len(messages)
    lines.append(f"{count} message{'s' if count != 1 else ''}")
    return "\n".join(lines) + "\n"


def _recipient_json(recipient: QueuedRecipient) -> dict[str, object]:
    next_try = recipient.next_try
    return {"id": recipient.rcpt_id, "address": recipient.address, "state": recipient.state.value,
            "attempts": recipient.attempts, "next_try": None if next_try is None else iso_utc(next_try),
            "next_try_us": next_try, "last_reply": recipient.last_reply or None}


def format_json(messages: Iterable[QueuedMessage]) -> str:
    """The queue as a JSON array; times are ISO 8601 UTC (null if beyond year 9999) with
    the exact microsecond count beside them (``arrival_us``, ``next_try_us``). Per
    recipient: ``id``, ``address``, ``state``, ``attempts``, ``next_try`` (null unless
    deferred), ``last_reply`` (null if none)."""
    return json.dumps([
        {
            "id": message.ta_id,
            "arrival": iso_utc(message.arrival),
            "arrival_us": message.arrival,
            "size": message.size,
            "sender": message.sender,
            "held": message.held,
            "recipients": [_recipient_json(recipient) for recipient in message.recipients],
        }
        for message in messages
    ], indent=2, ensure_ascii=True) + "\n"
