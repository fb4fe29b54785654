"""Greylisting (meta1/policy/greylist.py): the machine's table, the rules of B49 with an
injected clock (past 2038 too), housekeeping and the greyprint/greyrm functions, and a
Hypothesis property: a triplet passes only after an attempt at least min_delay earlier."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meta1.policy.greylist import (TABLE, Entry, GreylistSettings, Input, MemoryStore, State, check, classify,
                                   client_network, greyprint, greyrm, purge, step, triplet)

G = GreylistSettings(min_delay=300, max_delay=4 * 3600, expire=36 * 86400, ipv4_prefix=24, ipv6_prefix=64)
T0 = 4_102_444_800            # 2100-01-01: times are 64-bit integers on every platform


def test_every_state_is_reached_and_left() -> None:
    assert {s for s, _ in TABLE} | {r.next for r in TABLE.values()} == set(State)
    assert {i for _, i in TABLE} == set(Input)


def test_the_triplet() -> None:
    assert triplet("192.0.2.77", "A@Example.NET", "X@Ours.Test", G) == \
        triplet("192.0.2.1", "a@example.net", "x@ours.test", G)
    assert client_network("::ffff:192.0.2.77", G) == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6", G) == "2001:db8:1:2::/64"
    assert triplet("192.0.2.1", "", "x@y", G).sender == ""


def test_b49_first_refused_retry_in_window_passes() -> None:
    store, key = MemoryStore(), triplet("192.0.2.1", "a@b", "x@y", G)
    first = check(store, key, T0, G)
    assert not first.passed and first.reply.code == 450 and first.reply.status == "4.7.1" and first.wait == 300
    early = check(store, key, T0 + 299, G)
    assert not early.passed and early.action == "refuse" and early.wait == 1
    passed = check(store, key, T0 + 300, G)
    assert passed.passed and passed.reply is None and passed.action == "pass_triplet"
    entry = store.get(key)
    assert (entry.state, entry.first_seen, entry.passed_at, entry.attempts) == (State.PASSED, T0, T0 + 300, 3)
    assert check(store, key, T0 + 36 * 86400, G).action == "renew"
    assert check(store, key, T0 + 72 * 86400 + 1, G).action == "start_over"


def test_a_retry_after_max_delay_starts_over() -> None:
    store, key = MemoryStore(), triplet("192.0.2.1", "a@b", "x@y", G)
    check(store, key, T0, G)
    late = check(store, key, T0 + 4 * 3600 + 1, G)
    assert not late.passed and late.action == "start_over" and store.get(key).first_seen == T0 + 4 * 3600 + 1


def test_purge_and_the_tools() -> None:
    store = MemoryStore()
    waiting, passed, old = (triplet("192.0.2.1", "a@b", r, G) for r in ("w@y", "p@y", "o@y"))
    check(store, old, T0, G)
    check(store, waiting, T0 + 5 * 3600, G)
    check(store, passed, T0, G)
    check(store, passed, T0 + 400, G)
    lines = greyprint(store)
    assert len(lines) == 3 and lines[1].startswith("192.0.2.0/24 <a@b> <p@y> passed first=2100-01-01 00:00:00")
    assert purge(store, T0 + 5 * 3600, G) == 1 and store.get(old) is None
    assert greyrm(store, client="192.0.2.200", recipient="P@Y") == [passed]
    assert greyrm(store, network="192.0.2.9/24") == [waiting] and list(store.entries()) == []
    with pytest.raises(ValueError):
        greyrm(store)


def test_step_refuses_pairs_not_in_the_table() -> None:
    with pytest.raises(ValueError):
        step(None, Input.EARLY, T0)
    with pytest.raises(ValueError):
        step(Entry(State.PASSED, T0, T0), Input.IN_WINDOW, T0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10 * 86400), min_size=1, max_size=12))
def test_a_triplet_passes_only_after_waiting(offsets: list[int]) -> None:
    store, key = MemoryStore(), triplet("192.0.2.1", "a@b", "x@y", G)
    times = sorted(T0 + o for o in offsets)
    for n, now in enumerate(times):
        before = store.get(key)
        decision = check(store, key, now, G)
        assert decision.state is store.get(key).state
        if decision.passed and (before is None or before.state is State.WAITING):
            assert before is not None and G.min_delay <= now - before.first_seen <= G.max_delay
            assert any(G.min_delay <= now - t for t in times[:n])


def test_classify() -> None:
    entry = Entry(State.WAITING, T0, T0)
    assert [classify(entry, T0 + d, G) for d in (0, 300, 4 * 3600, 4 * 3600 + 1)] == [
        Input.EARLY, Input.IN_WINDOW, Input.IN_WINDOW, Input.LATE]
    assert classify(None, T0, G) is Input.ATTEMPT
