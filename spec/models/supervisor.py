"""Supervisor: mcp restarts what dies, gives up on what keeps dying, and never runs a
service whose dependency failed for good (spec/mcp.md, B74, B75, T68).

An abstraction of :mod:`meta1.mcp.supervisor`: three services in MeTA1's example
relation — ``qmgr`` restarts ``smtps`` with it, ``smar`` restarts ``qmgr`` and ``smtps``.
A running service may die (a crash, counted) or exit 78 (a configuration error); a
counted death makes it wait for a restart — and its ``restart_dependencies`` with it —
and the ``LIMIT``-th counted death fails it for good. A failed service blocks its dependents, transitively: they are stopped and
stay down. Time is abstract: a waiting service may be restarted at any step (the pause
has passed); deaths are not forgotten (the worst case of ``restart_period``).
``tests/test_mcp_supervisor.py`` checks that the real supervisor refines this model.

Invariants
    * failed-blocks-dependents — no dependent (transitively) of a failed service runs or
      waits to run;
    * no-restart-loop — no service was started more than ``LIMIT`` times after its own
      deaths (restarts with a dependency do not count, they are bounded by the
      dependency's).
Goal
    * settles — from every state the system can reach one where nothing waits: every
      service runs, or is failed or blocked.

Variant the checker must catch
    * ``no-blocking`` — a failed service's dependents are restarted like any other.
"""

from __future__ import annotations

from typing import NamedTuple

SERVICES = ("smtps", "qmgr", "smar")
DEPENDENTS = {"qmgr": ("smtps",), "smar": ("qmgr", "smtps"), "smtps": ()}
LIMIT = 2


class Service(NamedTuple):
    state: str = "running"     # running | waiting | failed | blocked
    deaths: int = 0
    restarts: int = 0          # starts after its own deaths
    own: bool = False          # waiting after its own death (not a dependency's)


State = tuple  # tuple[Service, ...] in SERVICES order


def _closure(name: str) -> set[str]:
    found: set[str] = set()
    todo = list(DEPENDENTS[name])
    while todo:
        dependent = todo.pop()
        if dependent not in found:
            found.add(dependent)
            todo.extend(DEPENDENTS[dependent])
    return found


class Supervisor:
    name = "supervisor"
    description = " ".join(__doc__.split("\n\n")[0].split())   # the first paragraph: the promise

    def __init__(self, blocks: bool = True):
        self.blocks = blocks
        self.invariants = [("failed-blocks-dependents", self.failed_blocks_dependents),
                           ("no-restart-loop", self.no_restart_loop)]
        self.goals = [("settles", self.settled)]

    def initial(self):
        return [tuple(Service() for _ in SERVICES)]

    def actions(self, state):
        for i, name in enumerate(SERVICES):
            service = state[i]
            if service.state == "running":
                yield f"{name} crashes", self._death(state, name, permanent=False)
                yield f"{name} exits 78", self._death(state, name, permanent=True)
            if service.state == "waiting":
                after = list(state)
                after[i] = service._replace(state="running", own=False,
                                            restarts=service.restarts + (1 if service.own else 0))
                yield f"{name} restarted", tuple(after)

    def _death(self, state, name: str, permanent: bool):
        services = dict(zip(SERVICES, state))
        service = services[name]
        deaths = service.deaths + (0 if permanent else 1)
        if permanent or deaths >= LIMIT:
            services[name] = service._replace(state="failed", deaths=deaths)
            for dependent in _closure(name):
                if self.blocks and services[dependent].state != "failed":
                    services[dependent] = services[dependent]._replace(state="blocked")
                elif not self.blocks and services[dependent].state == "running":
                    services[dependent] = services[dependent]._replace(state="running")
        else:
            services[name] = service._replace(state="waiting", deaths=deaths, own=True)
            # its restart_dependencies are stopped and started again with it (B74)
            for dependent in DEPENDENTS[name]:
                if services[dependent].state == "running":
                    services[dependent] = services[dependent]._replace(state="waiting", own=False)
        return tuple(services[n] for n in SERVICES)

    @staticmethod
    def failed_blocks_dependents(state) -> bool:
        services = dict(zip(SERVICES, state))
        return all(services[dependent].state in ("failed", "blocked")
                   for name, service in services.items() if service.state == "failed"
                   for dependent in _closure(name))

    @staticmethod
    def no_restart_loop(state) -> bool:
        return all(service.restarts <= LIMIT for service in state)

    @staticmethod
    def settled(state) -> bool:
        return all(service.state != "waiting" for service in state)


MODEL = Supervisor()
MODEL.variants = {"no-blocking": Supervisor(blocks=False)}
