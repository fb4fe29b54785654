"""Worker threads and group commit (meta1.eventloop.workers), with real threads and fsync."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta1.eventloop import EventLoop, GroupCommit, WorkerPool


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture
def pool(loop: EventLoop) -> Iterator[WorkerPool]:
    pool = WorkerPool(loop, threads=4, name="test-worker")
    yield pool
    pool.shutdown()


def test_jobs_run_in_workers_and_results_come_back_in_the_loop_thread(loop: EventLoop, pool: WorkerPool) -> None:
    loop_thread = threading.get_ident()
    results: list[tuple[object, BaseException | None, int]] = []

    def job() -> str:
        return threading.current_thread().name

    for _ in range(20):
        pool.submit(job, lambda result, exc: results.append((result, exc, threading.get_ident())))
    assert loop.run_until(lambda: len(results) == 20, timeout=10)
    assert all(str(name).startswith("test-worker-") and exc is None and ident == loop_thread
               for name, exc, ident in results)


def test_threads_work_in_parallel(loop: EventLoop, pool: WorkerPool) -> None:
    barrier = threading.Barrier(4, timeout=10)
    done: list[object] = []
    for _ in range(4):
        pool.submit(barrier.wait, lambda result, exc: done.append(exc))
    assert loop.run_until(lambda: len(done) == 4, timeout=10)
    assert done == [None] * 4  # a BrokenBarrierError would mean they ran one after the other


def test_jobs_start_in_submission_order(loop: EventLoop) -> None:
    pool = WorkerPool(loop, threads=1)
    started: list[int] = []
    finished: list[int] = []
    for i in range(50):
        pool.submit(lambda i=i: started.append(i), lambda result, exc, i=i: finished.append(i))
    assert loop.run_until(lambda: len(finished) == 50, timeout=10)
    assert started == finished == list(range(50))
    pool.shutdown()


def test_a_failing_job_reports_its_exception(loop: EventLoop, pool: WorkerPool) -> None:
    outcome: list[tuple[object, BaseException | None]] = []

    def job() -> None:
        raise OSError(28, "No space left on device")

    pool.submit(job, lambda result, exc: outcome.append((result, exc)))
    assert loop.run_until(lambda: bool(outcome), timeout=10)
    ((result, exc),) = outcome
    assert result is None and isinstance(exc, OSError) and exc.errno == 28


def test_shutdown_finishes_queued_jobs_then_refuses_more(loop: EventLoop) -> None:
    pool = WorkerPool(loop, threads=2)
    ran: list[int] = []
    for i in range(10):
        pool.submit(lambda i=i: ran.append(i), lambda result, exc: None)
    pool.shutdown(wait=True)
    assert sorted(ran) == list(range(10))
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None, lambda result, exc: None)


def test_results_after_the_loop_closed_are_dropped() -> None:
    loop = EventLoop()
    pool = WorkerPool(loop, threads=1)
    release = threading.Event()
    pool.submit(release.wait, lambda result, exc: None)
    loop.close()
    release.set()
    pool.shutdown(wait=True)  # the worker did not die on the closed loop, so join returns


def test_requests_during_a_slow_flush_share_the_next_flush(loop: EventLoop, pool: WorkerPool) -> None:
    release = threading.Event()
    first_flush_started = threading.Event()
    batches: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        batches.append(list(batch))
        if len(batches) == 1:
            first_flush_started.set()
            assert release.wait(10)

    commit: GroupCommit[int] = GroupCommit(pool, flush, name="ibdb")
    results: dict[int, BaseException | None] = {}
    commit.request(0, lambda exc: results.__setitem__(0, exc))
    assert loop.run_until(lambda: commit.in_flight, timeout=10)
    assert first_flush_started.wait(10)
    for i in range(1, 101):
        commit.request(i, lambda exc, i=i: results.__setitem__(i, exc))
    loop.run_once(0)
    assert commit.waiting == 100 and commit.flushes == 1  # no second flush while one runs
    release.set()
    assert loop.run_until(lambda: len(results) == 101, timeout=10)
    assert commit.flushes == 2 and commit.largest_batch == 100
    assert batches == [[0], list(range(1, 101))]
    assert set(results.values()) == {None}
    assert not commit.in_flight and commit.waiting == 0


def test_requests_of_one_iteration_share_one_flush(loop: EventLoop, pool: WorkerPool) -> None:
    batches: list[list[str]] = []
    done: list[BaseException | None] = []
    commit: GroupCommit[str] = GroupCommit(pool, lambda batch: batches.append(batch))
    for item in "abcdefghij":
        commit.request(item, done.append)
    assert loop.run_until(lambda: len(done) == 10, timeout=10)
    assert batches == [list("abcdefghij")] and commit.flushes == 1


def test_a_failed_flush_fails_its_whole_batch_and_the_next_batch_still_runs(loop: EventLoop,
                                                                            pool: WorkerPool) -> None:
    release = threading.Event()
    calls: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            assert release.wait(10)
            raise OSError(5, "Input/output error")

    commit: GroupCommit[int] = GroupCommit(pool, flush)
    results: dict[int, BaseException | None] = {}
    for i in range(3):
        commit.request(i, lambda exc, i=i: results.__setitem__(i, exc))
    assert loop.run_until(lambda: commit.in_flight, timeout=10)
    for i in range(3, 6):
        commit.request(i, lambda exc, i=i: results.__setitem__(i, exc))
    release.set()
    assert loop.run_until(lambda: len(results) == 6, timeout=10)
    failures = {results[i] for i in range(3)}
    assert len(failures) == 1 and isinstance(failures.pop(), OSError)  # the same exception for each
    assert [results[i] for i in range(3, 6)] == [None, None, None]
    assert calls == [[0, 1, 2], [3, 4, 5]]


def test_group_commit_with_real_fsync_flushes_one_at_a_time_in_order(loop: EventLoop, pool: WorkerPool,
                                                                     tmp_path: Path) -> None:
    log_path = tmp_path / "log"
    running = 0
    most_at_once = 0
    lock = threading.Lock()

    def flush(batch: list[bytes]) -> None:
        nonlocal running, most_at_once
        with lock:
            running += 1
            most_at_once = max(most_at_once, running)
        try:
            log.write(b"".join(batch))
            log.flush()
            os.fsync(log.fileno())
        finally:
            with lock:
                running -= 1

    commit: GroupCommit[bytes] = GroupCommit(pool, flush, name="log")
    total = 300
    acknowledged: list[tuple[int, BaseException | None]] = []
    issued = 0

    def issue() -> None:
        nonlocal issued
        number = issued
        issued += 1
        commit.request(b"%d\n" % number, lambda exc: on_done(number, exc))

    def on_done(number: int, exc: BaseException | None) -> None:
        acknowledged.append((number, exc))
        for _ in range(3):  # the load grows while flushes run, as on a busy server
            if issued < total:
                issue()

    with open(log_path, "ab") as log:  # written by the flushes, in worker threads
        for _ in range(5):
            issue()
        assert loop.run_until(lambda: len(acknowledged) == total, timeout=30)
    assert log_path.read_bytes() == b"".join(b"%d\n" % i for i in range(total))
    assert sorted(acknowledged) == [(i, None) for i in range(total)]
    assert most_at_once == 1
    assert commit.flushes < total
