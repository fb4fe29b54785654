"""The event loop itself (meta1.eventloop.loop): timers, iteration order, threads, signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator

import pytest

from meta1.eventloop import EventLoop


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def manual_loop(clock: ManualClock) -> Iterator[EventLoop]:
    loop = EventLoop(clock=clock)
    yield loop
    loop.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


def test_timers_fire_in_deadline_order_then_creation_order(manual_loop: EventLoop, clock: ManualClock) -> None:
    fired: list[str] = []
    manual_loop.call_later(3, lambda: fired.append("c"))
    manual_loop.call_later(1, lambda: fired.append("a1"))
    manual_loop.call_at(clock.now + 1, lambda: fired.append("a2"))
    manual_loop.call_later(2, lambda: fired.append("b"))
    manual_loop.run_once(0)
    assert fired == []
    clock.now += 1
    manual_loop.run_once(0)
    assert fired == ["a1", "a2"]
    clock.now += 5
    manual_loop.run_once(0)
    assert fired == ["a1", "a2", "b", "c"]


def test_a_timer_in_the_past_runs_on_the_next_iteration(manual_loop: EventLoop, clock: ManualClock) -> None:
    fired: list[int] = []
    timer = manual_loop.call_at(clock.now - 10, lambda: fired.append(1))
    assert timer.when == clock.now - 10
    manual_loop.run_once(0)
    assert fired == [1]


def test_cancelled_timers_do_not_fire(manual_loop: EventLoop, clock: ManualClock) -> None:
    fired: list[str] = []
    keep = manual_loop.call_later(1, lambda: fired.append("keep"))
    drop = manual_loop.call_later(1, lambda: fired.append("drop"))
    drop.cancel()
    drop.cancel()  # twice is harmless
    assert drop.cancelled and not keep.cancelled
    clock.now += 2
    manual_loop.run_once(0)
    assert fired == ["keep"]
    keep.cancel()  # after it fired: harmless, and no effect on the heap's bookkeeping
    assert manual_loop._cancelled_timers == 0


def test_a_timer_may_cancel_a_later_timer_due_in_the_same_iteration(manual_loop: EventLoop, clock: ManualClock) -> None:
    fired: list[str] = []
    second = manual_loop.call_later(2, lambda: fired.append("second"))
    manual_loop.call_later(1, lambda: (fired.append("first"), second.cancel()))
    clock.now += 5
    manual_loop.run_once(0)
    assert fired == ["first"]


def test_a_timer_rearmed_with_zero_delay_waits_for_the_next_iteration(manual_loop: EventLoop) -> None:
    runs: list[int] = []

    def again() -> None:
        runs.append(1)
        manual_loop.call_later(0, again)

    manual_loop.call_later(0, again)
    manual_loop.run_once(0)
    manual_loop.run_once(0)
    assert len(runs) == 2  # the manual clock never moves: without the rule this would never return


def test_cancelled_timers_are_compacted_when_more_than_half(manual_loop: EventLoop) -> None:
    timers = [manual_loop.call_later(10 + i, lambda: None) for i in range(100)]
    for timer in timers[:50]:
        timer.cancel()
    assert len(manual_loop._timers) == 100  # exactly half: lazily kept
    timers[50].cancel()
    assert len(manual_loop._timers) == 49
    assert all(not entry[2].cancelled for entry in manual_loop._timers)
    assert manual_loop._cancelled_timers == 0


def test_cancelled_timers_at_the_top_do_not_shorten_the_wait(manual_loop: EventLoop, clock: ManualClock) -> None:
    fired: list[str] = []
    manual_loop.call_later(1, lambda: fired.append("early")).cancel()
    manual_loop.call_later(5, lambda: fired.append("late"))
    assert manual_loop._next_deadline() == clock.now + 5
    clock.now += 5
    manual_loop.run_once(0)
    assert fired == ["late"]


def test_the_select_timeout_is_the_next_timer_deadline(loop: EventLoop) -> None:
    fired: list[float] = []
    start = loop.time()
    loop.call_later(0.05, lambda: fired.append(loop.time()))
    loop.run_once(None)  # blocks in select until the deadline, then fires the timer
    assert fired and fired[0] - start >= 0.05


def test_one_iteration_runs_timers_then_io_then_call_soon(loop: EventLoop) -> None:
    order: list[str] = []
    left, right = socket.socketpair()
    try:
        right.send(b"x")
        loop.call_soon(lambda: order.append("soon"))
        loop.call_at(loop.time() - 1, lambda: order.append("timer"))
        loop.add_reader(left, lambda: (order.append("io"), loop.remove_reader(left)))
        assert loop.run_until(lambda: len(order) == 3, timeout=5)
        assert order == ["timer", "io", "soon"]
    finally:
        left.close()
        right.close()


def test_call_soon_is_fifo_and_callbacks_queued_meanwhile_wait_an_iteration(loop: EventLoop) -> None:
    order: list[str] = []
    loop.call_soon(lambda: (order.append("a"), loop.call_soon(lambda: order.append("c"))))
    loop.call_soon(lambda: order.append("b"))
    loop.run_once()
    assert order == ["a", "b"]
    loop.run_once()
    assert order == ["a", "b", "c"]


def test_a_removed_reader_is_not_called_in_the_same_iteration(loop: EventLoop) -> None:
    calls: list[str] = []
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        (a, a_peer), (b, b_peer) = pairs
        a_peer.send(b"x")
        b_peer.send(b"x")
        # Whichever runs first removes the other: exactly one runs.
        loop.add_reader(a, lambda: (calls.append("a"), loop.remove_reader(b), loop.remove_reader(a)))
        loop.add_reader(b, lambda: (calls.append("b"), loop.remove_reader(a), loop.remove_reader(b)))
        loop.run_once(1)
        assert len(calls) == 1
        assert not loop.remove_reader(a) and not loop.remove_reader(b)
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_reader_and_writer_on_one_descriptor(loop: EventLoop) -> None:
    left, right = socket.socketpair()
    events: list[str] = []
    try:
        loop.add_writer(left, lambda: (events.append("w"), loop.remove_writer(left)))
        loop.add_reader(left, lambda: (events.append("r"), left.recv(10)))
        assert loop.run_until(lambda: "w" in events, timeout=5)
        right.send(b"ping")
        assert loop.run_until(lambda: "r" in events, timeout=5)
        assert loop.remove_reader(left)
        assert not loop.remove_writer(left)
    finally:
        left.close()
        right.close()


def test_an_exception_in_a_callback_is_logged_and_the_loop_goes_on(
        loop: EventLoop, caplog: pytest.LogCaptureFixture) -> None:
    done: list[bool] = []

    def broken() -> None:
        raise ValueError("boom")

    loop.call_soon(broken)
    loop.call_later(0, broken)
    loop.call_soon(lambda: done.append(True))
    with caplog.at_level(logging.ERROR, logger="meta1.eventloop"):
        assert loop.run_until(lambda: bool(done), timeout=5)
        loop.run_once()
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ValueError, ValueError]


def test_stop_ends_run(loop: EventLoop) -> None:
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            loop.stop()
        else:
            loop.call_soon(tick)

    loop.call_soon(tick)
    loop.run()
    assert len(ticks) == 3


def test_run_until_gives_up_after_its_timeout(loop: EventLoop) -> None:
    assert loop.run_until(lambda: False, timeout=0.05) is False
    assert loop.run_until(lambda: True) is True


def test_run_is_not_reentrant(loop: EventLoop) -> None:
    errors: list[BaseException] = []

    def nested() -> None:
        try:
            loop.run_once()
        except RuntimeError as exc:
            errors.append(exc)

    loop.call_soon(nested)
    loop.run_once()
    assert len(errors) == 1


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop: EventLoop) -> None:
    seen: list[int] = []
    started = threading.Event()

    def other_thread() -> None:
        started.wait()
        for i in range(1000):
            loop.call_soon_threadsafe(lambda i=i: seen.append(i))

    thread = threading.Thread(target=other_thread)
    thread.start()
    loop.call_soon(started.set)
    # No timer and no I/O: only the self-pipe can wake the select.
    assert loop.run_until(lambda: len(seen) == 1000, timeout=10)
    thread.join()
    assert seen == list(range(1000))
    loop.run_once(0)
    assert not loop._wakeup_pending  # the pipe is drained


def test_loop_thread_is_woken_for_stop_from_another_thread(loop: EventLoop) -> None:
    thread = threading.Thread(target=lambda: loop.call_soon_threadsafe(loop.stop))
    loop.call_soon(thread.start)
    loop.run()  # returns only because of the other thread
    thread.join()


def test_signal_handler_runs_in_the_loop_not_in_the_signal_handler(loop: EventLoop) -> None:
    calls: list[int] = []
    previous = signal.getsignal(signal.SIGUSR1)
    loop.add_signal_handler(signal.SIGUSR1, lambda: calls.append(threading.get_ident()))
    os.kill(os.getpid(), signal.SIGUSR1)
    # The interpreter has run its Python-level handler by now; ours has not run yet.
    assert calls == []
    assert loop.run_until(lambda: bool(calls), timeout=5)
    assert calls == [threading.get_ident()]
    os.kill(os.getpid(), signal.SIGUSR1)
    assert loop.run_until(lambda: len(calls) == 2, timeout=5)
    assert loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert not loop.remove_signal_handler(signal.SIGUSR1)


def test_close_restores_signal_handling_and_refuses_further_use(clock: ManualClock) -> None:
    loop = EventLoop(clock=clock)
    previous_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous_wakeup)
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    loop.close()
    loop.close()  # twice is harmless
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert signal.set_wakeup_fd(previous_wakeup) == previous_wakeup
    for use in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                lambda: loop.call_soon_threadsafe(print), lambda: loop.run_once()):
        with pytest.raises(RuntimeError):
            use()
    assert loop.remove_reader(0) is False


def test_no_lost_wakeup_when_threads_race_the_drain():
    """Regression: threads calling call_soon_threadsafe while the loop drains its wake-up
    pipe must never leave the loop asleep with callbacks queued (qmgr stalled under
    smtp-source load before the wake-up flag was cleared after the drain). Each thread
    waits for its callback before the next call, so the loop goes back to sleep in
    select between calls; a lost wake-up shows as a callback that never runs."""
    import threading
    from meta1.eventloop import EventLoop

    loop = EventLoop()
    rounds, threads_n = 3000, 4
    lost = []

    def worker():
        for _ in range(rounds):
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(5):
                lost.append(1)
                break
        loop.call_soon_threadsafe(lambda: None)   # wake the loop to see this thread end

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    loop.run_until(lambda: not any(t.is_alive() for t in threads), timeout=60)
    for t in threads:
        t.join()
    loop.close()
    assert not lost


def test_an_alarm_follows_next_wakeup_and_replaces_its_timer() -> None:
    """Alarm: set(when) replaces the previous timer, set(None) cancels, the callback runs once."""
    from meta1.eventloop import Alarm
    loop = EventLoop()
    fired: list[int] = []
    now = {"us": 1_000_000}
    alarm = Alarm(loop, lambda: now["us"], lambda: fired.append(now["us"]))
    alarm.set(now["us"] + 3_600_000_000)        # an hour away: replaced before it fires
    alarm.set(now["us"] + 20_000)               # 20 ms
    assert loop.run_until(lambda: fired, timeout=5)
    assert fired == [1_000_000] and alarm.timer is None
    alarm.set(now["us"] + 20_000)
    alarm.set(None)
    loop.run_once(0.05)
    assert fired == [1_000_000]
    alarm.set(now["us"] - 5_000_000)             # in the past: at once
    assert loop.run_until(lambda: len(fired) == 2, timeout=5)
    loop.close()
