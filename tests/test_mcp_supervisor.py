"""mcp's supervisor on a manual clock: start and stop order, restarts with their
dependencies, backoff, giving up (exit 78, restart_limit), blocked dependents, timeouts,
reloads — as scenarios, the table exhaustively, a Hypothesis state machine whose
invariants are the promises of spec/mcp.md, and the refinement of spec/models/supervisor.py."""

from __future__ import annotations

import re
import signal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meta1.machine import ProtocolViolation
from meta1.mcp.states import PROCESS_STATES, TABLE, Input, State
from meta1.mcp.supervisor import (SECOND, ExitStatus, Exited, Finished, Kill, Note, Ready, Reload, ServiceSpec,
                                  Spawn, Start, Stop, Supervisor, SupervisorPolicy, Terminate, Tick)
from refinement import Refinement, load_model

# MeTA1's example order (meta1.conf(5)): qmgr, smtps, smtpc, smar — started smar first.
META1_EXAMPLE = (
    ServiceSpec("qmgr", ("smtps", "smtpc", "smar")),
    ServiceSpec("smtps"),
    ServiceSpec("smtpc"),
    ServiceSpec("smar", ("smtps", "qmgr")),
)
START_ORDER = ["smar", "smtpc", "smtps", "qmgr"]
STOP_ORDER = ["qmgr", "smtps", "smtpc", "smar"]
CRASH = ExitStatus(signal=signal.SIGKILL)


class World:
    """A supervisor, a manual clock, and the processes its actions would have made."""

    def __init__(self, services=META1_EXAMPLE, policy: SupervisorPolicy = SupervisorPolicy()):
        self.supervisor = Supervisor(services, policy)
        self.now = 1_000 * SECOND
        self.running: set[str] = set()
        self.log: list[object] = []

    def handle(self, event) -> list[object]:
        actions = self.supervisor.handle(event, self.now)
        for action in actions:
            if isinstance(action, Spawn):
                assert action.name not in self.running, f"{action.name} spawned twice"
                self.running.add(action.name)
        self.log += actions
        return actions

    def spawned(self, actions) -> list[str]:
        return [a.name for a in actions if isinstance(a, Spawn)]

    def start_all(self) -> None:
        """Start, each service ready as soon as it is spawned."""
        actions = self.handle(Start())
        while spawned := self.spawned(actions):
            actions = self.handle(Ready(spawned[0]))

    def exit(self, name: str, status: ExitStatus = CRASH) -> list[object]:
        self.running.discard(name)
        return self.handle(Exited(name, status))

    def advance(self, seconds: float) -> list[object]:
        self.now += int(seconds * SECOND)
        return self.handle(Tick())

    def settle(self, seconds: int = 120) -> list[str]:
        """Answer every start with "ready", let the clock run a second at a time while
        services wait for their pause; the services spawned meanwhile, in order."""
        mark = len(self.log)
        for _ in range(seconds):
            starting = [n for n in self.running if self.state(n) is State.STARTING]
            if starting:
                self.handle(Ready(starting[0]))
            elif any(state is State.WAITING for state in self.states().values()):
                self.advance(1)
            else:
                break
        return self.spawned(self.log[mark:])

    def state(self, name: str) -> State:
        return self.supervisor.state_of(name)

    def states(self) -> dict[str, State]:
        return {v.name: v.state for v in self.supervisor.view()}


def names(actions, kind) -> list[str]:
    return [a.name for a in actions if isinstance(a, kind)]


# -- order --------------------------------------------------------------------------------------

def test_start_one_at_a_time_in_reverse_file_order_b73() -> None:
    world = World()
    order = []
    actions = world.handle(Start())
    while spawned := world.spawned(actions):
        assert len(spawned) == 1            # the next waits for this one's "ready"
        order += spawned
        assert world.advance(5) == []       # nothing else starts meanwhile
        actions = world.handle(Ready(spawned[0]))
    assert order == START_ORDER
    assert set(world.states().values()) == {State.RUNNING}


def test_stop_one_at_a_time_in_file_order_then_finished() -> None:
    world = World()
    world.start_all()
    actions = world.handle(Stop())
    order = []
    while terminated := names(actions, Terminate):
        assert len(terminated) == 1
        order += terminated
        actions = world.exit(terminated[0], ExitStatus(code=0))
    assert order == STOP_ORDER
    assert actions[-1] == Finished(True, "every service stopped")


# -- restarts -----------------------------------------------------------------------------------

def test_a_death_restarts_the_service_and_its_restart_dependencies_b74() -> None:
    world = World()
    world.start_all()
    actions = world.exit("qmgr")
    assert world.state("qmgr") is State.WAITING
    assert sorted(names(actions, Terminate)) == ["smar", "smtpc", "smtps"]
    assert any(isinstance(a, Note) and "starting it again in 1s" in a.text for a in actions)
    mark = len(world.log)
    for name in ("smtps", "smtpc", "smar"):
        world.exit(name, ExitStatus(code=0))     # they stop as asked
    # Started again in the start order; qmgr after its 1 s pause.
    order = world.spawned(world.log[mark:]) + world.settle()
    assert order == START_ORDER
    assert set(world.states().values()) == {State.RUNNING}
    assert world.supervisor.view()[0].starts == 2


def test_a_service_without_dependencies_restarts_alone() -> None:
    world = World()
    world.start_all()
    actions = world.exit("smtpc")
    assert names(actions, Terminate) == []
    assert world.spawned(world.advance(1)) == ["smtpc"]


def test_repeated_deaths_back_off_then_fail_and_block_dependents_t68() -> None:
    world = World(policy=SupervisorPolicy(restart_limit=5, restart_period=60 * SECOND))
    world.start_all()
    pauses = []
    for _ in range(4):
        world.exit("smtpc")
        waited = 0
        while not world.spawned(world.advance(0.5)):
            waited += 0.5
        pauses.append(waited + 0.5)
        world.handle(Ready("smtpc"))
    assert pauses == [1, 2, 4, 8]               # doubling: no spinning
    actions = world.exit("smtpc")                # the 5th death within 60 s
    assert world.state("smtpc") is State.FAILED
    assert any(isinstance(a, Note) and a.level == "error" and "died 5 times within 60s" in a.text
               for a in actions)
    assert world.advance(3600) == []             # never started again
    assert {world.state(n) for n in ("qmgr", "smtps", "smar")} == {State.RUNNING}


def test_deaths_spread_over_more_than_restart_period_never_fail() -> None:
    world = World(policy=SupervisorPolicy(restart_limit=3, restart_period=10 * SECOND))
    world.start_all()
    for _ in range(10):
        world.advance(20)
        world.exit("smtpc")
        assert world.spawned(world.advance(1)) == ["smtpc"]
        world.handle(Ready("smtpc"))
    assert world.state("smtpc") is State.RUNNING


def test_exit_78_fails_at_once_and_its_dependents_stay_down_b75() -> None:
    world = World()
    world.start_all()
    actions = world.exit("smar", ExitStatus(code=78))
    assert world.state("smar") is State.FAILED
    # smar's restart_dependencies (smtps, qmgr) and qmgr's in turn (smtpc) are stopped, not restarted.
    assert sorted(names(actions, Terminate)) == ["qmgr", "smtpc", "smtps"]
    for name in ("qmgr", "smtps", "smtpc"):
        actions = world.exit(name, ExitStatus(code=0))
    assert {world.state(n) for n in ("qmgr", "smtps", "smtpc")} == {State.BLOCKED}
    assert isinstance(actions[-1], Finished) and not actions[-1].ok
    assert "smar failed: exit status 78 (configuration error)" in actions[-1].reason
    assert "qmgr blocked: depends on smar, which failed for good" in actions[-1].reason


def test_a_failed_service_without_dependents_leaves_the_others_running() -> None:
    world = World()
    world.start_all()
    actions = world.exit("smtpc", ExitStatus(code=78))
    assert names(actions, Terminate) == [] and not any(isinstance(a, Finished) for a in actions)
    assert world.states() == {"qmgr": State.RUNNING, "smtps": State.RUNNING, "smtpc": State.FAILED,
                              "smar": State.RUNNING}


def test_exit_75_is_soft_retried_with_growing_pauses_never_failed() -> None:
    """qmgr exits 75 ("another qmgr holds the queue lock") again and again: never failed
    for good, restarted after pauses that double up to max_pause."""
    world = World(services=(ServiceSpec("qmgr"),),
                  policy=SupervisorPolicy(restart_limit=3, restart_period=3600 * SECOND))
    world.start_all()
    pauses = []
    for _ in range(9):
        world.exit("qmgr", ExitStatus(code=75))
        waited = 0
        while not world.spawned(world.advance(1)):
            waited += 1
        pauses.append(waited + 1)
        world.handle(Ready("qmgr"))
    assert pauses == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert world.state("qmgr") is State.RUNNING


def test_a_service_never_ready_is_stopped_and_started_again() -> None:
    world = World(services=(ServiceSpec("smtps"),), policy=SupervisorPolicy(start_timeout=30 * SECOND))
    world.handle(Start())
    actions = world.advance(30)
    assert names(actions, Terminate) == ["smtps"] and world.state("smtps") is State.RESTARTING
    world.exit("smtps", ExitStatus(signal=signal.SIGTERM))
    assert world.state("smtps") is State.WAITING
    assert world.spawned(world.advance(1)) == ["smtps"]


def test_a_service_that_ignores_sigterm_gets_sigkill() -> None:
    world = World(services=(ServiceSpec("smtps"),), policy=SupervisorPolicy(shutdown_timeout=10 * SECOND))
    world.start_all()
    world.handle(Stop())
    assert names(world.advance(9.9), Kill) == []
    assert names(world.advance(0.1), Kill) == ["smtps"]
    actions = world.exit("smtps", ExitStatus(signal=signal.SIGKILL))
    assert actions[-1] == Finished(True, "every service stopped")


def test_stop_while_a_service_waits_for_its_pause() -> None:
    """A service waiting for its restart pause has no process: it is down at once, it is
    never started again, and the next one in the stop order is stopped."""
    world = World(services=(ServiceSpec("smtpc"), ServiceSpec("qmgr")))
    world.start_all()
    world.exit("smtpc")
    actions = world.handle(Stop())
    assert world.state("smtpc") is State.DOWN and names(actions, Terminate) == ["qmgr"]
    assert world.spawned(world.advance(5)) == []
    assert world.exit("qmgr", ExitStatus(code=0))[-1] == Finished(True, "every service stopped")


def test_nothing_to_run_finishes() -> None:
    world = World(services=())
    assert world.handle(Start()) == [Finished(False, "no service to run")]


# -- reload -------------------------------------------------------------------------------------

def test_reload_restarts_changed_services_and_forgives_failed_ones() -> None:
    world = World()
    world.start_all()
    world.exit("smtpc", ExitStatus(code=78))
    changed = tuple(ServiceSpec(s.name, s.restart_dependencies, "v2" if s.name == "smtps" else "")
                    for s in META1_EXAMPLE)
    actions = world.handle(Reload(changed))
    # smtps (changed) is stopped; smtpc (failed) gets another chance, in the start order.
    assert names(actions, Terminate) == ["smtps"] and world.spawned(actions) == ["smtpc"]
    mark = len(world.log)
    world.exit("smtps", ExitStatus(code=0))
    assert world.spawned(world.log[mark:]) + world.settle() == ["smtps"]
    assert set(world.states().values()) == {State.RUNNING}


def test_reload_adds_and_removes_services() -> None:
    world = World(services=(ServiceSpec("qmgr"), ServiceSpec("smtps")))
    world.start_all()
    actions = world.handle(Reload((ServiceSpec("qmgr"), ServiceSpec("smtps:submission"))))
    assert names(actions, Terminate) == ["smtps"] and world.spawned(actions) == []
    actions = world.exit("smtps", ExitStatus(code=0))     # the replacement waits for it
    assert world.spawned(actions) == ["smtps:submission"]
    assert [v.name for v in world.supervisor.view()] == ["qmgr", "smtps:submission"]


# -- the table ----------------------------------------------------------------------------------

# Pairs deliberately missing: the supervisor never fires them (READY out of turn is
# ignored before firing; exits of services without a process are ignored; timers and
# turns only fire in the state they belong to).
ABSENT = ({(s, Input.READY) for s in State if s is not State.STARTING}
          | {(s, i) for s in State if s not in PROCESS_STATES for i in (Input.DIED, Input.DIED_FOR_GOOD)}
          | {(s, Input.TURN) for s in State if s is not State.WAITING}
          | {(s, Input.START_TIMEOUT) for s in State if s is not State.STARTING}
          | {(s, Input.KILL_TIMEOUT) for s in State if s not in (State.STOPPING, State.RESTARTING)})


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("input", list(Input))
def test_every_pair_has_a_row_or_is_deliberately_absent(state: State, input: Input) -> None:
    assert ((state, input) in TABLE) != ((state, input) in ABSENT)


def test_firing_an_absent_pair_is_a_protocol_violation() -> None:
    world = World(services=(ServiceSpec("smtps"),))
    with pytest.raises(ProtocolViolation):
        world.supervisor.services["smtps"].machine.fire(Input.TURN)


# -- a Hypothesis state machine -----------------------------------------------------------------

STATUSES = st.sampled_from([CRASH, ExitStatus(code=0), ExitStatus(code=1), ExitStatus(code=75),
                            ExitStatus(code=78), ExitStatus(signal=signal.SIGTERM)])


class SupervisorModel(RuleBasedStateMachine):
    """Random readiness, exits, clock steps, stops and reloads; the promises hold after each."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(policy=SupervisorPolicy(restart_limit=3, restart_period=20 * SECOND,
                                                   start_timeout=30 * SECOND, shutdown_timeout=10 * SECOND))
        self.world.handle(Start())
        self.died_unasked: dict[str, int] = {}     # service -> when it died on its own
        self.finished: list[Finished] = []

    def _take(self, actions) -> None:
        for action in actions:
            if isinstance(action, Spawn) and action.name in self.died_unasked:
                # No restart loop: a service that died on its own waits first_pause at least.
                assert self.world.now - self.died_unasked.pop(action.name) >= SECOND, action
            if isinstance(action, Finished):
                self.finished.append(action)

    @precondition(lambda self: any(self.world.state(n) is State.STARTING for n in self.world.running))
    @rule(data=st.data())
    def ready(self, data) -> None:
        starting = sorted(n for n in self.world.running if self.world.state(n) is State.STARTING)
        self._take(self.world.handle(Ready(data.draw(st.sampled_from(starting)))))

    @precondition(lambda self: self.world.running)
    @rule(data=st.data(), status=STATUSES)
    def exit(self, data, status) -> None:
        name = data.draw(st.sampled_from(sorted(self.world.running)))
        if self.world.state(name) in (State.STARTING, State.RUNNING):
            self.died_unasked[name] = self.world.now
        self._take(self.world.exit(name, status))

    @rule(seconds=st.sampled_from([0.5, 1, 5, 31, 61]))
    def advance(self, seconds) -> None:
        self._take(self.world.advance(seconds))

    @rule()
    def stop(self) -> None:
        self._take(self.world.handle(Stop()))

    @rule(changed=st.sampled_from(["qmgr", "smtps", "smar"]))
    def reload(self, changed) -> None:
        services = tuple(ServiceSpec(s.name, s.restart_dependencies, str(self.world.now) if s.name == changed else "")
                         for s in META1_EXAMPLE)
        self.died_unasked.clear()       # the operator's reload may start anything at once
        self._take(self.world.handle(Reload(services)))

    @invariant()
    def processes_match_states(self) -> None:
        for view in self.world.supervisor.view():
            assert (view.name in self.world.running) == (view.state in PROCESS_STATES), (view, self.world.running)

    @invariant()
    def dependents_of_a_failed_service_stay_down(self) -> None:
        sup = self.world.supervisor
        for service in sup.services.values():
            if service.machine.state is State.FAILED:
                for dependent in sup._dependents(service):
                    assert dependent.machine.state in (State.FAILED, State.BLOCKED, State.STOPPING), \
                        (service.spec.name, dependent.spec.name, dependent.machine.state)

    @invariant()
    def finished_only_when_nothing_runs(self) -> None:
        if self.finished:
            assert not self.world.running


TestSupervisorModel = SupervisorModel.TestCase
TestSupervisorModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- refinement: the real supervisor against spec/models/supervisor.py ------------------------------

class SupervisorRefinement(Refinement):
    """Random crashes, exits 78 and clock steps on the real supervisor; after each, the
    abstract state must be the model's, or one the model reaches in a few steps: every
    behaviour of the code is one the model allows."""

    model, _ = load_model("supervisor")
    internal = re.compile(r"\w+ restarted")
    # One real event (a clock step, say) may be several model steps (qmgr restarts,
    # then smtps with it): one per service, and one more.
    depth = 4

    def __init__(self) -> None:
        super().__init__()
        specs = (ServiceSpec("smtps"), ServiceSpec("qmgr", ("smtps",)), ServiceSpec("smar", ("qmgr", "smtps")))
        self.world = World(services=specs, policy=SupervisorPolicy(restart_limit=2, restart_period=10**6 * SECOND))
        self.world.start_all()
        self.begin(self.model.initial()[0])

    def abstraction(self) -> tuple:
        """Per service (model order) its state and its counted deaths; processes still
        starting or restarting with a dependency count as running, stopping ones for
        good as blocked (where they are going)."""
        view = []
        for name in ("smtps", "qmgr", "smar"):
            service = self.world.supervisor.services[name]
            state = {State.RUNNING: "running", State.STARTING: "running", State.RESTARTING: "running",
                     State.WAITING: "waiting", State.FAILED: "failed", State.BLOCKED: "blocked",
                     State.STOPPING: "blocked"}[service.machine.state]
            view.append((state, sum(not soft for _, soft in service.deaths)))
        return tuple(view)

    def projection(self, state) -> tuple:
        return tuple((service.state, service.deaths) for service in state)

    def _settle(self) -> None:
        """Let starting services say ready and stopping ones exit, as the daemons would."""
        for _ in range(20):
            moved = False
            for name in list(self.world.running):
                state = self.world.state(name)
                if state is State.STARTING:
                    self.world.handle(Ready(name))
                    moved = True
                elif state in (State.STOPPING, State.RESTARTING):
                    self.world.exit(name, ExitStatus(code=0))
                    moved = True
            if not moved:
                return

    @precondition(lambda self: any(self.world.state(n) is State.RUNNING for n in self.world.running))
    @rule(data=st.data(), code78=st.booleans())
    def dies(self, data, code78) -> None:
        name = data.draw(st.sampled_from(sorted(n for n in self.world.running
                                                if self.world.state(n) is State.RUNNING)))
        self.world.exit(name, ExitStatus(code=78) if code78 else CRASH)
        self._settle()
        self.step(f"{name} exits 78" if code78 else f"{name} crashes")

    @rule(seconds=st.sampled_from([1, 2, 4, 60]))
    def clock(self, seconds) -> None:
        self.world.advance(seconds)
        self._settle()
        self.step()


TestSupervisorRefinement = SupervisorRefinement.TestCase
TestSupervisorRefinement.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
