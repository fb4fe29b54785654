"""What every meta1 daemon process does the same way: logging, exit codes, names.

Exit codes follow sysexits(3) so that a supervisor (mcp, a later issue) can tell a
permanent failure from a transient one: 78 (``EX_CONFIG``) means "do not restart me
until the configuration changes"; 75 (``EX_TEMPFAIL``) means "try again later", e.g.
another qmgr holds the queue lock.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

EX_OK = 0
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

#: MeTA1's Log_Level runs 0..14 like sendmail's LogLevel; these are the thresholds at
#: which meta1 lets more through (D-LOG-1).
def python_level(log_level: int) -> int:
    if log_level >= 12:
        return logging.DEBUG
    if log_level >= 9:
        return logging.INFO
    if log_level >= 4:
        return logging.WARNING
    return logging.ERROR


def setup_logging(daemon: str, log_level: int = 9) -> None:
    """One line per event on stderr: ``TIME daemon[pid]: message`` (UTC, ISO 8601)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(f"%(asctime)s {daemon}[{os.getpid()}]: %(message)s"))
    # Log lines name ids, not source lines: skip the caller lookup and the thread and
    # process fields (a sizeable part of the cost of a record at a few records per message).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(python_level(log_level))


class _Formatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def formatTime(self, record, datefmt=None):  # noqa: N802 - logging's name
        # The record's time is now: it fits the platform's time_t until 2038 on i386.
        # The date part is formatted once per second (several lines per message).
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(record.msecs):03d}Z"


def local_hostname(configured) -> str:
    """The name this MTA gives itself: the configured ``hostname``, else the system's."""
    if isinstance(configured, str) and configured:
        return configured
    return socket.gethostname() or "localhost"
