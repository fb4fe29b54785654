"""The life of one service under mcp: its states, inputs and one transition table.

Responsibilities
    This file *is* what mcp does with a daemon it supervises (reference meta1.md §1.7,
    B73-B75): it waits for its turn in the start order, is started, becomes ready, dies and
    is started again after a pause, is stopped, or fails for good — and a service that
    another one needs goes down with it. :mod:`meta1.mcp.supervisor` fires every change of
    a service's state through ``TABLE``; a pair not in the table is a programming error
    (:class:`meta1.machine.ProtocolViolation`) except ``READY`` out of turn, which the
    supervisor ignores (a late line on a pipe).

States
    ``DOWN`` (not running, not wanted), ``WAITING`` (wanted: waits for its turn in the
    start order and for the end of its restart pause), ``STARTING`` (its process runs, it
    has not said ``ready`` yet), ``RUNNING``, ``STOPPING`` (asked to stop; down when it
    has exited), ``RESTARTING`` (asked to stop because a service it depends on died;
    wanted again when it has exited), ``FAILED`` (failed for good: a configuration error,
    or too many deaths in ``restart_period``) and ``BLOCKED`` (a service it depends on
    failed for good, so it is not started either — MeTA1 2013-12-22/24).

Inputs
    The supervisor classifies an exit before firing it: ``DIED`` (any exit mcp did not
    ask for that may heal: a crash, a signal, exit status 75), ``DIED_FOR_GOOD`` (exit
    status 78 — "configuration error, do not restart me" — or the restart limit reached).
    An exit that mcp asked for is also ``DIED``/``DIED_FOR_GOOD``: only the state says
    whether it was expected.

Reading the table
    Shutdown wins over everything: ``STOP`` in ``RESTARTING`` makes it ``STOPPING``, and
    neither ``RESTART`` nor ``BLOCK`` changes a ``STOPPING`` service. A service that dies
    for good while mcp restarts it is ``FAILED`` even so: its own exit status says it
    cannot run. ``RESET`` (a reloaded configuration) gives ``FAILED`` and ``BLOCKED``
    services another chance.
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    DOWN = "down"
    WAITING = "waiting"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    FAILED = "failed"
    BLOCKED = "blocked"


class Input(FastEnum):
    WANT = "mcp wants it running (start, or a reload)"
    TURN = "its turn in the start order, its pause over"
    READY = "it said ready on its supervision pipe"
    DIED = "it exited; it may run again"
    DIED_FOR_GOOD = "it exited with 78 (configuration), or died restart_limit times"
    START_TIMEOUT = "it did not say ready within start_timeout"
    STOP = "mcp stops it (shutdown, or removed by a reload)"
    RESTART = "a service it depends on died: stop it, start it again"
    KILL_TIMEOUT = "it did not exit within shutdown_timeout of the stop"
    BLOCK = "a service it depends on failed for good"
    RESET = "a reloaded configuration: try again"


S, I, T = State, Input, Transition

#: States in which the service has a process.
PROCESS_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.RESTARTING})
#: States that hold up the services after it in the start order.
UNSETTLED_STATES = frozenset({S.WAITING, S.STARTING, S.STOPPING, S.RESTARTING})


def _rows() -> dict[tuple[State, Input], Transition[State]]:
    table: dict[tuple[State, Input], Transition[State]] = {
        (S.DOWN, I.WANT): T("wait_for_turn", S.WAITING),
        (S.DOWN, I.STOP): T("nothing", S.DOWN),
        (S.DOWN, I.RESTART): T("nothing", S.DOWN),
        (S.DOWN, I.BLOCK): T("block", S.BLOCKED),
        (S.DOWN, I.RESET): T("nothing", S.DOWN),

        (S.WAITING, I.WANT): T("nothing", S.WAITING),
        (S.WAITING, I.TURN): T("spawn", S.STARTING),
        (S.WAITING, I.STOP): T("forget", S.DOWN),
        (S.WAITING, I.RESTART): T("nothing", S.WAITING),
        (S.WAITING, I.BLOCK): T("block", S.BLOCKED),
        (S.WAITING, I.RESET): T("nothing", S.WAITING),

        (S.STARTING, I.WANT): T("nothing", S.STARTING),
        (S.STARTING, I.READY): T("mark_running", S.RUNNING),
        (S.STARTING, I.DIED): T("pause_then_start", S.WAITING),
        (S.STARTING, I.DIED_FOR_GOOD): T("fail", S.FAILED),
        (S.STARTING, I.START_TIMEOUT): T("terminate", S.RESTARTING),
        (S.STARTING, I.STOP): T("terminate", S.STOPPING),
        (S.STARTING, I.RESTART): T("terminate", S.RESTARTING),
        (S.STARTING, I.BLOCK): T("terminate", S.STOPPING),
        (S.STARTING, I.RESET): T("nothing", S.STARTING),

        (S.RUNNING, I.WANT): T("nothing", S.RUNNING),
        (S.RUNNING, I.DIED): T("pause_then_start", S.WAITING),
        (S.RUNNING, I.DIED_FOR_GOOD): T("fail", S.FAILED),
        (S.RUNNING, I.STOP): T("terminate", S.STOPPING),
        (S.RUNNING, I.RESTART): T("terminate", S.RESTARTING),
        (S.RUNNING, I.BLOCK): T("terminate", S.STOPPING),
        (S.RUNNING, I.RESET): T("nothing", S.RUNNING),

        (S.STOPPING, I.WANT): T("nothing", S.STOPPING),
        (S.STOPPING, I.DIED): T("stopped", S.DOWN),
        (S.STOPPING, I.DIED_FOR_GOOD): T("stopped", S.DOWN),
        (S.STOPPING, I.STOP): T("nothing", S.STOPPING),
        (S.STOPPING, I.RESTART): T("nothing", S.STOPPING),
        (S.STOPPING, I.KILL_TIMEOUT): T("kill", S.STOPPING),
        (S.STOPPING, I.BLOCK): T("nothing", S.STOPPING),
        (S.STOPPING, I.RESET): T("nothing", S.STOPPING),

        (S.RESTARTING, I.WANT): T("nothing", S.RESTARTING),
        (S.RESTARTING, I.DIED): T("start_again", S.WAITING),
        (S.RESTARTING, I.DIED_FOR_GOOD): T("fail", S.FAILED),
        (S.RESTARTING, I.STOP): T("nothing", S.STOPPING),
        (S.RESTARTING, I.RESTART): T("nothing", S.RESTARTING),
        (S.RESTARTING, I.KILL_TIMEOUT): T("kill", S.RESTARTING),
        (S.RESTARTING, I.BLOCK): T("nothing", S.STOPPING),
        (S.RESTARTING, I.RESET): T("nothing", S.RESTARTING),

        (S.FAILED, I.WANT): T("nothing", S.FAILED),
        (S.FAILED, I.STOP): T("nothing", S.FAILED),
        (S.FAILED, I.RESTART): T("nothing", S.FAILED),
        (S.FAILED, I.BLOCK): T("nothing", S.FAILED),
        (S.FAILED, I.RESET): T("forgive", S.DOWN),

        (S.BLOCKED, I.WANT): T("nothing", S.BLOCKED),
        (S.BLOCKED, I.STOP): T("nothing", S.BLOCKED),
        (S.BLOCKED, I.RESTART): T("nothing", S.BLOCKED),
        (S.BLOCKED, I.BLOCK): T("nothing", S.BLOCKED),
        (S.BLOCKED, I.RESET): T("forgive", S.DOWN),
    }
    return table


TABLE = _rows()
