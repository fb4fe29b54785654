"""Retry timing of deferred recipients: exponential backoff and the queue lifetime.

Responsibilities
    * :func:`next_retry_delay` — how long a recipient waits after its n-th failed attempt:
      ``min_queue_delay`` doubled on each retry, never more than ``max_queue_delay``
      (config: qmgr ``min_queue_delay``, ``max_queue_delay``; reference meta1.md §1.6).
    * :func:`expiry_time` / :func:`expired` — the queue lifetime (qmgr ``queue_lifetime``,
      RFC 5321 §4.5.4.1: give up after "at least 4-5 days"), counted from the
      transaction's arrival.
    * :func:`next_try_time` — the next attempt: now plus the backoff, but never later than
      the expiry, so that a last attempt happens when the lifetime ends (spec/defedb.md,
      D-DEFEDB-5) and the recipient is bounced only after that attempt failed too.
    * :func:`delay_warning_due` — whether a "delayed" DSN is owed (RFC 3464 Action:
      delayed), once per recipient.

Units
    Every time and every duration here is an int in **microseconds** — the queue's unit
    (64-bit, no ``time_t``; DESIGN.md "Architectures"). The configuration gives seconds:
    multiply by :data:`SECOND`. Nothing here reads the clock; ``now`` is passed in.

Why deterministic (no jitter)
    The scheduler spreads load by destination concurrency limits, not by random retry
    times; a deterministic schedule is what the tests, the model checker and ``mailq``
    can predict. A caller that wants jitter adds it from its injected RNG.

Owns no state; every function is pure.
"""

from __future__ import annotations

SECOND = 1_000_000
"""Microseconds per second (the configuration's intervals are seconds)."""

# 2**62 µs is ~146,000 years: any doubling beyond it is clamped by max_delay anyway, so
# the shift is bounded and a huge attempt count costs nothing.
_MAX_SHIFT = 62


def next_retry_delay(attempts: int, min_delay: int, max_delay: int) -> int:
    """The wait after ``attempts`` failed attempts (1 → ``min_delay``, 2 → twice that, …),
    at most ``max_delay``. ``attempts`` below 1 counts as 1.

    ValueError when ``min_delay`` is not positive or larger than ``max_delay`` (the
    configuration refuses both; a caller passing them is a bug)."""
    if min_delay <= 0 or min_delay > max_delay:
        raise ValueError(f"need 0 < min_delay <= max_delay, got {min_delay}, {max_delay}")
    shift = min(max(attempts, 1) - 1, _MAX_SHIFT)
    return min(min_delay << shift, max_delay)


def expiry_time(arrival: int, lifetime: int) -> int:
    """When a transaction that arrived at ``arrival`` reaches the queue lifetime."""
    return arrival + lifetime


def expired(arrival: int, now: int, lifetime: int) -> bool:
    """True when the queue lifetime has been reached (at the expiry instant itself too)."""
    return now >= expiry_time(arrival, lifetime)


def next_try_time(now: int, attempts: int, *, arrival: int, min_delay: int, max_delay: int,
                  lifetime: int) -> int | None:
    """The time of the next attempt after ``attempts`` failed ones, or None when the
    lifetime is already over (the recipient is to be bounced now, not retried).

    The backoff is clamped to the expiry so that one last attempt falls on it."""
    if expired(arrival, now, lifetime):
        return None
    return min(now + next_retry_delay(attempts, min_delay, max_delay), expiry_time(arrival, lifetime))


def delay_warning_due(first_fail: int, now: int, after: int, warned: bool) -> bool:
    """True when a "delayed" DSN should be sent now: not sent before, and the recipient has
    been failing for at least ``after`` (a ``after`` of 0 or less disables warnings)."""
    return not warned and after > 0 and now - first_fail >= after
