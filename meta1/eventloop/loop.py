"""The event loop: timers, readiness callbacks, thread wake-ups and signals on ``selectors``.

Responsibilities
    Run every daemon's callbacks in one thread: timers (a monotonic heap), file-descriptor
    readiness (``add_reader``/``add_writer``), callbacks queued with ``call_soon``, callbacks
    queued from other threads (``call_soon_threadsafe``) and signal handlers. Buffered
    connections are built on top of it in :mod:`meta1.eventloop.connection`, threads for
    blocking work in :mod:`meta1.eventloop.workers`. ``spec/eventloop.md`` is the prose.

Data it owns
    * the selector, with one :class:`_Handlers` (reader, writer) per registered descriptor;
    * the timer heap of ``(when, seq, Timer)``; ``seq`` keeps timers with the same deadline
      in the order they were created;
    * the ready queue (a ``deque``: ``append`` and ``popleft`` are atomic in CPython, so
      other threads may append to it without a lock);
    * the self-pipe: a non-blocking pipe whose read end is registered like any reader.
      Other threads write ``b"\\0"`` to it to wake a sleeping ``select``; the C-level signal
      handler writes the signal number to it (``signal.set_wakeup_fd``).

One iteration
    1. ``select`` with a timeout: 0 if callbacks are queued, else until the earliest live
       timer (none: block until I/O), shortened to the caller's ``run_once`` limit;
    2. timers due — all timers whose deadline has passed at that moment, in deadline order;
       a timer scheduled by one of them waits for the next iteration, so a callback that
       re-arms itself with delay 0 cannot starve I/O;
    3. ready I/O, in the order the selector reported it; a callback removed by an earlier
       callback of the same iteration is not called;
    4. the ``call_soon`` queue as it stands when this phase begins (including what steps 2
       and 3 queued); what these callbacks queue runs in the next iteration.

Strategies and why
    * No asyncio (DESIGN.md): ``StreamReader.readline()`` drops its buffer on over-long
      lines, a smuggling vector, and coroutine/future machinery per SMTP command costs
      more CPU than the whole budget. Plain callbacks on ``selectors`` cost one function
      call each, and the daemons' cores are sans-I/O state machines anyway.
    * Cancelled timers stay in the heap (removing from the middle of a heap is O(n)) and
      are dropped when they reach the top. When more than half of the heap is cancelled
      it is rebuilt, so a daemon that arms and cancels an idle timer per command (the
      common case: every SMTP command restarts the session timeout) keeps a heap the size
      of its live timers; the rebuild is O(n) after n/2 cancellations, O(1) amortised.
    * An exception escaping a callback is logged to ``logging.getLogger("meta1.eventloop")``
      and the loop goes on: one broken session must not stop the daemon.
    * Waking from another thread writes to the pipe only when no wake-up is pending
      already, so a burst of worker results costs one ``write`` and one ``read``.
    * Signals: the Python-level handler installed for the signal does nothing; the byte
      the interpreter writes to the wake-up fd is what runs the callback, inside the loop,
      with no restriction on what it may do (unlike code in a signal handler).

Clock
    The clock is injected (``time.monotonic`` by default) and only used for timers, so
    tests may drive timers with a manual clock. ``run_until``'s own ``timeout`` is real
    time (``time.monotonic``): it bounds how long a test or a shutdown waits, whatever
    the loop's clock does.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("meta1.eventloop")

Callback = Callable[[], object]


class Timer:
    """A callback scheduled for a time on the loop's clock; :meth:`cancel` to revoke it."""

    __slots__ = ("when", "callback", "cancelled", "_loop")

    def __init__(self, when: float, callback: Callback, loop: EventLoop) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        # Set while the timer sits in the loop's heap, so that cancelling a timer that has
        # already fired (or is being fired) does not count against the heap's live entries.
        self._loop: EventLoop | None = loop

    def cancel(self) -> None:
        """Revoke the timer; harmless if it already ran or was cancelled."""
        if self.cancelled:
            return
        self.cancelled = True
        if self._loop is not None:
            self._loop._timer_cancelled()

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<Timer when={self.when:.3f}{state} {self.callback!r}>"


class Alarm:
    """The one timer of a sans-I/O core that says when it next wants to be woken.

    Cores such as qmgr's scheduler and mcp's supervisor expose ``next_wakeup`` as an
    absolute time in µs on their own clock (``clock_us``: wall or monotonic); after each
    event their daemon calls :meth:`set` with it, which replaces the previous timer (None
    cancels it). ``callback`` runs when the time comes.
    """

    __slots__ = ("loop", "clock_us", "callback", "timer")

    def __init__(self, loop: EventLoop, clock_us: Callable[[], int], callback: Callback) -> None:
        self.loop = loop
        self.clock_us = clock_us
        self.callback = callback
        self.timer: Timer | None = None

    def set(self, when_us: int | None) -> None:
        self.cancel()
        if when_us is not None:
            self.timer = self.loop.call_later(max(0.0, (when_us - self.clock_us()) / 1e6), self._fire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        self.callback()


class _Handlers:
    """The reader and writer callbacks of one registered descriptor (selector key data).

    Removal sets a field to None on this very object, so a readiness event reported in the
    same iteration, before the removal, finds nothing to call.
    """

    __slots__ = ("reader", "writer")

    def __init__(self) -> None:
        self.reader: Callback | None = None
        self.writer: Callback | None = None

    def events(self) -> int:
        return ((selectors.EVENT_READ if self.reader is not None else 0)
                | (selectors.EVENT_WRITE if self.writer is not None else 0))


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """Python-level handler for a signal the loop handles: the wake-up fd does the work."""


class EventLoop:
    """A single-threaded ``selectors`` loop; see the module documentation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 selector: selectors.BaseSelector | None = None) -> None:
        self._clock = clock
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        # fd -> (events, handlers) of every registration: looking a descriptor up in the
        # selector costs an exception (with the socket's repr formatted) when it is not
        # registered, which is every new connection.
        self._registered: dict[int, tuple[int, _Handlers]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled_timers = 0
        self._timer_seq = itertools.count()
        self._ready: deque[Callback] = deque()
        self._running = False
        self._stopping = False
        self._closed = False
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_read, False)
        os.set_blocking(self._wakeup_write, False)
        self._wakeup_pending = False
        # Held while writing to the pipe and while closing it, so that a thread never
        # writes into a descriptor number that close() released and the OS reused.
        self._wakeup_lock = threading.Lock()
        self._signal_handlers: dict[int, Callback] = {}
        self._previous_signal_handlers: dict[int, Any] = {}
        self._previous_wakeup_fd: int | None = None
        self.add_reader(self._wakeup_read, self._on_wakeup)

    # -- time and timers ---------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock (monotonic seconds unless a clock was injected)."""
        return self._clock()

    def call_later(self, delay: float, callback: Callback) -> Timer:
        """Run ``callback()`` once, ``delay`` seconds from now on the loop's clock."""
        return self.call_at(self._clock() + delay, callback)

    def call_at(self, when: float, callback: Callback) -> Timer:
        """Run ``callback()`` once the loop's clock reaches ``when`` (a past time: next iteration)."""
        self._check_open()
        timer = Timer(when, callback, self)
        heapq.heappush(self._timers, (when, next(self._timer_seq), timer))
        return timer

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        if self._cancelled_timers * 2 > len(self._timers):
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    def _pop_timer(self) -> Timer:
        timer = heapq.heappop(self._timers)[2]
        timer._loop = None
        if timer.cancelled:
            self._cancelled_timers -= 1
        return timer

    def _next_deadline(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            self._pop_timer()
        return self._timers[0][0] if self._timers else None

    # -- callbacks ----------------------------------------------------------------------

    def call_soon(self, callback: Callback) -> None:
        """Run ``callback()`` in the next call_soon phase; callbacks run in FIFO order."""
        self._check_open()
        self._ready.append(callback)

    def call_soon_threadsafe(self, callback: Callback) -> None:
        """``call_soon`` from any thread: queue the callback and wake the loop if it sleeps."""
        self._check_open()
        self._ready.append(callback)
        if self._wakeup_pending:
            return  # a wake-up byte is in the pipe; the loop will see this callback too
        with self._wakeup_lock:
            if self._closed:
                raise RuntimeError("event loop is closed")
            self._wakeup_pending = True
            try:
                os.write(self._wakeup_write, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: the loop is certain to wake up anyway

    def _on_wakeup(self) -> None:
        # The flag is cleared only after the pipe is drained. Cleared before, a thread's
        # byte written during the drain would be read here and the flag left set with an
        # empty pipe: every later thread would skip its write and the loop would sleep
        # with callbacks queued (a lost wake-up, seen as qmgr stalling under load).
        # Cleared after, a thread that saw the flag set had queued its callback before
        # this point, so the call_soon phase of this very iteration runs it.
        try:
            while True:
                try:
                    data = os.read(self._wakeup_read, 4096)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    return
                for byte in data:
                    handler = self._signal_handlers.get(byte)
                    if handler is not None:
                        self._ready.append(handler)
        finally:
            self._wakeup_pending = False

    # -- descriptors ----------------------------------------------------------------------

    def add_reader(self, fileobj: Any, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fileobj`` (an fd or an object with ``fileno()``) is readable."""
        self._set_handler(fileobj, "reader", callback)

    def add_writer(self, fileobj: Any, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fileobj`` is writable."""
        self._set_handler(fileobj, "writer", callback)

    def remove_reader(self, fileobj: Any) -> bool:
        """Stop watching ``fileobj`` for reading; False if it was not watched."""
        return self._set_handler(fileobj, "reader", None)

    def remove_writer(self, fileobj: Any) -> bool:
        """Stop watching ``fileobj`` for writing; False if it was not watched."""
        return self._set_handler(fileobj, "writer", None)

    def _set_handler(self, fileobj: Any, which: str, callback: Callback | None) -> bool:
        if callback is None and self._closed:
            return False  # closing a connection after its loop: nothing is watched any more
        self._check_open()
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        entry = self._registered.get(fd) if fd >= 0 else None
        if entry is None:
            if callback is None:
                return False   # never registered, or a closed file object (fd -1)
            handlers = _Handlers()
            setattr(handlers, which, callback)
            events = handlers.events()
            self._selector.register(fileobj, events, handlers)
            self._registered[fd] = (events, handlers)
            return True
        old_events, handlers = entry
        had = getattr(handlers, which) is not None
        setattr(handlers, which, callback)
        events = handlers.events()
        if events == 0:
            self._selector.unregister(fileobj)
            del self._registered[fd]
        elif events != old_events:
            self._selector.modify(fileobj, events, handlers)
            self._registered[fd] = (events, handlers)
        return had or callback is not None

    # -- signals --------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run ``callback()`` in the loop whenever signal ``signum`` arrives.

        Must be called in the main thread (a restriction of ``signal``). The previous
        Python-level handler is restored by :meth:`remove_signal_handler` or :meth:`close`.
        """
        self._check_open()
        if not 0 < signum < 256:
            raise ValueError(f"signal number out of range: {signum}")
        if self._previous_wakeup_fd is None:
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        if signum not in self._previous_signal_handlers:
            self._previous_signal_handlers[signum] = signal.signal(signum, _ignore_signal)
        self._signal_handlers[signum] = callback

    def remove_signal_handler(self, signum: int) -> bool:
        """Give signal ``signum`` back to its previous handler; False if the loop had none."""
        if signum not in self._signal_handlers:
            return False
        del self._signal_handlers[signum]
        signal.signal(signum, self._previous_signal_handlers.pop(signum))
        return True

    # -- running --------------------------------------------------------------------------

    def run(self) -> None:
        """Run iterations until :meth:`stop` (a stop() before run() makes it return at once)."""
        self._enter()
        try:
            while not self._stopping:
                self._run_once(None)
        finally:
            self._leave()

    def stop(self) -> None:
        """Make :meth:`run` or :meth:`run_until` return after the current iteration.

        From another thread: ``loop.call_soon_threadsafe(loop.stop)``.
        """
        self._stopping = True

    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run iterations until ``predicate()`` is true; return its last value.

        Gives up (returning False) after ``timeout`` real seconds, or when :meth:`stop` is
        called. The predicate is checked before the first iteration and after each.
        """
        if predicate():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._enter()
        try:
            while not self._stopping:
                remaining = None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining < 0:
                        break
                self._run_once(remaining)
                if predicate():
                    return True
            return False
        finally:
            self._leave()

    def run_once(self, timeout: float | None = 0) -> None:
        """Run one iteration, waiting for I/O or a timer at most ``timeout`` seconds (None: no limit)."""
        self._enter()
        try:
            self._run_once(timeout)
        finally:
            self._leave()

    def _enter(self) -> None:
        self._check_open()
        if self._running:
            raise RuntimeError("event loop is already running")
        self._running = True

    def _leave(self) -> None:
        self._running = False
        self._stopping = False

    def _run_once(self, max_wait: float | None) -> None:
        if self._ready or self._stopping:
            wait: float | None = 0.0
        else:
            deadline = self._next_deadline()
            wait = None if deadline is None else max(0.0, deadline - self._clock())
            if max_wait is not None and (wait is None or max_wait < wait):
                wait = max(0.0, max_wait)
        events = self._selector.select(wait)

        if self._timers:
            now = self._clock()
            due = []
            while self._timers and self._timers[0][0] <= now:
                timer = self._pop_timer()
                if not timer.cancelled:
                    due.append(timer)
            for timer in due:
                if not timer.cancelled:  # an earlier timer of this batch may cancel a later one
                    self._run_callback(timer.callback)

        for key, mask in events:
            handlers = key.data
            if mask & selectors.EVENT_READ and handlers.reader is not None:
                self._run_callback(handlers.reader)
            if mask & selectors.EVENT_WRITE and handlers.writer is not None:
                self._run_callback(handlers.writer)

        ready = self._ready
        for _ in range(len(ready)):
            self._run_callback(ready.popleft())

    @staticmethod
    def _run_callback(callback: Callback) -> None:
        try:
            callback()
        except Exception:
            logger.exception("callback %r raised", callback)

    # -- closing --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the selector, the self-pipe and the signal handlers; pending callbacks are dropped.

        Registered descriptors are not closed: they belong to whoever registered them.
        """
        if self._closed:
            return
        if self._running:
            raise RuntimeError("cannot close a running event loop")
        for signum in list(self._signal_handlers):
            self.remove_signal_handler(signum)
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None
        with self._wakeup_lock:
            self._closed = True
            self._selector.close()
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
        self._ready.clear()
        for _, _, timer in self._timers:
            timer._loop = None
        self._timers.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("event loop is closed")
