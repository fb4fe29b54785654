"""Table-driven state machines, and the one place where their state changes.

Responsibilities
    Every protocol and policy core of meta1 is a state machine written the same way
    (DESIGN.md, "One table per machine"): an ``enum`` of states, an ``enum`` of inputs and
    one transition table ``(state, input) -> Transition(action, next_state)``. This module
    holds the small engine they share:

    * :class:`Transition` — one row of a table: the name of the action the owner runs and
      the state the machine is in afterwards;
    * :class:`Machine` — the current state of one instance and :meth:`Machine.fire`, the
      only function that changes it. A pair missing from the table raises
      :class:`ProtocolViolation`: the owner decides what a protocol error means (for an SMTP
      session it is a reply, never a crash);
    * tracing — every transition can be written as one NDJSON record
      ``{"daemon", "machine", "id", "old", "input", "new", "time"}`` to a sink, so a recorded
      run can later be checked row by row against the tables (issue 7's trace validator)
      and ``meta1 trace`` can show a message's path.

Strategy
    The engine knows nothing about actions: it returns the row and the owner dispatches
    on ``row.action``. That keeps the table a plain literal the spec generator can print,
    and keeps the owner's code in ordinary methods a reader can follow.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Callable, Generic, Mapping, TypeVar

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)

TraceSink = Callable[[dict], None]


class FastEnum(enum.Enum):
    """An Enum whose members hash by identity (they are singletons), in C.

    Python 3.11's ``Enum.__hash__`` is a Python function; every transition looks up a
    ``(state, input)`` pair, so that is several Python calls per SMTP command.
    """

    __hash__ = object.__hash__


@dataclass(frozen=True)
class Transition(Generic[S]):
    """One table row: run ``action``, then be in ``next``."""

    action: str
    next: S


class ProtocolViolation(Exception):
    """An input arrived in a state whose table row does not exist."""

    def __init__(self, machine: str, state: enum.Enum, input: enum.Enum):
        super().__init__(f"{machine}: no transition for {input.name} in state {state.name}")
        self.state = state
        self.input = input


class Machine(Generic[S, I]):
    """The state of one machine instance; :meth:`fire` is the only way to change it."""

    def __init__(self, name: str, table: Mapping[tuple[S, I], Transition[S]], initial: S, *,
                 instance: str = "", daemon: str = "", trace: TraceSink | None = None,
                 clock: Callable[[], float] | None = None):
        self.name = name
        self.table = table
        self.state = initial
        self.instance = instance
        self.daemon = daemon
        self.trace = trace
        self.clock = clock

    def row(self, input: I) -> Transition[S] | None:
        """The row for ``input`` in the current state, or None (without firing)."""
        return self.table.get((self.state, input))

    def fire(self, input: I) -> Transition[S]:
        """Take the transition for ``input``: set the new state, trace it, return the row."""
        row = self.table.get((self.state, input))
        if row is None:
            raise ProtocolViolation(self.name, self.state, input)
        old, self.state = self.state, row.next
        if self.trace is not None:
            self.trace({"daemon": self.daemon, "machine": self.name, "id": self.instance,
                        "old": old.name, "input": input.name, "new": row.next.name,
                        "time": self.clock() if self.clock is not None else None})
        return row


def ndjson_sink(write: Callable[[str], object], **fields: object) -> TraceSink:
    """A trace sink writing one JSON object per line through ``write``; ``fields`` (the
    writing process's ``pid``) are added to every record."""
    def sink(record: dict) -> None:
        write(json.dumps({**record, **fields}, separators=(",", ":")) + "\n")
    return sink
