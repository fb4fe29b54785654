"""Formatting queue times (64-bit microseconds since the epoch) without ``time_t``.

Why this exists
    Queue files keep times as 64-bit integers so that they mean the same on i386 and
    x86_64. Formatting them with ``time.gmtime`` or ``datetime.fromtimestamp`` would hand
    them to the C library's 32-bit ``time_t`` on i386 Debian, which raises OverflowError
    after 2038-01-19 (DESIGN.md, "Architectures"). Adding a ``timedelta`` to the epoch is
    pure Python arithmetic and works to the year 9999 on every platform; beyond that (only
    a damaged or hostile record gets there) the functions say so instead of raising.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc_datetime(microseconds: int) -> datetime | None:
    """The UTC datetime of a queue time, or None when it is outside years 1–9999."""
    try:
        return EPOCH + timedelta(microseconds=microseconds)
    except OverflowError:
        return None


def iso_utc(microseconds: int) -> str | None:
    """ISO 8601 in UTC with microseconds, ``2038-01-19T03:14:08.000000Z``; None if out of range."""
    moment = utc_datetime(microseconds)
    if moment is None:
        return None
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond:06d}Z")


def text_utc(microseconds: int) -> str:
    """``2038-01-19 03:14:08`` (UTC, seconds), or ``@<microseconds>`` if out of range."""
    moment = utc_datetime(microseconds)
    if moment is None:
        return f"@{microseconds}"
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")


def now_us() -> int:
    """The wall clock in microseconds since the epoch (``time_ns`` is 64-bit everywhere)."""
    return time.time_ns() // 1000
