"""Blocking work off the loop (fsync, file writes) and group commit.

Responsibilities
    :class:`WorkerPool` runs blocking jobs in a few threads and delivers each result to
    the loop thread. :class:`GroupCommit` turns many durability requests into few flushes:
    one flush covers every request that was waiting when it started (DESIGN.md,
    "group commit everywhere": 3–8× over a flush per message).

WorkerPool
    Jobs wait in one FIFO queue, so they start in the order they were submitted (they may
    finish in any order when ``threads`` > 1). ``done(result, exc)`` is queued to the loop
    with ``call_soon_threadsafe``; protocol code therefore never runs in a worker thread
    and needs no locks. A job that raises delivers ``done(None, exc)``. Threads are daemon
    threads: a daemon that forgot ``shutdown`` still exits, but a daemon that wants its
    queued fsyncs done calls ``shutdown(wait=True)``.

GroupCommit
    No timer and no batch size: a request made while no flush is running starts one from
    the ``call_soon`` queue (so every request made in the same loop iteration joins it);
    requests made while a flush runs wait, and when it finishes all of them go into the
    next flush at once. Under load the batch grows by itself to what arrives during one
    fsync; with one client, the latency is one fsync. Exactly one flush runs at a time, so
    batches are flushed in request order (an append-only log is written in order). If a
    flush raises, every request of that batch gets the exception; the next batch is still
    attempted (a transient error must not wedge the daemon; a persistent one fails each
    batch on its own).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from meta1.eventloop.loop import EventLoop

logger = logging.getLogger("meta1.eventloop")

T = TypeVar("T")
Done = Callable[[T | None, BaseException | None], None]


class WorkerPool:
    """A fixed set of threads running blocking jobs; results come back in the loop thread."""

    def __init__(self, loop: EventLoop, threads: int = 4, name: str = "worker") -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.loop = loop
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Done[object]] | None] = queue.SimpleQueue()
        self._shut_down = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
                         for index in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], T], done: Done[T]) -> None:
        """Run ``job()`` in a worker thread, then ``done(result, exc)`` in the loop thread."""
        if self._shut_down:
            raise RuntimeError(f"worker pool {self.name} is shut down")
        self._jobs.put((job, done))  # type: ignore[arg-type]

    def shutdown(self, wait: bool = True) -> None:
        """Let the threads finish the queued jobs and end; with ``wait``, join them.

        Results of jobs that finish after the loop is closed are dropped.
        """
        if not self._shut_down:
            self._shut_down = True
            for _ in self._threads:
                self._jobs.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            result: object = None
            error: BaseException | None = None
            try:
                result = job()
            except BaseException as exc:  # noqa: B036 - delivered to done(), whatever it is
                error = exc
            try:
                self.loop.call_soon_threadsafe(functools.partial(done, result, error))
            except RuntimeError:
                logger.debug("%s: loop closed; result of %r dropped", self.name, job)
            del item, job, done, result, error  # do not keep the last job's objects alive while idle


class GroupCommit(Generic[T]):
    """One flush covers every request waiting: no timer. While a flush runs, new requests
    queue up; when it finishes, all of them go into the next flush at once."""

    def __init__(self, pool: WorkerPool, flush: Callable[[list[T]], None], name: str = "") -> None:
        self.pool = pool
        self.loop = pool.loop
        self.flush = flush
        self.name = name
        self.in_flight = False
        self.flushes = 0
        self.largest_batch = 0
        self._waiting: list[tuple[T, Callable[[BaseException | None], None]]] = []
        self._start_queued = False

    @property
    def waiting(self) -> int:
        """Requests not yet covered by a flush that has started."""
        return len(self._waiting)

    def request(self, item: T, done: Callable[[BaseException | None], None]) -> None:
        """Have ``item`` flushed; ``done(None)`` once durable, ``done(exc)`` if not.

        Called in the loop thread, like ``done`` is.
        """
        self._waiting.append((item, done))
        self._queue_start()

    def _queue_start(self) -> None:
        if not self.in_flight and not self._start_queued and self._waiting:
            self._start_queued = True
            self.loop.call_soon(self._start)

    def _start(self) -> None:
        self._start_queued = False
        if self.in_flight or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        self.in_flight = True
        self.flushes += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        items = [item for item, _ in batch]
        self.pool.submit(functools.partial(self.flush, items),
                         lambda _result, exc: self._finished(batch, exc))

    def _finished(self, batch: list[tuple[T, Callable[[BaseException | None], None]]],
                  exc: BaseException | None) -> None:
        self.in_flight = False
        if exc is not None:
            logger.warning("group commit %s: flush of %d failed: %s", self.name, len(batch), exc)
        for _, done in batch:
            try:
                done(exc)
            except Exception:
                logger.exception("group commit %s: completion %r raised", self.name, done)
        self._queue_start()
