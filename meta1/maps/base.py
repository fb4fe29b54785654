"""What a map lookup answers, and how a policy asks for lookups without doing I/O.

Responsibilities
    The vocabulary shared by the maps (:mod:`meta1.maps`), the policy cores that use them
    (access checks, local users, aliases, routing — in smar) and the drivers that carry
    lookups out:

    * :class:`Status` and :class:`MapResult` — one lookup's answer. ``FOUND`` with a
      value; ``NOTFOUND``; ``NOMORE`` (not found, and try no further key derived from this
      one: MeTA1's socket-map extension, B26); ``TEMP`` (a temporary failure: the command
      being checked gets a 4xx, never "not found", B27); ``PERM`` (the map is broken:
      logged, and treated like TEMP so that no mail is accepted on a guess, B28).
    * :class:`LookupRequest` — "look up ``key`` in the map named ``map``": what a
      sans-I/O policy core hands out, one at a time, through ``next_lookup()``; its
      driver answers each through ``lookup_result(MapResult)`` (the pattern of smar's DNS
      plans, after dnspython's ``_Resolution``). A driver may answer at once (a file map)
      or later (a socket map reached through smar's event loop); the core cannot tell.
    * :class:`LookupPlan` — that protocol, so that drivers and tests can run any core.

Why a plan object
    smar must never block (DESIGN.md): a lookup in a socket map is a round trip to
    another process. Writing every policy as a plan that asks for one key at a time keeps
    the policy a pure function of the answers, testable with a dictionary, and lets one
    driver serve every policy over every kind of map.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Status(enum.Enum):
    FOUND = "OK"
    NOTFOUND = "NOTFOUND"
    NOMORE = "NOMORE"
    TEMP = "TEMP"
    PERM = "PERM"


@dataclass(frozen=True)
class MapResult:
    """One lookup's answer: ``value`` when FOUND, ``reason`` for TEMP and PERM."""

    status: Status
    value: str = ""
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.status is Status.FOUND

    @property
    def failed(self) -> bool:
        """TEMP or PERM: the answer is unknown, not "no"."""
        return self.status in (Status.TEMP, Status.PERM)


NOT_FOUND = MapResult(Status.NOTFOUND)


def found(value: str) -> MapResult:
    return MapResult(Status.FOUND, value)


@dataclass(frozen=True)
class LookupRequest:
    """Look up ``key`` in the map declared as ``map`` (``smar { map NAME { … } }``)."""

    map: str
    key: str


class LookupPlan(Protocol):
    """A sans-I/O core that needs map lookups (see the module docstring)."""

    def next_lookup(self) -> LookupRequest | None:
        """The next lookup to carry out, or None when the plan is done."""

    def lookup_result(self, result: MapResult) -> None:
        """The answer to the request :meth:`next_lookup` returned last."""


class Lookup(Protocol):
    """A map that answers at once (file, passwd, inline, regex maps)."""

    def lookup(self, key: str) -> MapResult:
        ...


def run_plan(plan: LookupPlan, lookup) -> None:
    """Drive ``plan`` to its end with ``lookup(request) -> MapResult`` answering at once
    (tests, ``meta1 lookup``, maps that need no I/O)."""
    while (request := plan.next_lookup()) is not None:
        plan.lookup_result(lookup(request))
