"""Session, transaction and recipient identifiers in MeTA1's format (reference §1.2a).

    session / transaction id   "S" + 16 hex digits (64-bit counter) + 2 hex digits
                               (smtps process index)          S0000018C2B7E5F0A00
    recipient id               <transaction id> "-" 4 hex digits   S0000018C2B7E5F0A00-0000

One counter serves sessions and transactions, so ids are unique across both and grow
strictly within one smtps process (B81). Across restarts they keep growing because the
counter starts above both the wall clock in microseconds and the last value reserved on
disk (the daemon persists reservations; this module only does the arithmetic): a clock
that steps back cannot make an id, and so a content file name, repeat (D-ID-1).
Recipients are numbered from 0000 in the order they were accepted (D-ID-2).
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"^S[0-9A-F]{16}[0-9A-F]{2}$")
RCPT_ID_PATTERN = re.compile(r"^S[0-9A-F]{16}[0-9A-F]{2}-[0-9A-F]{4}$")
COUNTER_LIMIT = 1 << 64
MAX_RECIPIENT_INDEX = 0xFFFF


def format_id(counter: int, process_index: int) -> str:
    if not 0 <= counter < COUNTER_LIMIT:
        raise ValueError(f"id counter out of range: {counter}")
    if not 0 <= process_index <= 0xFF:
        raise ValueError(f"process index out of range: {process_index}")
    return f"S{counter:016X}{process_index:02X}"


def recipient_id(transaction_id: str, index: int) -> str:
    if not 0 <= index <= MAX_RECIPIENT_INDEX:
        raise ValueError(f"recipient index out of range: {index}")
    return f"{transaction_id}-{index:04X}"


def counter_of(identifier: str) -> int:
    """The 64-bit counter inside a session/transaction/recipient id."""
    if not (ID_PATTERN.match(identifier) or RCPT_ID_PATTERN.match(identifier)):
        raise ValueError(f"not a meta1 id: {identifier!r}")
    return int(identifier[1:17], 16)


class IdUnavailable(Exception):
    """No id can be handed out now (its reservation could not be written)."""


class IdGenerator:
    """Hands out ids from a counter; asks ``reserve`` before crossing a reservation.

    ``reserve(ceiling)`` is the daemon's hook to persist "ids below ``ceiling`` may be in
    use" before any of them is handed out; ``block`` ids are reserved at a time so the
    disk is touched once per ``block`` ids, not per id.
    """

    def __init__(self, start: int, process_index: int, *, block: int = 1 << 16,
                 reserve=None):
        self.next = start
        self.process_index = process_index
        self.block = block
        self.reserve = reserve
        self.ceiling = start

    def new_id(self) -> str:
        """The next id; :class:`IdUnavailable` when its reservation cannot be written."""
        if self.next >= self.ceiling:
            ceiling = self.next + self.block
            if self.reserve is not None:
                try:
                    self.reserve(ceiling)
                except OSError as error:
                    # The ceiling moves only once it is on disk: no id is ever handed out
                    # that a restart could hand out again (D-ID-1).
                    raise IdUnavailable(f"cannot reserve ids: {error.strerror or error}") from error
            self.ceiling = ceiling
        counter, self.next = self.next, self.next + 1
        return format_id(counter, self.process_index)
