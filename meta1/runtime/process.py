"""What every meta1 daemon process does the same way: logging, exit codes, names.

Exit codes follow sysexits(3) so that a supervisor (mcp, a later issue) can tell a
permanent failure from a transient one: 78 (``EX_CONFIG``) means "do not restart me
until the configuration changes"; 75 (``EX_TEMPFAIL``) means "try again later", e.g.
another qmgr holds the queue lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

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


def setup_logging(daemon: str, log_level: int = 9, syslog: tuple[str, str] | None = None) -> None:
    """One line per event on stderr: ``TIME daemon[pid]: message`` (UTC, ISO 8601); with
    ``syslog`` = (facility, socket path) each line goes to syslog too, as
    ``daemon[pid]: message`` (syslog adds its own time)."""
    handler = _LogHandler()
    handler.setFormatter(_Formatter(f"%(asctime)s {daemon}[{os.getpid()}]: %(message)s"))
    # Log lines name ids, not source lines: skip the caller lookup and the thread and
    # process fields (a sizeable part of the cost of a record at a few records per message).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if syslog is not None:
        root.handlers.append(_syslog_handler(daemon, *syslog))
    root.setLevel(python_level(log_level))


def _syslog_handler(daemon: str, facility: str, path: str) -> logging.Handler:
    from logging.handlers import SysLogHandler
    handler = SysLogHandler(address=path, facility=SysLogHandler.facility_names[facility])
    handler.setFormatter(logging.Formatter(f"{daemon}[{os.getpid()}]: %(message)s"))
    return handler


def syslog_of(config) -> tuple[str, str] | None:
    """The ``setup_logging`` syslog argument from a configuration (None: no syslog)."""
    facility = config.syslog_facility
    return (facility, str(config.syslog_socket)) if isinstance(facility, str) else None


def redirect_stderr(path: str) -> None:
    """Make ``path`` (appended to, created 0640, never through a symbolic link) this
    process's standard error, which the daemons mcp starts inherit."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    os.dup2(fd, 2)
    os.close(fd)


#: mcp's open trace file, inherited by the daemons it starts (they may not open it: as
#: root mcp makes it in the queue directory, which only root may write).
TRACE_FD_ENV = "META1_TRACE_FD"


def trace_file_path(config) -> str | None:
    """Where ``trace_file`` is (relative to the queue directory), or None: no trace."""
    path = config.trace_file
    return os.path.join(config.queue_directory, path) if isinstance(path, str) else None


def open_trace_file(config) -> int | None:
    """The descriptor of ``trace_file`` opened for appending (None: no trace)."""
    path = trace_file_path(config)
    if path is None:
        return None
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)


def trace_sink(config):
    """The state-machine trace sink of ``trace_file`` (None: no trace): mcp's inherited
    descriptor, or the file opened here. Each record is one ``write(2)`` of one line to a
    file opened with O_APPEND, so the lines of all daemons never interleave."""
    inherited = os.environ.get(TRACE_FD_ENV, "")
    fd = int(inherited) if inherited.isdigit() else open_trace_file(config)
    if fd is None:
        return None
    from meta1.machine import ndjson_sink
    failed = False

    def write(line: str) -> None:
        # A trace is for reading, never a reason to fail: a full or broken file stops the
        # trace of this process, with one error logged, and the daemon goes on.
        nonlocal failed
        if failed:
            return
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        except OSError as error:
            failed = True
            logging.getLogger("meta1").error("trace_file: %s; this process writes no more trace records",
                                             error.strerror)

    # The pid tells a restarted daemon's machines from its predecessor's (tracecheck
    # chains each instance per process).
    return ndjson_sink(write, pid=os.getpid())


def limit_core_dumps() -> None:
    """No core files: a daemon's memory holds mail and secrets (reliability T73)."""
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@contextlib.contextmanager
def log_flush_per_iteration(loop) -> Iterator[None]:
    """While the daemon's ``loop`` runs, write its log lines once per loop iteration.

    A daemon under load logs a few lines per message; one ``write(2)`` each was several
    per cent of smtps's CPU. Inside this context the lines of one loop iteration are
    collected and written together at the end of it (a ``call_soon``), so what a
    ``SIGKILL`` can lose is the lines of the iteration it interrupted — never lines
    from before the last wait. Lines logged by other threads are written at once.
    Leaving the context writes what is collected.
    """
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, _LogHandler)]
    for handler in handlers:
        handler.defer_to(loop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.defer_to(None)


def run_loop(loop, cleanup: Callable[[], None], log: logging.Logger) -> None:
    """Run a daemon's started ``loop`` until it stops, its log lines written once per
    iteration; then ``cleanup()`` (also after an exception), then log "stopped"."""
    try:
        with log_flush_per_iteration(loop):
            loop.run()
    finally:
        cleanup()
        log.info("stopped")


class _LogHandler(logging.StreamHandler):
    """A StreamHandler on its own buffered stream on fd 2 that can defer its flushes.

    ``sys.stderr`` is line-buffered (Python 3.9+), so a flush per line cannot be
    avoided through it; this stream buffers until :meth:`flush` is really wanted.
    """

    def __init__(self) -> None:
        super().__init__(open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                              errors="backslashreplace", closefd=False))
        self._loop = None
        self._loop_thread = 0
        self._flush_scheduled = False

    def defer_to(self, loop) -> None:
        self.flush_now()
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def flush(self) -> None:
        # Called by StreamHandler.emit after every record.
        if self._loop is None or threading.get_ident() != self._loop_thread or self._loop.closed:
            self.flush_now()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_scheduled = False
        super().flush()

    def close(self) -> None:
        self.flush_now()
        super().close()


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


#: The environment variable through which mcp hands a daemon the write end of its
#: supervision pipe (D-MCP-3): the daemon writes one line per event on it — ``want-fds``
#: when it waits for its listen sockets (start_action = pass), ``ready`` when it serves.
SUPERVISION_FD_ENV = "META1_SUPERVISION_FD"


def supervised() -> bool:
    """Whether mcp started this process (and waits for its supervision lines)."""
    return SUPERVISION_FD_ENV in os.environ


def tell_supervisor(line: str) -> None:
    """Write ``line`` to mcp's supervision pipe; nothing when not supervised. A pipe mcp
    closed (mcp is gone) is not an error of the daemon's."""
    fd = os.environ.get(SUPERVISION_FD_ENV)
    if fd is None:
        return
    try:
        os.write(int(fd), line.encode("ascii") + b"\n")
    except (OSError, ValueError):
        pass


def forget_supervisor() -> None:
    """In a process the daemon forked itself (smtps ``processes``): the parent speaks
    for it, so the child neither writes nor keeps the pipe."""
    fd = os.environ.pop(SUPERVISION_FD_ENV, None)
    if fd is not None:
        try:
            os.close(int(fd))
        except (OSError, ValueError):
            pass


#: mcp's pid in the environment of the daemons it starts (for :func:`exit_with_supervisor`).
PARENT_ENV = "META1_MCP_PID"


def exit_with_parent(parent: int) -> None:
    """Get SIGTERM when the parent process dies (Linux PR_SET_PDEATHSIG): a killed parent
    (mcp, or the first smtps of several) never leaves a daemon behind; it stops as on any
    SIGTERM. If the parent is already gone, exit now. Elsewhere than Linux, a no-op."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def exit_with_supervisor() -> None:
    """In a daemon mcp started: :func:`exit_with_parent` for mcp."""
    parent = os.environ.get(PARENT_ENV, "")
    if supervised() and parent.isdigit():
        exit_with_parent(int(parent))


def announce_ready(log: logging.Logger, message: str, *args) -> None:
    """The daemon serves: log ``ready: <message>`` and tell mcp (start_action = wait:
    mcp starts the next service only after this)."""
    log.info("ready: " + message, *args)
    tell_supervisor("ready")


def local_hostname(configured) -> str:
    """The name this MTA gives itself: the configured ``hostname``, else the system's."""
    if isinstance(configured, str) and configured:
        return configured
    return socket.gethostname() or "localhost"
