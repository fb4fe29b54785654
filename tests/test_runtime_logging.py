"""Daemon logging (meta1.runtime.process): one line per event; inside a running loop the
lines of one iteration are written together at its end, other threads' lines at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import logging, os, threading
    from meta1.eventloop import EventLoop
    from meta1.runtime.process import log_flush_per_iteration, setup_logging
    setup_logging("test")
    log = logging.getLogger("meta1.test")
    log.info("before the loop")
    os.write(2, b"MARK-1\\n")
    loop = EventLoop()

    def iteration():
        log.info("in the loop")
        os.write(2, b"MARK-2\\n")          # still in the same iteration
        worker = threading.Thread(target=lambda: log.info("from a thread"))
        worker.start(); worker.join()
        os.write(2, b"MARK-3\\n")
        log.info("late in the loop")
        os.write(2, b"MARK-3b\\n")
        loop.call_soon(loop.stop)

    loop.call_soon(iteration)
    with log_flush_per_iteration(loop):
        loop.run()
    log.info("after the loop")
    os.write(2, b"MARK-4\\n")
""")


def test_lines_of_a_loop_iteration_are_written_at_its_end() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    order = [line.split(": ", 1)[-1] for line in result.stderr.splitlines()]
    # The loop's line waits (after MARK-2); the thread's line is written at once and
    # takes the waiting line with it, so the log keeps its order.
    assert order == ["before the loop", "MARK-1", "MARK-2", "in the loop", "from a thread", "MARK-3",
                     "MARK-3b", "late in the loop", "after the loop", "MARK-4"]


def test_a_daemon_logs_to_log_file_and_to_syslog_when_configured(tmp_path) -> None:
    """Global ``log_file`` (appended, relative to the queue directory) and
    ``syslog_facility``: each line also as a syslog datagram, facility mail (2), to
    ``syslog_socket`` — here a UNIX datagram socket the test reads."""
    import socket
    from mta import MTA, wait_for
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "syslog"
    listener.bind(str(path))
    listener.settimeout(20)
    mta = MTA(tmp_path, extra_global=f'log_file = daemons.log; syslog_facility = mail; syslog_socket = "{path}";')
    try:
        mta.spawn("qmgr", wait=False)
        log_file = mta.queue / "daemons.log"
        wait_for(lambda: log_file.exists() and "ready: " in log_file.read_text(), what="qmgr's ready line in log_file")
        datagrams = []
        while not any(b"ready: " in d for d in datagrams):
            datagrams.append(listener.recv(4096))
    finally:
        mta.stop()
        listener.close()
    ready = next(d for d in datagrams if b"ready: " in d).decode()
    # RFC 3164 priority: facility mail (2) * 8 + severity info (6) = 22
    assert ready.startswith("<22>qmgr[") and "]: ready: " in ready
    assert "qmgr[" in log_file.read_text() and mta.log("qmgr") == ""   # nothing on stderr
