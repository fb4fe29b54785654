"""mcp's supervisor: which daemon runs, starts, stops or waits, as a pure object.

Synopsis
    supervisor = Supervisor(services, SupervisorPolicy.from_config(config))
    actions = supervisor.handle(event, now_us)     # carry the actions out in order
    timer_at = supervisor.next_wakeup              # arm one timer; on expiry handle(Tick(), now)

Responsibilities
    The supervisor decides, for the services of one configuration (the daemon sections,
    in the order the file gives them), when each is started, stopped, restarted or given
    up (reference meta1.md §1.7, B73-B75; reliability.md R9, T68). It does no I/O and
    reads no clock: events in with the time passed in (µs), actions out — ``Spawn``,
    ``Terminate`` (SIGTERM), ``Kill`` (SIGKILL), ``Note`` (a line for the log) and
    ``Finished`` (mcp may exit). Each service's state changes only through the table in
    :mod:`meta1.mcp.states`. The daemon (:mod:`meta1.mcp.daemon`) owns the processes,
    pipes, sockets and signals.

Strategies (decisions D-MCP-…, spec/mcp.md)
    * Order: services start one at a time in the reverse of their order in the file, each
      after the one before it said ``ready`` (start_action wait or pass), and stop one at
      a time in file order, each after the one before it exited (MeTA1's order, as GNU
      pies documents it; B73). A service that waits for its restart pause holds up the
      ones after it, so the start order holds for restarts too.
    * Restart: a service that dies unasked is started again after a pause that doubles
      with each death in ``restart_period`` (1 s, 2 s, 4 s … at most 60 s: no spinning,
      T68), and the services in its ``restart_dependencies`` are stopped and started
      again with it (B74).
    * Giving up: exit status 78 (EX_CONFIG: "do not restart me until the configuration
      changes") or ``restart_limit`` deaths within ``restart_period`` make a service
      FAILED; exit status 75 (EX_TEMPFAIL, e.g. another qmgr holds the queue lock) is a
      soft failure: paused and retried, never counted toward the limit. The services that
      depend on a failed one — its ``restart_dependencies``, and theirs in turn — are
      stopped and BLOCKED, not restarted (B75, MeTA1 2013-12-22/24).
    * A service that does not say ``ready`` within ``start_timeout`` is stopped, counted
      as a death and started again; one that does not exit within ``shutdown_timeout`` of
      its SIGTERM gets SIGKILL.
    * ``Finished`` comes when a shutdown is complete, or when nothing runs and nothing will
      (every service failed, blocked or down): mcp then exits instead of idling.
    * A reload restarts the services whose configuration changed, starts new ones, stops
      removed ones and gives failed and blocked ones another chance.
"""

from __future__ import annotations

import signal as _signal
from collections import deque
from dataclasses import dataclass, field

from meta1.machine import Machine, TraceSink
from meta1.mcp.states import PROCESS_STATES, TABLE, UNSETTLED_STATES, Input, State

SECOND = 1_000_000
EX_TEMPFAIL = 75
EX_CONFIG = 78

__all__ = [
    "SECOND", "ServiceSpec", "SupervisorPolicy", "ExitStatus", "Supervisor", "ServiceView",
    # events
    "Start", "Stop", "Ready", "Exited", "Tick", "Reload",
    # actions
    "Spawn", "Terminate", "Kill", "Note", "Finished",
]


# -- configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class ServiceSpec:
    """One supervised daemon. ``name`` is its section keyword (``smtps:NAME`` for a named
    smtps); ``restart_dependencies`` are section keywords (a keyword names every service
    of that kind); ``fingerprint`` changes when its configuration does (reload)."""

    name: str
    restart_dependencies: tuple[str, ...] = ()
    fingerprint: str = ""

    @property
    def kind(self) -> str:
        return self.name.partition(":")[0]


@dataclass(frozen=True)
class SupervisorPolicy:
    """The supervisor's knobs; times in µs."""

    restart_limit: int = 5
    restart_period: int = 60 * SECOND
    shutdown_timeout: int = 30 * SECOND
    start_timeout: int = 60 * SECOND
    first_pause: int = SECOND
    max_pause: int = 60 * SECOND

    @classmethod
    def from_config(cls, config) -> SupervisorPolicy:
        mcp = config.mcp
        return cls(restart_limit=mcp.restart_limit, restart_period=mcp.restart_period * SECOND,
                   shutdown_timeout=mcp.shutdown_timeout * SECOND, start_timeout=mcp.start_timeout * SECOND)


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit ``code``, or the ``signal`` that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        import os
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.WEXITSTATUS(status))

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        meaning = {0: "", EX_TEMPFAIL: " (temporary failure)", EX_CONFIG: " (configuration error)"}
        return f"exit status {self.code}{meaning.get(self.code, '')}"


# -- events -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """Run every service (mcp has started)."""


@dataclass(frozen=True)
class Stop:
    """Stop every service in order, then finish (SIGTERM to mcp)."""


@dataclass(frozen=True)
class Ready:
    name: str


@dataclass(frozen=True)
class Exited:
    name: str
    status: ExitStatus


@dataclass(frozen=True)
class Tick:
    """The timer fired: nothing but the time changed."""


@dataclass(frozen=True)
class Reload:
    """The configuration was read again: these are the services now."""

    services: tuple[ServiceSpec, ...]


Event = Start | Stop | Ready | Exited | Tick | Reload


# -- actions ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spawn:
    name: str


@dataclass(frozen=True)
class Terminate:
    """Send SIGTERM: stop, finishing what is under way."""

    name: str


@dataclass(frozen=True)
class Kill:
    """Send SIGKILL: it did not stop within ``shutdown_timeout``."""

    name: str


@dataclass(frozen=True)
class Note:
    """A line for mcp's log about ``name`` (``level``: "info", "warning" or "error")."""

    name: str
    text: str
    level: str = "info"


@dataclass(frozen=True)
class Finished:
    """Nothing runs and nothing will: mcp may exit. ``ok``: after a requested stop."""

    ok: bool
    reason: str


Action = Spawn | Terminate | Kill | Note | Finished


@dataclass(frozen=True)
class ServiceView:
    """One service as ``meta1 status`` shows it; ``since`` in µs."""

    name: str
    state: State
    since: int
    starts: int
    last_exit: str
    why: str


# -- the supervisor --------------------------------------------------------------------------

@dataclass
class _Service:
    spec: ServiceSpec
    machine: Machine
    since: int = 0
    starts: int = 0
    deaths: deque = field(default_factory=deque)   # (time, soft) of unasked deaths in restart_period
    pause_until: int = 0
    deadline: int | None = None                    # start or kill timeout
    last_exit: str = ""
    why: str = ""                                  # why FAILED or BLOCKED
    pause_after_exit: bool = False                 # stopped for a start timeout: pause first
    give_up_after_exit: str = ""                   # ... and that was the last chance: why
    block_when_down: str = ""                      # a dependency failed while it ran: why
    removed: bool = False                          # a reload dropped it: forget it when down


class Supervisor:
    """See the module docstring. ``services`` in the order of the configuration file."""

    def __init__(self, services: tuple[ServiceSpec, ...] | list[ServiceSpec], policy: SupervisorPolicy = SupervisorPolicy(),
                 *, trace: TraceSink | None = None):
        self.policy = policy
        self.trace = trace
        self.services: dict[str, _Service] = {}
        self.now = 0
        self.running = False      # Start seen, Stop not
        self.stopping = False
        self.finished = False
        self._out: list[Action] = []
        for spec in services:
            self._add(spec)

    # -- driving ------------------------------------------------------------------------------

    def handle(self, event: Event, now: int) -> list[Action]:
        """Apply ``event`` at time ``now`` (µs); the actions to carry out, in order."""
        self.now = max(self.now, now)
        self._out = []
        handler = self._HANDLERS[type(event)]
        handler(self, event)
        self._expire_deadlines()
        self._advance()
        out, self._out = self._out, []
        return out

    @property
    def next_wakeup(self) -> int | None:
        """When a pause or a timeout ends, if anything waits for one."""
        times = [s.deadline for s in self.services.values() if s.deadline is not None]
        times += [s.pause_until for s in self.services.values()
                  if s.machine.state is State.WAITING and s.pause_until > self.now]
        return min(times) if times else None

    def view(self) -> list[ServiceView]:
        """Every service, in file order."""
        return [ServiceView(s.spec.name, s.machine.state, s.since, s.starts, s.last_exit, s.why)
                for s in self.services.values()]

    def state_of(self, name: str) -> State:
        return self.services[name].machine.state

    # -- events ---------------------------------------------------------------------------------

    def _on_start(self, event: Start) -> None:
        if self.running or self.stopping:
            return
        self.running = True
        for service in self.services.values():
            self._fire(service, Input.WANT)

    def _on_stop(self, event: Stop) -> None:
        if self.stopping:
            return
        self.running = False
        self.stopping = True
        self._note(None, "stopping every service in the order of the configuration")

    def _on_ready(self, event: Ready) -> None:
        service = self.services.get(event.name)
        if service is None or service.machine.state is not State.STARTING:
            return      # a late or repeated line: its exit, if any, is what counts
        self._fire(service, Input.READY)

    def _on_exited(self, event: Exited) -> None:
        service = self.services.get(event.name)
        if service is None or service.machine.state not in PROCESS_STATES:
            return
        status = event.status
        service.last_exit = status.describe()
        state = service.machine.state
        if state is State.STOPPING:                         # asked to stop: it is down
            self._fire(service, Input.DIED)
        elif status.code == EX_CONFIG:
            service.why = f"{status.describe()}: not restarted until the configuration is fixed and reloaded"
            self._fire(service, Input.DIED_FOR_GOOD)
        elif service.give_up_after_exit:
            service.why = service.give_up_after_exit
            self._fire(service, Input.DIED_FOR_GOOD)
        elif state is not State.RESTARTING and self._count_death(service, soft=status.code == EX_TEMPFAIL):
            service.why = (f"died {self.policy.restart_limit} times within "
                           f"{self.policy.restart_period // SECOND}s (last: {status.describe()})")
            self._fire(service, Input.DIED_FOR_GOOD)
        else:
            self._fire(service, Input.DIED)

    def _on_tick(self, event: Tick) -> None:
        pass    # deadlines and pauses are looked at after every event

    def _on_reload(self, event: Reload) -> None:
        new = {spec.name: spec for spec in event.services}
        removed = [service for name, service in self.services.items() if name not in new]
        for service in removed:
            service.removed = True
            self._fire(service, Input.STOP)
        # The new file order; services on their way out come last, so first in the start
        # order: their replacements start when they are down (a moved listen socket).
        kept = {name: service for name, service in self.services.items() if name in new}
        self.services = {}
        for spec in event.services:
            service = kept.get(spec.name)
            if service is None:
                service = self._add(spec)
            else:
                self.services[spec.name] = service
                if service.spec != spec:
                    service.spec = spec
                    self._note(spec.name, "configuration changed: restarting")
                    self._fire(service, Input.RESTART)
        for service in removed:
            if service.machine.state in PROCESS_STATES:
                self.services[service.spec.name] = service
        for service in list(self.services.values()):
            if service.removed:
                continue
            if service.machine.state in (State.FAILED, State.BLOCKED):
                self._fire(service, Input.RESET)
            if self.running:
                self._fire(service, Input.WANT)

    _HANDLERS = {Start: _on_start, Stop: _on_stop, Ready: _on_ready, Exited: _on_exited, Tick: _on_tick,
                 Reload: _on_reload}

    # -- the engine -----------------------------------------------------------------------------

    def _add(self, spec: ServiceSpec) -> _Service:
        service = _Service(spec, Machine("mcp-service", TABLE, State.DOWN, instance=spec.name, daemon="mcp",
                                         trace=self.trace), since=self.now)
        self.services[spec.name] = service
        return service

    def _fire(self, service: _Service, input: Input) -> None:
        old = service.machine.state
        row = service.machine.fire(input)
        if row.next is not old:
            service.since = self.now
        if row.action != "nothing":
            getattr(self, "_do_" + row.action)(service)

    def _count_death(self, service: _Service, soft: bool = False) -> bool:
        """Record an unasked death; True when it is the restart_limit-th hard one within
        restart_period (soft ones, exit 75, lengthen the pause but never count)."""
        deaths = service.deaths
        deaths.append((self.now, soft))
        while deaths and deaths[0][0] <= self.now - self.policy.restart_period:
            deaths.popleft()
        return not soft and sum(not soft for _, soft in deaths) >= self.policy.restart_limit

    def _pause(self, service: _Service) -> int:
        """first_pause, doubled for each other death within restart_period, at most max_pause."""
        recent = max(1, len(service.deaths))
        return min(self.policy.max_pause, self.policy.first_pause << min(recent - 1, 32))

    def _expire_deadlines(self) -> None:
        for service in list(self.services.values()):
            if service.deadline is None or service.deadline > self.now:
                continue
            service.deadline = None
            state = service.machine.state
            if state is State.STARTING:
                self._note(service.spec.name, f"not ready within {self.policy.start_timeout // SECOND}s: "
                                              "stopping it to start it again", "warning")
                service.pause_after_exit = True
                if self._count_death(service):
                    service.give_up_after_exit = (f"not ready {self.policy.restart_limit} times within "
                                                  f"{self.policy.restart_period // SECOND}s")
                self._fire(service, Input.START_TIMEOUT)
            elif state in (State.STOPPING, State.RESTARTING):
                self._note(service.spec.name, f"still running {self.policy.shutdown_timeout // SECOND}s "
                                              "after SIGTERM: SIGKILL", "warning")
                self._fire(service, Input.KILL_TIMEOUT)

    def _advance(self) -> None:
        """Start or stop the next service in order; report when everything is settled."""
        if self.finished:
            return
        if self.stopping:
            for service in self._in_stop_order():
                state = service.machine.state
                if state in (State.DOWN, State.FAILED, State.BLOCKED):
                    continue
                if state is State.WAITING:
                    self._fire(service, Input.STOP)
                    continue
                if state is not State.STOPPING:
                    self._fire(service, Input.STOP)
                return
            self._finish(True, "every service stopped")
            return
        if not self.running:
            return
        for service in self._in_start_order():
            state = service.machine.state
            if state is State.WAITING:
                if service.pause_until <= self.now:
                    self._fire(service, Input.TURN)
                return
            if state in UNSETTLED_STATES:
                return
        if all(s.machine.state in (State.DOWN, State.FAILED, State.BLOCKED) for s in self.services.values()):
            given_up = [s for s in self.services.values() if s.machine.state is not State.DOWN]
            reason = "; ".join(f"{s.spec.name} {s.machine.state.value}: {s.why}" for s in given_up)
            self._finish(False, reason or "no service to run")

    def _finish(self, ok: bool, reason: str) -> None:
        self.finished = True
        self._out.append(Finished(ok, reason))

    def _in_start_order(self) -> list[_Service]:
        return list(reversed(self.services.values()))

    def _in_stop_order(self) -> list[_Service]:
        return list(self.services.values())

    def _dependents(self, service: _Service) -> list[_Service]:
        kinds = set(service.spec.restart_dependencies)
        return [s for s in self.services.values()
                if s is not service and (s.spec.kind in kinds or s.spec.name in kinds)]

    def _note(self, name: str | None, text: str, level: str = "info") -> None:
        self._out.append(Note(name or "mcp", text, level))

    def _drop_removed(self) -> None:
        for name in [n for n, s in self.services.items()
                     if s.removed and s.machine.state not in PROCESS_STATES]:
            del self.services[name]

    # -- actions of the table -------------------------------------------------------------------

    def _do_wait_for_turn(self, service: _Service) -> None:
        service.pause_until = 0

    def _do_spawn(self, service: _Service) -> None:
        service.starts += 1
        service.deadline = self.now + self.policy.start_timeout
        self._out.append(Spawn(service.spec.name))

    def _do_mark_running(self, service: _Service) -> None:
        service.deadline = None
        self._note(service.spec.name, "ready")

    def _do_pause_then_start(self, service: _Service) -> None:
        service.deadline = None
        pause = self._pause(service)
        service.pause_until = self.now + pause
        self._note(service.spec.name, f"{service.last_exit}: starting it again in {pause / SECOND:g}s", "warning")
        for dependent in self._dependents(service):
            if dependent.machine.state in PROCESS_STATES:
                self._note(dependent.spec.name, f"restarting with {service.spec.name}")
            self._fire(dependent, Input.RESTART)

    def _do_start_again(self, service: _Service) -> None:
        service.deadline = None
        service.pause_until = self.now + self._pause(service) if service.pause_after_exit else 0
        service.pause_after_exit = False

    def _do_fail(self, service: _Service) -> None:
        service.deadline = None
        service.pause_after_exit, service.give_up_after_exit = False, ""
        self._note(service.spec.name, f"failed for good: {service.why or service.last_exit}", "error")
        self._block_dependents(service, service.spec.name)

    def _block_dependents(self, service: _Service, cause: str) -> None:
        """Block every service that depends on ``service`` (its restart_dependencies, and
        theirs in turn; dependencies may form cycles)."""
        for dependent in self._dependents(service):
            if dependent.machine.state in (State.FAILED, State.BLOCKED) or dependent.block_when_down:
                continue
            why = f"depends on {cause}, which failed for good"
            self._note(dependent.spec.name, f"not run: {why}", "error")
            if dependent.machine.state in PROCESS_STATES:
                dependent.block_when_down = why     # blocked once it has stopped
            else:
                dependent.why = why
            self._fire(dependent, Input.BLOCK)
            self._block_dependents(dependent, cause)

    def _do_block(self, service: _Service) -> None:
        service.pause_until = 0

    def _do_terminate(self, service: _Service) -> None:
        service.deadline = self.now + self.policy.shutdown_timeout
        self._out.append(Terminate(service.spec.name))

    def _do_kill(self, service: _Service) -> None:
        service.deadline = None
        self._out.append(Kill(service.spec.name))

    def _do_stopped(self, service: _Service) -> None:
        service.deadline = None
        if service.block_when_down:
            service.why, service.block_when_down = service.block_when_down, ""
            self._fire(service, Input.BLOCK)
        self._drop_removed()

    def _do_forget(self, service: _Service) -> None:
        service.pause_until = 0
        self._drop_removed()

    def _do_forgive(self, service: _Service) -> None:
        service.why = service.block_when_down = service.give_up_after_exit = ""
        service.pause_after_exit = False
        service.deaths.clear()
