"""MeTA1-format ids (reference §1.2a, B81/B82) and their reservation (D-ID-1)."""

from __future__ import annotations

import errno

import pytest

from meta1.ids import IdGenerator, IdUnavailable, counter_of, format_id, recipient_id


def test_formats():
    assert format_id(0xA7, 1) == "S00000000000000A701"
    assert recipient_id("S00000000000000A701", 2) == "S00000000000000A701-0002"
    assert counter_of("S00000000000000A701-0002") == 0xA7
    with pytest.raises(ValueError):
        format_id(1 << 64, 0)
    with pytest.raises(ValueError):
        counter_of("S00000000000000a701")


def test_ids_grow_and_are_reserved_a_block_ahead():
    reserved = []
    ids = IdGenerator(100, 0, block=10, reserve=reserved.append)
    counters = [counter_of(ids.new_id()) for _ in range(25)]
    assert counters == list(range(100, 125))
    assert reserved == [110, 120, 130]


def test_a_failed_reservation_hands_out_nothing_and_is_retried():
    attempts = []

    def reserve(ceiling):
        attempts.append(ceiling)
        if len(attempts) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    ids = IdGenerator(100, 0, block=10, reserve=reserve)
    with pytest.raises(IdUnavailable):
        ids.new_id()
    assert ids.ceiling == 100          # not moved: nothing above 100 may be used yet
    assert counter_of(ids.new_id()) == 100
    assert attempts == [110, 110]
