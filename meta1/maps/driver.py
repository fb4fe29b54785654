"""The map driver: every declared map opened, and lookups answered on smar's event loop.

Responsibilities
    * :func:`open_maps` — build a map object for every ``smar { map NAME { … } }`` of a
      configuration: hash and regex files opened and checked, passwd and inline maps,
      socket-map clients (not yet connected), sequences joined to their members. Every
      map that cannot be opened is reported, all at once, by :class:`MapOpenError`
      ("map aliases: /var/spool/meta1/aliases.db: cannot open: No such file or
      directory"); or, with ``strict=False``, stands as a
      :class:`~meta1.maps.local.BrokenMap` answering PERM, so that smar can run and mail
      is deferred, not judged on a guess.
    * :class:`SequenceMap` — ``type = sequence``: its members in order; the first FOUND
      answers; NOTFOUND goes on to the next member; NOMORE ends the sequence with
      NOMORE (not found, and the caller tries no key derived from this one: B26); TEMP
      and PERM end it with that result (a member that cannot answer must not let a
      later one answer in its place). All NOTFOUND: NOTFOUND. (B30, B32.)
    * :class:`MapDriver` — answers :class:`~meta1.maps.base.LookupRequest`\\ s for any
      declared map, and runs lookup plans (the policy cores: access checks, local users,
      aliases, routing) to their end.
    * :class:`BlockingDriver` — the same for a program that may wait: tests,
      ``meta1 lookup``, ``run_plan``. It runs a private event loop while a socket map
      answers.

Answering at once or later (D-MAP-11)
    The shape is the one the sendmail X design gives its internal interfaces: an
    "initiate" call that may return the result at once, else the result comes through
    a callback (reference §1.2a). Every map has ``submit(key, callback) -> MapResult |
    None``: file, inline, passwd and regex maps return the result (and never call the
    callback); a socket map returns None and calls ``callback(result)`` later from the
    loop (or returns a TEMP at once while its server is known to be down). A sequence
    returns at once as long as its members do. So a policy whose maps are all files runs
    to its end in one call, with no loop iteration per key, and a socket map never
    blocks the loop.

    :meth:`MapDriver.run` follows the same rule for a whole plan: True when the plan
    finished within the call (``on_done`` is then *not* called), False when it waits for
    a socket map (``on_done(plan)`` follows from the loop)::

        if driver.run(plan, finish):
            finish(plan)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from meta1.eventloop.loop import EventLoop
from meta1.machine import TraceSink
from meta1.maps.base import NOT_FOUND, LookupPlan, LookupRequest, MapResult, Status, run_plan
from meta1.maps.hashfile import MapFileError
from meta1.maps.local import BrokenMap, HashMap, InlineMap, PasswdMap, RegexMap
from meta1.maps.sockclient import SocketMapClient
from meta1.maps.source import SourceErrors, parse_lines

log = logging.getLogger("meta1.maps")

Callback = Callable[[MapResult], object]


class Map(Protocol):
    """What every map object offers (local maps, socket-map clients, sequences)."""

    name: str
    kind: str

    def submit(self, key: str, callback: Callback) -> MapResult | None:
        ...

    def start(self) -> None:
        ...

    def close(self) -> None:
        ...


class MapOpenError(Exception):
    """Maps that could not be opened; ``problems`` has one line per map."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---------------------------------------------------------------------------------------
# Sequences


class SequenceMap:
    """``type = sequence``: the members in order (see the module documentation)."""

    kind = "sequence"

    def __init__(self, name: str, members: list[Map]) -> None:
        self.name = name
        self.members = members

    def submit(self, key: str, callback: Callback) -> MapResult | None:
        return _SequenceLookup(self.members, key, callback).advance(None)

    def lookup(self, key: str) -> MapResult:
        """At once, for sequences of local maps only (RuntimeError otherwise)."""
        result = self.submit(key, _no_callback)
        if result is None:
            raise RuntimeError(f"sequence {self.name} needs an event loop (it has a socket map)")
        return result

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<SequenceMap {self.name} {[m.name for m in self.members]}>"


def _no_callback(result: MapResult) -> None:  # pragma: no cover - never called
    raise AssertionError("a local map called back")


class _SequenceLookup:
    __slots__ = ("members", "key", "callback", "index")

    def __init__(self, members: list[Map], key: str, callback: Callback) -> None:
        self.members = members
        self.key = key
        self.callback = callback
        self.index = 0

    def advance(self, result: MapResult | None) -> MapResult | None:
        """Given the last member's answer (None at the start): the sequence's answer, or
        None while a member answers later."""
        while True:
            if result is not None and result.status is not Status.NOTFOUND:
                return result          # FOUND, NOMORE, TEMP, PERM: this is the answer
            if self.index >= len(self.members):
                return NOT_FOUND
            member = self.members[self.index]
            self.index += 1
            result = member.submit(self.key, self._resumed)
            if result is None:
                return None

    def _resumed(self, result: MapResult) -> None:
        final = self.advance(result)
        if final is not None:
            self.callback(final)


# ---------------------------------------------------------------------------------------
# Drivers


class MapDriver:
    """Lookups in the declared maps, answered at once or from the loop (module docs)."""

    def __init__(self, maps: Mapping[str, Map]) -> None:
        self.maps = dict(maps)

    def submit(self, request: LookupRequest, callback: Callback) -> MapResult | None:
        """The answer to ``request`` now, or None and ``callback(result)`` later."""
        map_ = self.maps.get(request.map)
        if map_ is None:
            return MapResult(Status.PERM, reason=f"no map named {request.map!r} is declared")
        return map_.submit(request.key, callback)

    def run(self, plan: LookupPlan, on_done: Callable[[Any], object]) -> bool:
        """Drive ``plan`` to its end: True if it ended within this call (``on_done`` is not
        called), else False and ``on_done(plan)`` later, from the loop."""
        return _PlanRun(self, plan, on_done).step()

    def start(self) -> None:
        """Open the socket maps' ``min_connections``."""
        for map_ in self.maps.values():
            map_.start()

    def close(self) -> None:
        """Close every map; lookups waiting for a socket map are dropped."""
        for map_ in self.maps.values():
            map_.close()


class _PlanRun:
    __slots__ = ("driver", "plan", "on_done")

    def __init__(self, driver: MapDriver, plan: LookupPlan, on_done: Callable[[Any], object]) -> None:
        self.driver = driver
        self.plan = plan
        self.on_done = on_done

    def step(self) -> bool:
        plan = self.plan
        while (request := plan.next_lookup()) is not None:
            result = self.driver.submit(request, self._resumed)
            if result is None:
                return False
            plan.lookup_result(result)
        return True

    def _resumed(self, result: MapResult) -> None:
        self.plan.lookup_result(result)
        if self.step():
            self.on_done(self.plan)


class BlockingDriver:
    """Lookups that wait for their answer: ``lookup(request) -> MapResult``.

    For tests, ``meta1 lookup`` and :func:`~meta1.maps.base.run_plan`; never inside a
    daemon's loop. A socket map is waited for by running ``loop`` (a private one unless
    given) until it answers or ``wait`` real seconds pass (then TEMP)."""

    def __init__(self, maps: Mapping[str, Map] | MapDriver, loop: EventLoop | None = None, *,
                 wait: float = 60.0) -> None:
        self.driver = maps if isinstance(maps, MapDriver) else MapDriver(maps)
        self.loop = loop
        self.wait = wait

    def lookup(self, request: LookupRequest) -> MapResult:
        box: list[MapResult] = []
        result = self.driver.submit(request, box.append)
        if result is not None:
            return result
        if self.loop is None:
            raise RuntimeError("a socket map answers through an event loop; give BlockingDriver one")
        if not self.loop.run_until(lambda: bool(box), self.wait):
            return MapResult(Status.TEMP, reason=f"no answer from map {request.map} within {self.wait:g}s")
        return box[0]

    def run_plan(self, plan: LookupPlan) -> None:
        run_plan(plan, self.lookup)

    def close(self) -> None:
        self.driver.close()


# ---------------------------------------------------------------------------------------
# Opening the maps of a configuration


def open_maps(config: Any, loop: EventLoop | None = None, *, base: str | None = None, strict: bool = True,
              trace: TraceSink | None = None, names: Iterable[str] | None = None) -> dict[str, Map]:
    """A map object for every map declared in ``config`` (a loaded configuration, or its
    ``smar`` section), by name; with ``names``, only those maps and the members of the
    sequences among them (qmgr opens its ``config_map`` alone).

    Relative file and socket paths are taken relative to ``base`` (default: the
    configuration's ``queue_directory``, the daemons' working directory). Socket maps
    need ``loop``. Raises :class:`MapOpenError` naming every map that cannot be opened,
    unless ``strict`` is False: then each such map is a :class:`BrokenMap` (answering
    PERM with the reason) and the problems are logged."""
    smar = getattr(config, "smar", config)
    if base is None:
        base = getattr(config, "queue_directory", None) or os.getcwd()
    nodes = smar.map
    built: dict[str, Map] = {}
    problems: list[str] = []

    def path_of(value: str) -> str:
        return os.path.join(base, value)

    def build(name: str) -> Map:
        if name in built:
            return built[name]
        node = nodes[name]
        kind = node.values["type"]
        try:
            if kind == "hash":
                map_: Map = HashMap(name, path_of(node.values["file"]))
            elif kind == "regex":
                map_ = RegexMap(name, path_of(node.values["file"]))
            elif kind == "passwd":
                map_ = PasswdMap(name)
            elif kind == "inline":
                entries, errors = parse_lines(node.values["entries"], f"map {name}")
                if errors:
                    raise SourceErrors(errors)
                map_ = InlineMap(name, [(key, value) for key, value, _ in entries])
            elif kind == "socket":
                if loop is None:
                    raise ValueError("a socket map needs an event loop")
                path = node.values["path"]
                map_ = SocketMapClient(
                    loop, name, mapname=node.values["mapname"],
                    path=None if not isinstance(path, str) else path_of(path),
                    address=node.values["address"] if isinstance(node.values["address"], str) else None,
                    port=node.values["port"] if isinstance(node.values["port"], int) else None,
                    timeout=float(node.values["timeout"]),
                    min_connections=node.values["min_connections"],
                    max_connections=node.values["max_connections"], trace=trace)
            elif kind == "sequence":
                built[name] = BrokenMap(name, f"sequence {name} contains itself")   # cycle guard
                map_ = SequenceMap(name, [build(member) for member in node.values["maps"]])
            else:
                raise ValueError(f"unknown map type {kind!r}")
        except (MapFileError, SourceErrors, OSError, ValueError) as exc:
            reason = _describe(exc)
            problems.append(f"map {name}: {reason}")
            map_ = BrokenMap(name, f"map {name}: {reason}")
        built[name] = map_
        return map_

    for name in nodes if names is None else names:
        build(name)
    if problems:
        if strict:
            for map_ in built.values():
                map_.close()
            raise MapOpenError(problems)
        for problem in problems:
            log.error("%s; its lookups fail (PERM) until it is fixed", problem)
    return built


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SourceErrors):
        return "; ".join(str(e) for e in exc.errors[:10]) + (
            f" (and {len(exc.errors) - 10} more)" if len(exc.errors) > 10 else "")
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)
