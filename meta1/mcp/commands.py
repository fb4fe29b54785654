"""``meta1 start``, ``meta1 stop``, ``meta1 status``, ``meta1 accounts``: the MTA as one
product.

    meta1 start [-f FILE] [--foreground]   start mcp, which starts the daemons; without
                                           --foreground mcp detaches, its log goes to
                                           ``log_file`` (default: meta1.log in the queue
                                           directory), and the command returns once every
                                           service is ready (0) or given up (1)
    meta1 stop [-f FILE]                   SIGTERM to mcp; wait until it has stopped them all
    meta1 status [-f FILE] [--json]        mcp and each daemon: state, pid, uptime,
                                           restarts; the queue's counts. 0 running, 3 not
    meta1 accounts [--create]              MeTA1's accounts (meta1s, meta1q, meta1c, meta1m,
                                           meta1): which exist; --create adds the missing
                                           ones (root; useradd --system)

Strategy
    mcp's pid file doubles as its lock (flock): ``stop`` and ``status`` know mcp runs when
    the lock is held, whatever the file says; ``status`` reads ``mcp.status``, which mcp
    rewrites atomically after every change. Nothing here talks to the daemons themselves.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

from meta1.mcp.daemon import STATUS_FILE
from meta1.mcp.services import DEFAULT_USERS
from meta1.queue.layout import QueueLayout

EX_NOT_RUNNING = 3      # LSB: "program is not running"
KEEPS_RUNNING = "mcp keeps running what could start"
LOG_FILE = "meta1.log"


def mcp_pid(config) -> int | None:
    """The pid of the mcp running on this configuration's queue, or None."""
    path = os.path.join(config.queue_directory, str(config.mcp.pid_file))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)    # we got it: nobody holds it
        return None
    finally:
        os.close(fd)


def log_file_of(config) -> str:
    """Where mcp's (and the daemons') log goes when mcp runs in the background."""
    configured = config.log_file
    return os.path.join(config.queue_directory, str(configured) if isinstance(configured, str) else LOG_FILE)


def start(config, config_file: str | None, *, foreground: bool, load=None) -> int:
    from meta1.mcp.daemon import serve
    from meta1.runtime.process import redirect_stderr, setup_logging
    if mcp_pid(config) is not None:
        print(f"meta1 start: mcp already runs (pid {mcp_pid(config)}) on {config.queue_directory}", file=sys.stderr)
        return 75
    if foreground:
        if isinstance(config.log_file, str):
            redirect_stderr(log_file_of(config))
        setup_logging("mcp", config.mcp.log_level)
        return serve(config, config_file, load=load, on_settled=_print_banner(config, sys.stderr))
    os.makedirs(config.queue_directory, mode=0o755, exist_ok=True)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                      # the future mcp
        os.close(read_end)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        status = 1
        try:
            redirect_stderr(log_file_of(config))
            setup_logging("mcp", config.mcp.log_level)
            report = os.fdopen(write_end, "w", buffering=1, encoding="utf-8")

            def settled(lines: list[str], ok: bool, running: bool = False) -> None:
                _print_banner(config, report)(lines, ok, running)
                report.close()

            status = serve(config, config_file, load=load, on_settled=settled)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as report:
        text = report.read()
    sys.stdout.write(text)
    if "meta1: started" in text:
        return 0
    if KEEPS_RUNNING in text:       # some services failed; mcp keeps those that run
        return 1
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(f"meta1 start: mcp did not start (exit status {code}); see {log_file_of(config)}", file=sys.stderr)
    return code or 1


def _print_banner(config, out):
    """What a person needs after ``start``: where it listens, the queue, the mailboxes,
    how to send a test message — or what failed."""
    def settled(lines: list[str], ok: bool, running: bool = False) -> None:
        for line in lines:
            print(f"meta1: {line}", file=out)
        if not ok:
            print(f"meta1: not started completely; see the log ({log_file_of(config)} in the background)",
                  file=out)
            if running:
                print(f"meta1: {KEEPS_RUNNING} (pid {os.getpid()}); `meta1 status` shows it, "
                      "`meta1 stop` ends it", file=out)
            out.flush()
            return
        listening = _listen_addresses(config)
        print(f"meta1: started; smtps on {', '.join(listening)}; queue in {config.queue_directory}", file=out)
        lmtpd = config.root.sections.get("lmtpd")
        if lmtpd is not None:
            print(f"meta1: mail for localhost goes to {os.path.join(config.queue_directory, str(lmtpd.mail_directory))}"
                  "/<user>/new", file=out)
        if listening:
            host, _, port = listening[0].rpartition(":")
            print(f"meta1: try   swaks --server {host.strip('[]')}:{port} -f you@example.org -t you@localhost",
                  file=out)
        print("meta1: then  meta1 status; meta1 mailq; meta1 stop", file=out)
        out.flush()
    return settled


def _listen_addresses(config) -> list[str]:
    addresses = []
    for node in config.smtps.values():
        listen = node.listen_socket
        if listen.type == "unix":
            addresses.append(str(listen.path))
        else:
            host = str(listen.address) if isinstance(listen.address, str) else "0.0.0.0"
            addresses.append(f"[{host}]:{listen.port}" if ":" in host else f"{host}:{listen.port}")
    return addresses


def stop(config) -> int:
    pid = mcp_pid(config)
    if pid is None:
        print(f"meta1 stop: mcp is not running on {config.queue_directory}", file=sys.stderr)
        return EX_NOT_RUNNING
    os.kill(pid, 15)
    services = len(config.smtps) + 4
    deadline = time.monotonic() + config.mcp.shutdown_timeout * services + 10
    while time.monotonic() < deadline:
        if mcp_pid(config) is None:
            print(f"meta1: stopped (mcp pid {pid})")
            return 0
        time.sleep(0.05)
    print(f"meta1 stop: mcp (pid {pid}) still runs after {config.mcp.shutdown_timeout}s per service",
          file=sys.stderr)
    return 1


def status(config, as_json: bool) -> int:
    pid = mcp_pid(config)
    report = {"running": pid is not None, "mcp_pid": pid, "services": [], "queue": _queue_counts(config)}
    if pid is not None:
        try:
            with open(os.path.join(config.queue_directory, STATUS_FILE), encoding="utf-8") as f:
                report.update({k: v for k, v in json.load(f).items() if k != "pid"})
        except (OSError, ValueError) as error:
            report["problem"] = f"{STATUS_FILE}: {error}"
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(_status_text(report))
    return 0 if pid is not None else EX_NOT_RUNNING


def _queue_counts(config) -> dict:
    from meta1.queue.mailq import list_queue
    try:
        messages = list_queue(QueueLayout(config.queue_directory, config.cdb_base_directory), [])
    except OSError as error:
        return {"problem": str(error)}
    counts = {"messages": len(messages), "recipients": 0}
    for message in messages:
        for recipient in message.recipients:
            counts["recipients"] += 1
            counts[recipient.state.value] = counts.get(recipient.state.value, 0) + 1
    return counts


def _status_text(report: dict) -> str:
    if not report["running"]:
        lines = ["meta1: not running"]
    else:
        lines = [f"meta1: running, mcp pid {report['mcp_pid']}, up {_duration(time.time() - report.get('started', 0))}"
                 f", configuration {report.get('config', '?')}"]
        if report.get("listening"):
            lines.append(f"listening on {', '.join(report['listening'])}")
        lines.append(f"{'service':<20} {'state':<10} {'pid':>7} {'up':>9} {'restarts':>8}  last exit")
        now = time.time()
        for service in report["services"]:
            up = _duration(now - service["since"]) if service["state"] == "running" else "-"
            pid = str(service["pid"]) if service["pid"] else "-"
            last = service["last_exit"] + (f"; {service['why']}" if service["why"] else "")
            lines.append(f"{service['name']:<20} {service['state']:<10} {pid:>7} {up:>9} {service['restarts']:>8}  "
                         f"{last}".rstrip())
    queue = report["queue"]
    if "problem" in queue:
        lines.append(f"queue: cannot be read: {queue['problem']}")
    else:
        states = ", ".join(f"{queue[s]} {s}" for s in ("queued", "deferred", "failed", "held") if queue.get(s))
        lines.append(f"queue: {queue['messages']} messages, {queue['recipients']} recipients"
                     + (f" ({states})" if states else ""))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours or days else "") + f"{minutes:02d}m{seconds:02d}s"


def accounts(create: bool) -> int:
    """List MeTA1's accounts; with ``create``, add the missing ones (root)."""
    import pwd
    missing = []
    for kind, user in DEFAULT_USERS.items():
        try:
            entry = pwd.getpwnam(user)
            print(f"{user:<8} uid {entry.pw_uid:<6} gid {entry.pw_gid:<6} ({kind})")
        except KeyError:
            missing.append((kind, user))
            print(f"{user:<8} missing ({kind})")
    if not missing or not create:
        return 0 if not missing else 1
    if os.geteuid() != 0:
        print("meta1 accounts: --create needs root", file=sys.stderr)
        return 1
    for kind, user in missing:
        result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                                 "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", f"meta1 {kind}", user],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(f"meta1 accounts: useradd {user}: {result.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"{user:<8} created ({kind})")
    return 0
