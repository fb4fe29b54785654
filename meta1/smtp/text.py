"""Text that leaves the MTA: printable reductions and RFC 5322 dates.

Responsibilities
    * ``printable(text)`` reduces any string to printable US-ASCII (0x20..0x7E): every
      other character -- C0 and C1 controls, DEL, 8-bit and non-ASCII characters, the lone
      surrogates that ``surrogateescape`` decoding leaves for invalid UTF-8 -- becomes the
      replacement. This is Postfix's ``printable()``, applied to every attacker-influenced
      string before it goes into a reply, a header or a log line (reliability S9, T16):
      afterwards the string cannot break a line, forge a header or smuggle an escape
      sequence into a terminal.
    * ``comment_safe(text)`` additionally replaces ``(``, ``)`` and ``\\`` so that the
      result can be placed inside an RFC 5322 comment (the ``(helo=...)`` parts of a
      Received header) without ending it early or escaping its closing parenthesis.
    * ``format_date(epoch_seconds, offset_minutes)`` renders an RFC 5322 §3.3 date-time,
      e.g. ``Wed, 25 Nov 2026 10:00:00 +0000``.

Strategies
    * Dates are computed as ``datetime(1970, 1, 1, tzinfo=utc) + timedelta(...)``, never
      with ``time.gmtime``/``datetime.fromtimestamp``: those go through the platform's
      ``time_t``, which is 32 bits on i386 Debian and overflows after 2038-01-19
      (DESIGN.md, "Architectures"). Day and month names come from fixed tables, not from
      ``strftime``, whose ``%a``/``%b`` follow the process locale.
    * The printable test has a fast path (``isascii() and isprintable()``) because nearly
      every string passed in is already clean.

Owns no state; every function is pure.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
# RFC 5322 §3.2.2: a comment ends at ")" and "\" quotes the next character; "(" would
# open a nested comment that a careless reader may not balance.
_COMMENT_SPECIALS = re.compile(r"[()\\]")

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A zone offset is "+hhmm"; real zones lie within a day of UTC.
_MAX_OFFSET_MINUTES = 24 * 60 - 1


def is_printable(text: str) -> bool:
    """True when every character of ``text`` is printable US-ASCII (0x20..0x7E)."""
    # str.isprintable() is False for every ASCII control and DEL, True for space.
    return text.isascii() and text.isprintable()


def printable(text: str, replacement: str = "?") -> str:
    """``text`` with every character outside 0x20..0x7E replaced by ``replacement``.

    The replacement must itself be printable (it may be empty): a replacement that is a
    control character would undo the point of the function.
    """
    if not is_printable(replacement):
        raise ValueError("the replacement must be printable ASCII")
    if is_printable(text):
        return text
    return _NOT_PRINTABLE.sub(lambda _: replacement, text)


def comment_safe(text: str, replacement: str = "?") -> str:
    """:func:`printable` text that can also sit inside an RFC 5322 comment."""
    return _COMMENT_SPECIALS.sub(lambda _: replacement, printable(text, replacement))


def format_date(epoch_seconds: int, offset_minutes: int = 0) -> str:
    """RFC 5322 date-time of ``epoch_seconds`` as seen in the zone ``offset_minutes``
    east of UTC. Works for any year 1..9999 on every platform (no ``time_t``)."""
    if not -_MAX_OFFSET_MINUTES <= offset_minutes <= _MAX_OFFSET_MINUTES:
        raise ValueError(f"zone offset out of range: {offset_minutes} minutes")
    try:
        local = _EPOCH + timedelta(seconds=epoch_seconds, minutes=offset_minutes)
    except OverflowError as exc:
        raise ValueError(f"time out of range: {epoch_seconds}") from exc
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return (f"{_DAY_NAMES[local.weekday()]}, {local.day:02d} {_MONTH_NAMES[local.month - 1]} "
            f"{local.year:04d} {local.hour:02d}:{local.minute:02d}:{local.second:02d} "
            f"{sign}{hours:02d}{minutes:02d}")
