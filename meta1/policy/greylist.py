"""Greylisting: the life of a (client network, sender, recipient) triplet.

Responsibilities
    This module holds the greylisting machine's table (one row per (state, input)) and
    the pure logic around it (README 3.9.4, reference §2.8, B49):

    * :func:`triplet` — the key: the client's network (``IPv4_prefix`` / ``IPv6_prefix``
      bits of its address, so a sender's pool of outgoing servers counts as one client),
      the envelope sender and the recipient, lower-cased;
    * :func:`check` — one delivery attempt at time ``now`` (seconds, a 64-bit integer
      passed in; nothing here reads a clock): ``450 4.7.1`` or pass, and the entry to
      store;
    * :func:`purge`, :func:`greyprint`, :func:`greyrm` — what smar's housekeeping and the
      ``meta1 greyprint`` / ``meta1 greyrm`` commands call;
    * :class:`GreylistStore` — the storage it needs (get, put, delete, entries), with
      :class:`MemoryStore` for tests; smar backs it with SQLite (``greylisting {
      database }``).

The rules (D-POL-15)
    A triplet seen for the first time is recorded and refused with ``450 4.7.1``. A retry
    earlier than ``min_delay`` after the first attempt is refused again (the first time is
    kept); a retry between ``min_delay`` and ``max_delay`` *passes*: the triplet is
    accepted from then on. A retry after ``max_delay`` starts over, as a first attempt. A
    passed triplet stays accepted while it is used at least once per ``expire``; each
    accepted use renews it. Unused entries are removed by :func:`purge`: waiting ones
    after ``max_delay``, passed ones after ``expire``.

Reading the table
    ``ABSENT`` is a triplet with no entry. ``ATTEMPT`` classifies by time: ``EARLY``
    (before ``min_delay``), ``IN_WINDOW``, ``LATE`` (after ``max_delay``) for a waiting
    entry; ``FRESH`` / ``STALE`` (within / after ``expire`` of the last use) for a passed
    one. ``PURGE`` is housekeeping finding the entry old, ``REMOVE`` an operator's
    ``greyrm``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Protocol

from meta1.machine import FastEnum, Transition
from meta1.queue.timefmt import text_utc
from meta1.smtp.replies import R, Reply


class State(FastEnum):
    ABSENT = "absent"      # no entry
    WAITING = "waiting"    # seen, not yet retried within the window
    PASSED = "passed"      # retried within the window: accepted


class Input(FastEnum):
    ATTEMPT = "a delivery attempt for a triplet without entry"
    EARLY = "a retry before min_delay"
    IN_WINDOW = "a retry between min_delay and max_delay"
    LATE = "a retry after max_delay"
    FRESH = "a use of a passed triplet within expire of its last use"
    STALE = "a use of a passed triplet after expire"
    PURGE = "housekeeping finds the entry unused for too long"
    REMOVE = "greyrm removes the entry"


S, I, T = State, Input, Transition

TABLE: dict[tuple[State, Input], Transition[State]] = {
    (S.ABSENT, I.ATTEMPT): T("record_first_attempt", S.WAITING),
    (S.WAITING, I.EARLY): T("refuse", S.WAITING),
    (S.WAITING, I.IN_WINDOW): T("pass_triplet", S.PASSED),
    (S.WAITING, I.LATE): T("start_over", S.WAITING),
    (S.WAITING, I.PURGE): T("forget", S.ABSENT),
    (S.WAITING, I.REMOVE): T("forget", S.ABSENT),
    (S.PASSED, I.FRESH): T("renew", S.PASSED),
    (S.PASSED, I.STALE): T("start_over", S.WAITING),
    (S.PASSED, I.PURGE): T("forget", S.ABSENT),
    (S.PASSED, I.REMOVE): T("forget", S.ABSENT),
}


@dataclass(frozen=True)
class GreylistSettings:
    min_delay: int = 5 * 60
    max_delay: int = 4 * 3600
    expire: int = 36 * 86400
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64

    @classmethod
    def from_config(cls, section) -> GreylistSettings:
        """From smar's ``greylisting`` section."""
        return cls(section.min_delay, section.max_delay, section.expire, section.ipv4_prefix, section.ipv6_prefix)


@dataclass(frozen=True, order=True)
class Triplet:
    network: str        # "192.0.2.0/24", "2001:db8::/64"
    sender: str         # "" for <>
    recipient: str


def client_network(client_addr: str, settings: GreylistSettings) -> str:
    """The client's network: its address with ``IPv4_prefix``/``IPv6_prefix`` bits kept."""
    ip = ipaddress.ip_address(client_addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = settings.ipv4_prefix if ip.version == 4 else settings.ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def triplet(client_addr: str, sender: str, recipient: str, settings: GreylistSettings) -> Triplet:
    return Triplet(client_network(client_addr, settings), sender.lower(), recipient.lower())


@dataclass(frozen=True)
class Entry:
    """What is stored for a triplet; times are seconds since the epoch (64-bit integers)."""

    state: State
    first_seen: int
    last_seen: int
    attempts: int = 1            # attempts while waiting (refused ones and the passing one)
    passed_at: int | None = None


class GreylistStore(Protocol):
    def get(self, key: Triplet) -> Entry | None: ...
    def put(self, key: Triplet, entry: Entry) -> None: ...
    def delete(self, key: Triplet) -> bool: ...
    def entries(self) -> Iterable[tuple[Triplet, Entry]]: ...


class MemoryStore:
    """A :class:`GreylistStore` in a dictionary (tests; smar uses SQLite)."""

    def __init__(self) -> None:
        self.data: dict[Triplet, Entry] = {}

    def get(self, key: Triplet) -> Entry | None:
        return self.data.get(key)

    def put(self, key: Triplet, entry: Entry) -> None:
        self.data[key] = entry

    def delete(self, key: Triplet) -> bool:
        return self.data.pop(key, None) is not None

    def entries(self) -> Iterator[tuple[Triplet, Entry]]:
        return iter(sorted(self.data.items()))


@dataclass(frozen=True)
class GreyDecision:
    """One attempt's outcome: pass, or ``reply`` (450 4.7.1) and how long to wait."""

    passed: bool
    state: State
    action: str
    wait: int = 0

    @property
    def reply(self) -> Reply | None:
        return None if self.passed else R.GREYLISTED


def classify(entry: Entry | None, now: int, settings: GreylistSettings) -> Input:
    """The input an attempt at ``now`` is for an entry (see "Reading the table")."""
    if entry is None:
        return Input.ATTEMPT
    if entry.state is State.PASSED:
        return Input.FRESH if now - entry.last_seen <= settings.expire else Input.STALE
    age = now - entry.first_seen
    if age < settings.min_delay:
        return Input.EARLY
    return Input.IN_WINDOW if age <= settings.max_delay else Input.LATE


def step(entry: Entry | None, input: Input, now: int) -> tuple[Transition[State], Entry | None]:
    """Apply one row of the table: the row and the entry to store (None: delete)."""
    state = entry.state if entry is not None else State.ABSENT
    row = TABLE.get((state, input))
    if row is None:
        raise ValueError(f"greylisting: no transition for {input.name} in state {state.name}")
    if row.action in ("record_first_attempt", "start_over"):
        return row, Entry(State.WAITING, now, now)
    assert entry is not None
    if row.action == "refuse":
        return row, replace(entry, last_seen=now, attempts=entry.attempts + 1)
    if row.action == "pass_triplet":
        return row, replace(entry, state=State.PASSED, last_seen=now, attempts=entry.attempts + 1, passed_at=now)
    if row.action == "renew":
        return row, replace(entry, last_seen=now)
    return row, None                          # forget


def check(store: GreylistStore, key: Triplet, now: int, settings: GreylistSettings) -> GreyDecision:
    """One delivery attempt of ``key`` at ``now``: the decision, with the store updated."""
    entry = store.get(key)
    row, new = step(entry, classify(entry, now, settings), now)
    assert new is not None
    store.put(key, new)
    passed = new.state is State.PASSED
    wait = 0 if passed else max(0, new.first_seen + settings.min_delay - now)
    return GreyDecision(passed, new.state, row.action, wait)


def expired(entry: Entry, now: int, settings: GreylistSettings) -> bool:
    if entry.state is State.PASSED:
        return now - entry.last_seen > settings.expire
    return now - entry.first_seen > settings.max_delay


def purge(store: GreylistStore, now: int, settings: GreylistSettings) -> int:
    """Remove the entries unused for too long; how many were removed."""
    old = [key for key, entry in store.entries() if expired(entry, now, settings)]
    for key in old:
        step(store.get(key), Input.PURGE, now)
        store.delete(key)
    return len(old)


def greyprint(store: GreylistStore) -> list[str]:
    """``meta1 greyprint``: one line per entry, in triplet order (times in UTC)."""
    lines = []
    for key, entry in store.entries():
        passed = text_utc(entry.passed_at * 1_000_000) if entry.passed_at is not None else "-"
        lines.append(f"{key.network} <{key.sender}> <{key.recipient}> {entry.state.value} "
                     f"first={text_utc(entry.first_seen * 1_000_000)} last={text_utc(entry.last_seen * 1_000_000)} "
                     f"passed={passed} attempts={entry.attempts}")
    return lines


def greyrm(store: GreylistStore, *, network: str | None = None, client: str | None = None,
           sender: str | None = None, recipient: str | None = None,
           settings: GreylistSettings = GreylistSettings()) -> list[Triplet]:
    """``meta1 greyrm``: remove the entries matching every criterion given (at least one;
    ``client`` is an address, matched by its network); the triplets removed."""
    if network is None and client is None and sender is None and recipient is None:
        raise ValueError("greyrm needs a network, client, sender or recipient")
    if client is not None:
        network = client_network(client, settings)
    if network is not None:
        network = str(ipaddress.ip_network(network, strict=False))
    removed = []
    for key, entry in list(store.entries()):
        if ((network is None or key.network == network) and (sender is None or key.sender == sender.lower())
                and (recipient is None or key.recipient == recipient.lower())):
            step(entry, Input.REMOVE, 0)
            store.delete(key)
            removed.append(key)
    return removed
