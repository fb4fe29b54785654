"""mcp, the master control program: starts the other daemons, watches them, stops them.

Responsibilities (reference meta1.md §1.1, §1.7; DESIGN.md "The five daemons")
    * reads the configuration, prepares the queue directory (as root: the owners and
      modes of :mod:`meta1.mcp.privileges`), and takes the queue's mcp lock (``pid_file``):
      one mcp per queue;
    * binds the listen sockets of every smtps whose ``start_action`` is ``pass`` and hands
      them over the UNIX socket ``pass_fd_socket`` the smtps creates (SCM_RIGHTS,
      unix(7)), so smtps never binds a port itself and never needs root (B72);
    * runs each service as its own process and user (:mod:`meta1.mcp.services`), in its
      own session, with a minimal environment, and listens on its *supervision pipe* for
      the lines ``want-fds`` and ``ready`` (:func:`meta1.runtime.process.announce_ready`);
    * carries out what the pure :class:`~meta1.mcp.supervisor.Supervisor` decides — start,
      SIGTERM, SIGKILL — and feeds it what happens: readiness, exits (SIGCHLD), its timer;
    * SIGTERM/SIGINT: stop everything in order, then exit; SIGHUP: read the configuration
      again and apply it (a bad file is reported and changes nothing);
    * writes ``mcp.status`` (JSON) in the queue directory after every change, which
      ``meta1 status`` reads.

It does no protocol work: no SMTP, no queue file, no DNS.

Exit status
    0 after a requested stop; 1 when every service failed or was blocked (the log says
    why); 75 when another mcp holds the queue; 78 when the configuration cannot be run
    (an unknown user, an unsafe queue directory, a listen socket that cannot be bound).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

import meta1
from meta1.config import ConfigError, load_file
from meta1.config.schema import NOT_SET
from meta1.eventloop import Alarm, EventLoop
from meta1.eventloop.connection import listen_tcp, listen_unix
from meta1.mcp import privileges
from meta1.mcp.services import Service, ServiceError, content_group_of, services_of
from meta1.mcp.states import State
from meta1.mcp.supervisor import (SECOND, ExitStatus, Exited, Finished, Kill, Note, Ready, Reload, Spawn, Start,
                                  Stop, Supervisor, SupervisorPolicy, Terminate, Tick)
from meta1.queue.cdb import CONTENT_GROUP_ENV
from meta1.queue.layout import QueueLayout
from meta1.runtime.fdpass import pass_listen_sockets
from meta1.machine import ndjson_sink
from meta1.runtime.process import (EX_CONFIG, EX_TEMPFAIL, PARENT_ENV, SUPERVISION_FD_ENV, TRACE_FD_ENV,
                                   open_trace_file, run_loop)

log = logging.getLogger("meta1.mcp")

STATUS_FILE = "mcp.status"
#: What a service's environment keeps of mcp's (reliability T73: "environment cleared").
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH")
#: The parent's pid for a service's PR_SET_PDEATHSIG check (runtime.process).


class StartError(Exception):
    """mcp cannot start with this configuration; ``status`` is its exit status."""

    def __init__(self, message: str, status: int = EX_CONFIG):
        super().__init__(message)
        self.status = status


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class Mcp:
    """See the module docstring. ``config_file`` is None for the built-in configuration;
    ``load`` reads it again on SIGHUP; ``on_settled(lines, ok, running)`` is told once, when
    the first start has settled (everything ready, or given up; ``running``: mcp goes on
    with the services that run)."""

    def __init__(self, config, config_file: str | None, *, load: Callable[[], object] | None = None,
                 on_settled: Callable[[list[str], bool], None] | None = None, loop: EventLoop | None = None):
        self.loop = loop or EventLoop()
        self.config = config
        self.config_file = config_file
        self.load = load or (lambda: load_file(config_file))
        self.on_settled = on_settled
        self.as_root = os.geteuid() == 0
        self.queue = os.path.abspath(config.queue_directory)
        self.layout = QueueLayout(self.queue, config.cdb_base_directory)
        self.services: dict[str, Service] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.pipes: dict[int, tuple[str, bytearray]] = {}
        self.listen_sockets: dict[tuple, socket.socket] = {}
        self.supervisor: Supervisor | None = None
        self.alarm = Alarm(self.loop, monotonic_us, lambda: self.handle(Tick()))
        self.lock_fd: int | None = None
        self.exit_status = 0
        self.started_at = time.time()
        self.settled = False

    # -- starting ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything before the first service starts; StartError when mcp cannot run."""
        try:
            services = services_of(self.config, self.config_file, as_root=self.as_root)
        except ServiceError as error:
            raise StartError(str(error)) from None
        self._prepare_queue(services)
        os.chdir(self.queue)
        self._lock()
        self._bind(services)
        self.services = {s.name: s for s in services}
        self.trace_fd = open_trace_file(self.config)
        self.supervisor = Supervisor([s.spec for s in services], SupervisorPolicy.from_config(self.config),
                                     trace=None if self.trace_fd is None else
                                     ndjson_sink(lambda line: os.write(self.trace_fd, line.encode()), pid=os.getpid()))

    def _prepare_queue(self, services: list[Service]) -> None:
        if not self.as_root:
            try:
                self.layout.ensure()
            except OSError as error:
                raise StartError(f"queue directory {self.queue}: {error.strerror}") from None
            return
        for service in services:
            account = service.account
            gids = (account.gid,) + account.groups
            blocked = privileges.unreachable(self.queue, account.uid, gids)
            if blocked:
                raise StartError(f"{service.name} (user {account.user}) cannot reach the queue directory "
                                 f"{self.queue}: {blocked} does not let it pass; choose a queue_directory "
                                 f"outside it (e.g. /var/spool/meta1)")
            needed = [(service.executable, True)]
            if service.executable == sys.executable:      # this meta1's own daemon
                needed.append((os.path.join(os.path.dirname(meta1.__file__), "__init__.py"), False))
            for path, execute in needed:
                problem = privileges.cannot_use(path, account.uid, gids, execute=execute)
                if problem:
                    raise StartError(f"{service.name} (user {account.user}) cannot {'run' if execute else 'read'} "
                                     f"{path}: {problem}; install meta1 where every user may read it (as root, "
                                     "tools/run installs it into /opt/meta1)")
        by_kind = {s.kind: s.account for s in services}
        lmtpd = self.config.root.sections.get("lmtpd")
        owners = privileges.Owners(
            qmgr=(by_kind["qmgr"].uid, by_kind["qmgr"].gid), smtps=(by_kind["smtps"].uid, by_kind["smtps"].gid),
            smtpc=(by_kind["smtpc"].uid, by_kind["smtpc"].gid), smar=(by_kind["smar"].uid, by_kind["smar"].gid),
            content_gid=content_group_of(self.config),
            lmtpd=(by_kind["lmtpd"].uid, by_kind["lmtpd"].gid) if "lmtpd" in by_kind else None)
        plan = privileges.queue_plan(
            self.layout, owners,
            lmtpd_socket_dir=os.path.dirname(str(lmtpd.socket)) if lmtpd is not None else None,
            mail_directory=str(lmtpd.mail_directory) if lmtpd is not None else None)
        try:
            privileges.prepare_queue(self.queue, plan)
        except privileges.QueueSafetyError as error:
            raise StartError(str(error)) from None
        except OSError as error:
            raise StartError(f"queue directory {self.queue}: {error}") from None

    def _lock(self) -> None:
        """The queue's mcp lock: the pid file, locked while mcp runs (T55)."""
        path = str(self.config.mcp.pid_file)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise StartError(f"pid file {path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StartError(f"another mcp (pid {other or '?'}) runs on the queue {self.queue}", EX_TEMPFAIL) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def _bind(self, services: list[Service]) -> None:
        """Bind what the passed smtps need and is not bound yet; close what none needs."""
        wanted = {}
        for service in services:
            if service.passed:
                node = self._section(service)
                wanted[_socket_key(node.listen_socket)] = node.listen_socket
        for key in [k for k in self.listen_sockets if k not in wanted]:
            self.listen_sockets.pop(key).close()
        for key, listen in wanted.items():
            if key in self.listen_sockets:
                continue
            try:
                self.listen_sockets[key] = _bind_listen_socket(listen)
            except OSError as error:
                raise StartError(f"cannot listen on {_describe(key)}: {error.strerror}") from None

    def _section(self, service: Service):
        section = self.config.root.sections[service.kind]
        return section[service.section] if isinstance(section, dict) else section

    def listening_on(self) -> list[str]:
        return [_describe(key) for key in self.listen_sockets]

    # -- running -------------------------------------------------------------------------------

    def run(self) -> int:
        """Start every service and supervise until stopped; the exit status."""
        self.loop.add_signal_handler(signal.SIGTERM, lambda: self.handle(Stop()))
        self.loop.add_signal_handler(signal.SIGINT, lambda: self.handle(Stop()))
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGCHLD, self._reap)
        log.info("ready: queue %s; %d services; listening on %s", self.queue, len(self.services),
                 ", ".join(self.listening_on()) or "nothing")
        self.loop.call_soon(lambda: self.handle(Start()))
        run_loop(self.loop, self._cleanup, log)
        return self.exit_status

    def handle(self, event) -> None:
        assert self.supervisor is not None
        for action in self.supervisor.handle(event, monotonic_us()):
            self._carry_out(action)
        self.alarm.set(self.supervisor.next_wakeup)
        self._write_status()
        self._check_settled()

    def _carry_out(self, action) -> None:
        if isinstance(action, Spawn):
            self._spawn(self.services[action.name])
        elif isinstance(action, Terminate):
            self._signal(action.name, signal.SIGTERM)
        elif isinstance(action, Kill):
            self._signal(action.name, signal.SIGKILL)
        elif isinstance(action, Note):
            getattr(log, action.level)("%s: %s", action.name, action.text)
        elif isinstance(action, Finished):
            if action.ok:
                log.info("stopped: %s", action.reason)
            else:
                log.error("giving up: %s", action.reason)
                self.exit_status = 1
            self.loop.stop()

    # -- processes --------------------------------------------------------------------------------

    def _spawn(self, service: Service) -> None:
        read_end, write_end = os.pipe()
        env = {k: os.environ[k] for k in KEPT_ENVIRONMENT if k in os.environ}
        env[SUPERVISION_FD_ENV] = str(write_end)
        env[PARENT_ENV] = str(os.getpid())
        inherited = (write_end,)
        if self.trace_fd is not None:
            env[TRACE_FD_ENV] = str(self.trace_fd)
            inherited += (self.trace_fd,)
        account = service.account
        options = {}
        if account is not None:
            options = dict(user=account.uid, group=account.gid, extra_groups=list(account.groups))
            if account.groups:      # smtps and qmgr: the content group (privileges.py)
                env[CONTENT_GROUP_ENV] = str(account.groups[0])
        try:
            process = subprocess.Popen(service.argv, executable=service.executable, env=env,
                                       pass_fds=inherited, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, cwd=self.queue, start_new_session=True,
                                       umask=0o027, **options)
        except OSError as error:
            os.close(read_end)
            os.close(write_end)
            log.error("%s: cannot start %s: %s", service.name, service.executable, error.strerror)
            status = EX_CONFIG if error.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC) else EX_TEMPFAIL
            self.loop.call_soon(lambda: self.handle(Exited(service.name, ExitStatus(code=status))))
            return
        os.close(write_end)
        self.processes[service.name] = process
        self.pipes[read_end] = (service.name, bytearray())
        os.set_blocking(read_end, False)
        self.loop.add_reader(read_end, lambda: self._on_pipe(read_end))
        who = f" as {account.user}" if account is not None else ""
        log.info("%s: started, pid %d%s", service.name, process.pid, who)

    def _signal(self, name: str, signum: int) -> None:
        process = self.processes.get(name)
        if process is not None and process.returncode is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            del self.processes[name]
            code = process.returncode
            status = ExitStatus(signal=-code) if code < 0 else ExitStatus(code=code)
            log.info("%s: pid %d ended: %s", name, process.pid, status.describe())
            self.handle(Exited(name, status))

    def _on_pipe(self, fd: int) -> None:
        name, buffer = self.pipes[fd]
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(fd)
            os.close(fd)
            del self.pipes[fd]
            return
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            if line == b"ready":
                self.handle(Ready(name))
            elif line == b"want-fds":
                self._pass_listen_sockets(self.services[name])
            else:
                log.warning("%s: unknown line on its supervision pipe: %r", name, line[:80])

    def _pass_listen_sockets(self, service: Service) -> None:
        """Connect to the smtps's pass_fd_socket and hand it its listen socket (B72)."""
        if service.name not in self.services or not service.passed:
            log.error("%s: asked for listen sockets it does not get (start_action is not pass)", service.name)
            self._signal(service.name, signal.SIGTERM)
            return
        node = self._section(service)
        listen = self.listen_sockets[_socket_key(node.listen_socket)]
        path = os.path.join(self.queue, str(node.pass_fd_socket))
        try:
            pass_listen_sockets(path, [listen])
        except OSError as error:
            log.error("%s: passing the listen socket over %s failed: %s", service.name, path, error)
            self._signal(service.name, signal.SIGTERM)
            return
        log.info("%s: listen socket %s passed over %s", service.name, _describe(_socket_key(node.listen_socket)),
                 node.pass_fd_socket)

    # -- reload -----------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the configuration again; apply it if it is good."""
        try:
            config = self.load()
            services = services_of(config, self.config_file, as_root=self.as_root)
        except ConfigError as error:
            for diagnostic in error.diagnostics:
                log.error("reload refused: %s", diagnostic)
            return
        except ServiceError as error:
            log.error("reload refused: %s", error)
            return
        if os.path.abspath(config.queue_directory) != self.queue:
            log.error("reload refused: queue_directory changed (%s); restart mcp to move the queue",
                      config.queue_directory)
            return
        previous = self.config
        self.config = config
        try:
            self._bind(services)
        except StartError as error:
            self.config = previous
            log.error("reload refused: %s", error)
            return
        self.services.update({s.name: s for s in services})
        log.info("configuration reloaded from %s", self.config_file or "the built-in configuration")
        self.handle(Reload(tuple(s.spec for s in services)))

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict:
        now_wall, now_mono = time.time(), monotonic_us()
        services = []
        for view in self.supervisor.view():
            process = self.processes.get(view.name)
            services.append({
                "name": view.name, "state": view.state.value,
                "pid": process.pid if process is not None and view.state.name in ("STARTING", "RUNNING", "STOPPING",
                                                                                  "RESTARTING") else None,
                "since": round(now_wall - (now_mono - view.since) / SECOND, 3),
                "starts": view.starts, "restarts": max(0, view.starts - 1),
                "last_exit": view.last_exit, "why": view.why})
        return {"pid": os.getpid(), "started": round(self.started_at, 3), "queue_directory": self.queue,
                "config": self.config_file or "built-in", "listening": self.listening_on(), "services": services}

    def _write_status(self) -> None:
        """``mcp.status``, replaced atomically (a reader never sees half of it)."""
        temporary = f"{STATUS_FILE}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.status(), out, indent=1)
            os.replace(temporary, STATUS_FILE)
        except OSError as error:
            log.warning("cannot write %s: %s", STATUS_FILE, error)

    def _check_settled(self) -> None:
        if self.settled or self.on_settled is None:
            return
        views = self.supervisor.view()
        if any(v.state in (State.WAITING, State.STARTING, State.STOPPING, State.RESTARTING) for v in views):
            if not self.supervisor.finished:
                return
        self.settled = True
        lines = [f"{v.name}: {v.state.value}" + (f" ({v.why})" if v.why else "") for v in views]
        self.on_settled(lines, all(v.state is State.RUNNING for v in views), not self.supervisor.finished)

    def _cleanup(self) -> None:
        for process in self.processes.values():    # only after a failure to stop in order
            process.kill()
        for sock in self.listen_sockets.values():
            sock.close()
        self._write_status()
        for fd in list(self.pipes):
            os.close(fd)
        if self.lock_fd is not None:
            try:
                os.unlink(str(self.config.mcp.pid_file))
            except OSError:
                pass
            os.close(self.lock_fd)


def _socket_key(listen) -> tuple:
    if listen.type == "unix":
        return ("unix", str(listen.path))
    address = listen.address if listen.address is not NOT_SET else "0.0.0.0"
    return ("inet", str(address), int(listen.port))


def _describe(key: tuple) -> str:
    if key[0] == "unix":
        return key[1]
    host = f"[{key[1]}]" if ":" in key[1] else key[1]
    return f"{host}:{key[2]}"


def _bind_listen_socket(listen) -> socket.socket:
    """Bound by mcp (as root it may take port 25); a UNIX one open to every local client."""
    key = _socket_key(listen)
    return listen_unix(key[1], mode=0o666) if key[0] == "unix" else listen_tcp(key[1], key[2])


def serve(config, config_file: str | None, *, load=None, on_settled=None) -> int:
    """Run mcp in the foreground until it is stopped; its exit status."""
    mcp = Mcp(config, config_file, load=load, on_settled=on_settled)
    try:
        mcp.prepare()
    except StartError as error:
        log.error("%s", error)
        if on_settled is not None:
            on_settled([str(error)], False)
        return error.status
    return mcp.run()
