"""Retry timing (meta1/queue/retry.py): backoff, lifetime, delay warnings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.queue.retry import (SECOND, delay_warning_due, expired, expiry_time, next_retry_delay,
                               next_try_time)
from test_queue_support import AFTER_2038_US

MINUTE = 60 * SECOND
DAY = 86400 * SECOND


def test_the_delay_doubles_from_the_minimum_up_to_the_maximum() -> None:
    delays = [next_retry_delay(n, 5 * MINUTE, 60 * MINUTE) // MINUTE for n in range(0, 8)]
    assert delays == [5, 5, 10, 20, 40, 60, 60, 60]


def test_a_huge_attempt_count_costs_nothing() -> None:
    assert next_retry_delay(10**18, 1, 3600 * SECOND) == 3600 * SECOND


@pytest.mark.parametrize("low, high", [(0, 10), (-1, 10), (11, 10)])
def test_bad_bounds_are_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        next_retry_delay(1, low, high)


@settings(deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**9), st.integers(0, 10**9), st.integers(1, 100))
def test_the_delay_is_monotonic_and_bounded(attempts: int, low: int, extra: int, step: int) -> None:
    high = low + extra
    delay = next_retry_delay(attempts, low, high)
    assert low <= delay <= high
    assert delay <= next_retry_delay(attempts + step, low, high)


def test_the_next_try_is_clamped_to_the_expiry_after_2038() -> None:
    arrival, lifetime = AFTER_2038_US, 5 * DAY
    bounds = dict(arrival=arrival, min_delay=5 * MINUTE, max_delay=60 * MINUTE, lifetime=lifetime)
    assert next_try_time(arrival + MINUTE, 1, **bounds) == arrival + 6 * MINUTE
    almost = expiry_time(arrival, lifetime) - MINUTE
    assert next_try_time(almost, 9, **bounds) == expiry_time(arrival, lifetime)  # one last try at the end
    assert next_try_time(expiry_time(arrival, lifetime), 10, **bounds) is None  # bounce now
    assert not expired(arrival, expiry_time(arrival, lifetime) - 1, lifetime)
    assert expired(arrival, expiry_time(arrival, lifetime), lifetime)


def test_a_delay_warning_is_due_once_after_its_time() -> None:
    first = AFTER_2038_US
    assert not delay_warning_due(first, first + 4 * 3600 * SECOND - 1, 4 * 3600 * SECOND, warned=False)
    assert delay_warning_due(first, first + 4 * 3600 * SECOND, 4 * 3600 * SECOND, warned=False)
    assert not delay_warning_due(first, first + DAY, 4 * 3600 * SECOND, warned=True)
    assert not delay_warning_due(first, first + DAY, 0, warned=False)  # disabled
