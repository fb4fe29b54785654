"""accept_rate — how fast meta1's smtps+qmgr accept mail, next to Postfix's smtpd, same machine.

    python3 benchmarks/accept_rate.py [--messages N] [--sessions 10,50] [--size 5120]
                                      [--only meta1|postfix] [--reuse] [--dir DIR]
                                      [--timeout SECONDS] [--json FILE] [--keep]

Issue 3's accept-rate benchmark; not a test, not run in CI. For every session count it
drives Postfix's `smtp-source` (S parallel sessions, N messages of SIZE body bytes, one
recipient each; one message per connection unless --reuse, which sends them all over
each session's connection) first into meta1's smtps+qmgr and then into a private Postfix
smtpd whose delivery is held, and prints for each: wall seconds around smtp-source,
messages per second, the servers' CPU milliseconds per message, and how many messages
each server really has in its queue afterwards; then the ratio meta1/Postfix of the
message rates per session count. Before the runs it measures the disk's own limit,
write+fdatasync per second of 5 KB appended to a file in the same file system
(`--dir`, default the system temporary directory): neither server can acknowledge
messages faster than its queue's file system completes flushes, except by sharing one
flush among several messages (group commit).

Every run starts a fresh server on an empty queue in a new directory under --dir, on a
free loopback port (bind port 0, close, reuse the number), and stops it before the next
run; the directory is removed at the end unless --keep. Nothing listens on anything but
127.0.0.1.

meta1 (needs `python3 -m meta1 qmgr` and `smtps`): a configuration with only the queue
directory and the smtps listener, qmgr started first, then smtps, both in the foreground
as child processes of this script (their stderr goes to a log file in the run's
directory), with PYTHONPATH set to this checkout and this script's Python. Ready means
the listener answers "220". The queue is counted with `meta1 mailq --json`. Stopped with
SIGTERM, SIGKILL after 10 s.

Postfix (needs root: its master runs as root and drops to `mail_owner`): its own main.cf
and master.cf in the run's directory (`postfix -c DIR`, no global configuration
involved), queue_directory there too, every service out of chroot, one smtpd listening on
127.0.0.1:PORT, the services the distribution's master.cf declares otherwise unchanged,
logging to a file (`maillog_file`) since meta1 logs too. Started with `postfix -c DIR
start`, ready when smtpd answers "220", counted with `postqueue -c DIR -j`, stopped with
`postfix -c DIR stop`; any process of the instance still alive 10 s later is killed by
pid.

Why Postfix's delivery is held by an access action, `smtpd_recipient_restrictions =
check_client_access static:HOLD`: the message then takes Postfix's complete accept path —
smtpd, trivial-rewrite, cleanup writing the queue file and fsync()ing it before smtpd
sends 250 — and cleanup files it in the hold queue instead of incoming, so qmgr is never
told about it and no delivery work competes for CPU or disk during the measurement.
meta1 in turn has no smtpc running, so its qmgr only keeps what it committed. The
alternatives do more than accept: `defer_transports` makes qmgr move every message from
incoming to active to deferred, with a defer log written per message; an unreachable
relayhost adds connection attempts and the same deferral; `header_checks` with HOLD
costs a regular-expression pass over each header. Postfix offers no switch that turns
its fsync off, and meta1's receive path syncs content and the IBDB before its 250
(spec/receive-path.md), so both run with real fsync.

CPU time is read from /proc/PID/stat (utime+stime+cutime+cstime, clock ticks) summed
over each server's process tree — meta1's two daemons, Postfix's master and everything it
spawned (smtpd, cleanup, trivial-rewrite, anvil, postlogd, ...) — just before and just
after smtp-source runs. Counting the children's reaped times (cutime, cstime) keeps the
CPU of processes that exited during the run. smtp-source's own CPU is shown apart
(column `client`, from getrusage of our reaped children), because on a small machine the
client's share of the CPUs bounds both servers alike.

Caveats: both servers and the client share the machine's CPUs, so client cost limits
both alike; results on a tmpfs or a disk with a volatile write cache acknowledged as
durable are not comparable to a real disk (the file system type is printed); a run's
rate includes connection setup and teardown, which is part of accepting mail.

A run that does not finish within --timeout (default 30 s + 1 s per 20 messages) is
reported as failed — smtp-source is killed, the server stopped — so a stalled server
costs minutes, not the whole evening.

Linux only (/proc). Exit status: 0 when every run completed (smtp-source exit 0 and the
server queued every message), 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import resource
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

REPO = Path(__file__).resolve().parent.parent
SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.net"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
READY_TIMEOUT = 30.0
STOP_GRACE = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


# --- processes -------------------------------------------------------------------------

def parent_map() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = read_stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    return parents


def read_stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat split after the command name (which may contain spaces), so that
    index 0 is `state`, 1 `ppid`, 11..14 utime, stime, cutime, cstime; None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def process_tree(roots: Iterable[int]) -> set[int]:
    """The given pids that are still alive and all their descendants."""
    parents = parent_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    pending = [pid for pid in roots if pid in parents]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds used so far by a process tree, including reaped children."""
    ticks = 0
    for pid in process_tree(roots):
        fields = read_stat_fields(pid)
        if fields:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of our reaped children so far (smtp-source, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def alive(pids: Iterable[int]) -> set[int]:
    """The pids that still exist and are not zombies."""
    living = set()
    for pid in pids:
        fields = read_stat_fields(pid)
        if fields and fields[0] != "Z":
            living.add(pid)
    return living


def become_subreaper() -> None:
    """Makes orphaned descendants (Postfix's master daemonizes; its children outlive it
    for a moment) our children instead of init's, so that reap_zombies() collects them
    and a run leaves no <defunct> entries behind. Best effort: prctl is Linux's."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap_zombies() -> None:
    """Collects every child of ours that has exited, by pid, so that the status of a
    child some Popen object still waits for is never taken (Popen's children are
    waited for before this runs)."""
    me = os.getpid()
    for pid, ppid in parent_map().items():
        fields = read_stat_fields(pid) if ppid == me else None
        if fields and fields[0] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Waits until none of pids is alive (reaping those that are our children); returns survivors."""
    deadline = time.monotonic() + timeout
    while True:
        reap_zombies()
        living = alive(pids)
        if not living or time.monotonic() >= deadline:
            return living
        time.sleep(0.05)


def kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --- sockets and the disk ---------------------------------------------------------------

def free_port() -> int:
    """A loopback port nobody listens on now (bound to 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_banner(port: int, still_running: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
    """Connects until the server's greeting starts with 220; RuntimeError if the server
    died or the timeout passed first. QUIT is sent so the probe leaves no half session."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if not still_running():
            raise RuntimeError(f"server exited before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                greeting = probe.recv(512)
                if greeting.startswith(b"220"):
                    probe.sendall(b"QUIT\r\n")
                    probe.recv(512)
                    return
                last_error = f"greeting {greeting[:60]!r}"
        except OSError as error:
            last_error = str(error)
        time.sleep(0.1)
    raise RuntimeError(f"no 220 on port {port} within {timeout:.0f} s ({last_error})")


def filesystem_type(path: Path) -> str:
    """Type of the file system holding path, from the longest matching mount point."""
    best, fstype = "", "unknown"
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        mount_point = before.split()[4].replace("\\040", " ")
        prefix = mount_point.rstrip("/") + "/"
        if (target == mount_point or target.startswith(prefix)) and len(mount_point) >= len(best):
            best, fstype = mount_point, after.split()[0]
    return fstype


def fsync_baseline(directory: Path, size: int, duration: float = 1.0) -> float:
    """write()+fdatasync() of `size` bytes appended to one file, per second, for
    `duration` seconds: the rate at which this file system completes durable writes."""
    path = directory / "fsync-baseline"
    block = b"x" * size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count = 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < duration:
            os.write(fd, block)
            os.fdatasync(fd)
            count += 1
        return count / elapsed
    finally:
        os.close(fd)
        path.unlink()


# --- the servers -----------------------------------------------------------------------

class Server:
    """A server under test, private to one run: its files live in workdir, it listens
    on 127.0.0.1:port and logs to self.log. Subclasses start, count and stop it."""

    name = ""

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / log_name
        self.pids_seen: set[int] = set()  # for stop(): every process ever seen in the tree

    def start(self) -> None:
        raise NotImplementedError

    def root_pids(self) -> list[int]:
        """The processes whose trees make up the running server."""
        raise NotImplementedError

    def queued(self) -> int:
        """How many messages the server holds in its queue now."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stops every process of the server; safe to call twice or before start()."""
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        pids = sorted(process_tree(self.root_pids()))
        self.pids_seen.update(pids)
        return pids

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


#: smtps processes sharing the listen socket (the smtps option ``processes``): one per
#: CPU core, as Postfix runs one smtpd process per session (up to 100). Set with
#: --smtps-processes.
SMTPS_PROCESSES = max(1, min(4, os.cpu_count() or 1))


class Meta1Server(Server):
    """smtps and qmgr of this checkout on a private queue directory. Subclasses may run
    more daemons (``daemons``, started in this order, stopped in the reverse) and add to
    the configuration (``config_text``)."""

    name = "meta1"
    daemons: tuple[str, ...] = ("qmgr", "smtps")

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "meta1.log")
        self.queue = workdir / "queue"
        self.config = workdir / "meta1.conf"
        self.processes: list[subprocess.Popen[bytes]] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "meta1", *args, "-f", str(self.config)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def config_text(self) -> str:
        return (f'queue_directory = "{self.queue}";\n'
                f"smtps {{ processes = {SMTPS_PROCESSES};"
                " listen_socket { type = inet; address = 127.0.0.1;"
                f" port = {self.port}; }} }}\n")

    def start(self) -> None:
        self.queue.mkdir(parents=True)
        self.config.write_text(self.config_text())
        log = self.log.open("ab")
        try:
            for daemon in self.daemons:
                self.processes.append(subprocess.Popen(
                    self.command(daemon), cwd=self.workdir, env=self.environment(),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log))
                if daemon == "qmgr":
                    self.wait_for_qmgr_socket()
        finally:
            log.close()
        wait_for_banner(self.port, lambda: all(p.poll() is None for p in self.processes))

    def wait_for_qmgr_socket(self) -> None:
        # smtps connects to qmgr at start; give qmgr until its socket exists (spec/receive-path.md).
        socket_path = self.queue / "qmgr" / "smtpsqmgr"
        deadline = time.monotonic() + READY_TIMEOUT
        while not socket_path.exists() and time.monotonic() < deadline:
            if self.processes[-1].poll() is not None:
                raise RuntimeError("meta1 qmgr exited at start")
            time.sleep(0.05)

    def root_pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def queued(self) -> int:
        result = subprocess.run(self.command("mailq", "--json"), cwd=self.workdir, env=self.environment(),
                                capture_output=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"meta1 mailq failed: {result.stderr.decode(errors='replace').strip()}")
        return len(json.loads(result.stdout))

    def stop(self) -> None:
        if not self.processes:
            return
        self.server_pids()
        for process in reversed(self.processes):  # smtps before qmgr: stop taking mail first
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        kill_pids(wait_gone(self.pids_seen, 1.0), signal.SIGKILL)
        self.processes.clear()


class PostfixServer(Server):
    """A private Postfix instance under workdir whose smtpd holds every message
    (subclasses change what happens to the mail in ``delivery_settings``)."""

    name = "postfix"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "maillog")
        self.config_dir = workdir / "etc"
        self.spool = workdir / "spool"
        self.started = False

    def main_cf(self) -> str:
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.spool}",
            f"data_directory = {self.workdir / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = postfix.bench.test",
            "mydomain = bench.test",
            "myorigin = $myhostname",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "biff = no",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            *self.delivery_settings(),
            "smtpd_tls_security_level = none",
            f"maillog_file = {self.log}",
            f"maillog_file_prefixes = {self.workdir}",
            "",
        ])

    def delivery_settings(self) -> list[str]:
        """main.cf lines deciding what becomes of accepted mail: here, held."""
        return [
            # The discard service: should a message ever leave hold, it goes nowhere.
            "default_transport = discard",
            "smtpd_recipient_restrictions = check_client_access static:HOLD",
        ]

    def master_cf(self) -> str:
        """The distribution's master.cf with every service out of chroot (the queue is
        not inside a chroot tree) and its one `smtp inet` listener moved to our port;
        any other inet listener is dropped."""
        source = Path("/etc/postfix/master.cf")
        if not source.exists():
            source = Path("/usr/share/postfix/master.cf.dist")
        kept: list[str] = []
        keep_entry = False
        for line in source.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace():
                if keep_entry:
                    kept.append(line)
                continue
            fields = line.split()
            if len(fields) < 8:
                keep_entry = False
                continue
            service, kind = fields[0], fields[1]
            keep_entry = kind != "inet" or service == "smtp"
            if not keep_entry:
                continue
            if kind == "inet":
                fields[0] = f"127.0.0.1:{self.port}"
            fields[4] = "n"
            kept.append(" ".join(fields))
        return "\n".join(kept) + "\n"

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.config_dir), *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PATH": SBIN_PATH})

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        self.config_dir.mkdir(parents=True)
        self.spool.mkdir()
        data = self.workdir / "data"
        data.mkdir()
        shutil.chown(data, user="postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        self.started = True  # before the call: an interrupted start still gets stopped
        result = self.postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {(result.stdout + result.stderr).strip()}")
        # `postfix start` returns once master has initialized (master -w), pid file written.
        wait_for_banner(self.port, lambda: bool(alive([self.master_pid() or 0])))

    def instance_pids(self) -> set[int]:
        """Every process of this instance: master's tree, plus any process whose
        environment names our configuration directory (an orphan after a crash)."""
        master = self.master_pid()
        pids = process_tree([master]) if master else set()
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if marker in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                        pids.add(int(entry.name))
                except OSError:
                    pass
        pids.discard(os.getpid())
        return pids

    def root_pids(self) -> list[int]:
        master = self.master_pid()
        return [master] if master else []

    def queue_entries(self) -> list[dict[str, object]]:
        """`postqueue -j`: one object per message in any of the instance's queues."""
        result = subprocess.run(["postqueue", "-c", str(self.config_dir), "-j"], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "PATH": SBIN_PATH})
        if result.returncode != 0:
            raise RuntimeError(f"postqueue failed: {result.stderr.strip()}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def queued(self) -> int:
        entries = self.queue_entries()
        not_held = [entry for entry in entries if entry.get("queue_name") != "hold"]
        if not_held:
            raise RuntimeError(f"{len(not_held)} messages outside the hold queue")
        return len(entries)

    def stop(self) -> None:
        if not self.started:
            return
        pids = self.instance_pids() | self.pids_seen
        if self.master_pid() in alive(pids):
            self.postfix("stop")
        survivors = wait_gone(pids, STOP_GRACE)
        if survivors:
            print(f"postfix: killing leftover processes {sorted(survivors)}", file=sys.stderr)
            kill_pids(survivors, signal.SIGKILL)
            wait_gone(survivors, 2.0)
        self.started = False


# --- runs ------------------------------------------------------------------------------

@dataclass
class Run:
    target: str
    sessions: int
    messages: int
    size: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    queued: int | None = None
    source_exit: int | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)
    round: int = 1

    @property
    def label(self) -> str:
        """Unique among the runs of one invocation (a directory name)."""
        return f"{self.target}-{self.sessions}-r{self.round}"

    @property
    def ok(self) -> bool:
        return not self.error and self.source_exit == 0 and self.queued == self.messages

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.messages

    @property
    def client_cpu_ms_per_message(self) -> float:
        return 1000 * self.client_cpu_seconds / self.messages

    @staticmethod
    def table_header() -> str:
        """print_table's columns after `client` for this kind of run."""
        return f" {'queued':>7}"

    def table_cells(self) -> str:
        return f" {'-' if self.queued is None else self.queued:>7}"

    def detail_lines(self) -> list[str]:
        """Lines print_table prints after the table for this run."""
        return []

    def figures(self) -> dict[str, object]:
        """The run as JSON-ready data, derived figures included."""
        return asdict(self) | {"msgs_per_second": self.rate, "cpu_ms_per_message": self.cpu_ms_per_message,
                               "client_cpu_ms_per_message": self.client_cpu_ms_per_message}


def smtp_source_command(port: int, sessions: int, messages: int, size: int, reuse: bool) -> list[str]:
    command = [smtp_source_path(), "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", SENDER, "-t", RECIPIENT]
    if reuse:
        command.append("-d")
    return [*command, f"127.0.0.1:{port}"]


def smtp_source_path() -> str:
    path = shutil.which("smtp-source", path=SBIN_PATH)
    if not path:
        raise SystemExit("accept_rate: smtp-source not found (Debian package postfix; sh tools/peers installs it)")
    return path


def measure(server: Server, run: Run, reuse: bool, timeout: float) -> None:
    """One run against a started server: smtp-source timed, CPU before/after, queue counted."""
    command = smtp_source_command(server.port, run.sessions, run.messages, run.size, reuse)
    cpu_before = tree_cpu_seconds(server.server_pids())
    client_before = children_cpu_seconds()
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        run.source_exit = result.returncode
        if result.returncode != 0:
            run.error = f"smtp-source exit {result.returncode}: {(result.stderr or result.stdout).strip()[:500]}"
    except subprocess.TimeoutExpired:
        run.error = f"smtp-source did not finish within {timeout:.0f} s (a stalled server?)"
    run.seconds = time.monotonic() - started
    run.cpu_seconds = tree_cpu_seconds(server.server_pids()) - cpu_before
    run.client_cpu_seconds = children_cpu_seconds() - client_before
    run.queued = server.queued()
    if run.queued != run.messages and not run.error:
        run.error = f"{run.queued} of {run.messages} messages in the queue"


Measure = Callable[[Server, Run, bool, float], None]


def bench(make_server: Callable[[Path], Server], workdir: Path, run: Run, reuse: bool, timeout: float,
          measure_run: Measure = measure) -> Run:
    """One run on a fresh server in workdir: started, measured by measure_run, stopped
    (also on errors and at exit); errors and the server's log tail go into the run."""
    workdir.mkdir(mode=0o755)
    server = make_server(workdir)
    atexit.register(server.stop)
    try:
        server.start()
        measure_run(server, run, reuse, timeout)
    except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as error:
        run.error = run.error or str(error)
        log = server.log_tail()
        if log:
            run.notes.append(f"{server.name} log tail:\n{log}")
    finally:
        server.stop()
        atexit.unregister(server.stop)
    return run


def meta1_available() -> str:
    """Empty when `python3 -m meta1 qmgr` exists, else why not."""
    # cwd=REPO: `python -m` puts the working directory first on sys.path.
    result = subprocess.run([sys.executable, "-m", "meta1", "qmgr", "--help"], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"`python3 -m meta1 qmgr` is not available ({last_line})"
    return ""


def postfix_available() -> str:
    if os.geteuid() != 0:
        return "the Postfix half needs root (postfix's master runs as root); run this as root to compare"
    if not shutil.which("postfix", path=SBIN_PATH):
        return "postfix is not installed (sh tools/peers installs it as root)"
    return ""


# --- output ----------------------------------------------------------------------------

def ratios(runs: Sequence[Run]) -> dict[int, list[float]]:
    """meta1 msg/s divided by Postfix msg/s of the same round, per session count, for
    every round in which both runs succeeded."""
    by_key = {(run.target, run.sessions, run.round): run for run in runs if run.ok}
    out: dict[int, list[float]] = {}
    for (target, sessions, round_) in sorted(by_key):
        if target == "meta1" and ("postfix", sessions, round_) in by_key:
            out.setdefault(sessions, []).append(by_key["meta1", sessions, round_].rate
                                                / by_key["postfix", sessions, round_].rate)
    return out


def print_table(runs: Sequence[Run]) -> None:
    """One row per run (the columns every run has, then its kind's own), each run's
    detail lines, errors and notes, and the ratios."""
    header = (f"{'target':<8} {'round':>5} {'sessions':>8} {'messages':>8} {'seconds':>8} {'msg/s':>8} {'CPU ms/msg':>10}"
              f" {'client':>7}" + (runs[0].table_header() if runs else ""))
    print(header)
    print("-" * len(header))
    for run in runs:
        print(f"{run.target:<8} {run.round:>5} {run.sessions:>8} {run.messages:>8} {run.seconds:>8.2f} {run.rate:>8.0f}"
              f" {run.cpu_ms_per_message:>10.2f} {run.client_cpu_ms_per_message:>7.2f}" + run.table_cells()
              + ("" if run.ok else "  FAILED"))
    for run in runs:
        for line in run.detail_lines():
            print(line)
    for run in runs:
        if run.error:
            print(f"{run.target} {run.sessions} sessions: {run.error}")
        for note in run.notes:
            print(note)
    for sessions, values in sorted(ratios(runs).items()):
        if len(values) == 1:
            print(f"ratio meta1/postfix at {sessions} sessions: {values[0]:.2f}")
        else:
            print(f"ratio meta1/postfix at {sessions} sessions: median {statistics.median(values):.2f} over "
                  f"{len(values)} rounds ({', '.join(f'{v:.2f}' for v in values)})")


def session_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("session counts must be positive")
    return values


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every smtp-source benchmark here shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    parser.add_argument("--sessions", type=session_list, default=[10, 50], help="parallel sessions (default 10,50)")
    parser.add_argument("--size", type=int, default=5120, help="message body bytes (default 5120)")
    parser.add_argument("--only", choices=("meta1", "postfix"), help="run one server only")
    parser.add_argument("--reuse", action="store_true", help="all messages of a session over one connection (-d)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the queues go (default: the temporary directory)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up on a run after this long (default 30 + messages/20)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the queues and logs")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="repeat everything N times, the servers' order alternating, and report the "
                             "median ratio (runs drift on a shared machine; default 1)")
    parser.add_argument("--smtps-processes", type=int, default=None, metavar="N",
                        help="meta1 smtps processes (default: one per CPU core, at most 4)")
    return parser


def finish_arguments(parser: argparse.ArgumentParser, arguments: argparse.Namespace,
                     seconds_per_message: float = 1 / 20) -> argparse.Namespace:
    """Checks the shared options and fills in the default --timeout."""
    if arguments.messages < 1 or arguments.size < 0:
        parser.error("--messages must be positive and --size not negative")
    if arguments.timeout is None:
        arguments.timeout = 30 + arguments.messages * seconds_per_message
    return arguments


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("meta1 vs Postfix accept rate (smtp-source, real fsync)")
    return finish_arguments(parser, parser.parse_args(argv))


Factory = TypeVar("Factory")  # whatever makes a server: accept_rate's take the directory only


def prepare(arguments: argparse.Namespace, program: str,
            candidates: Iterable[tuple[str, Factory, Callable[[], str]]]) -> list[tuple[str, Factory]]:
    """What every benchmark does before its runs: applies --smtps-processes, makes
    SIGTERM/SIGHUP unwind like Ctrl-C (so every finally and atexit handler stops
    servers), checks for smtp-source, becomes a subreaper, and returns the candidates
    (name, server factory, why-not check) that --only selects and that can run here."""
    if arguments.smtps_processes is not None:
        global SMTPS_PROCESSES
        SMTPS_PROCESSES = max(1, arguments.smtps_processes)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: sys.exit(128 + number))
    smtp_source_path()
    become_subreaper()
    targets: list[tuple[str, Factory]] = []
    for name, factory, why_not in candidates:
        if arguments.only not in (None, name):
            continue
        reason = why_not()
        if reason:
            print(f"{program}: skipping {name}: {reason}", file=sys.stderr)
        else:
            targets.append((name, factory))
    return targets


def make_base(arguments: argparse.Namespace, prefix: str) -> tuple[Path, str, float]:
    """The directory for this invocation's runs under --dir (removed at exit unless
    --keep), its file system type and the fsync baseline measured there, printed."""
    arguments.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=arguments.dir))
    base.chmod(0o755)  # Postfix's processes (user postfix) must reach their queue
    if not arguments.keep:
        atexit.register(shutil.rmtree, base, True)

    fstype = filesystem_type(base)
    fsyncs = fsync_baseline(base, arguments.size)
    print(f"fsync baseline: {fsyncs:.0f} write+fdatasync/s ({arguments.size} bytes appended) on {fstype} ({base});"
          f" {os.cpu_count()} CPUs shared by servers and client")
    if fstype in ("tmpfs", "ramfs", "overlay"):
        print(f"warning: {fstype} — fsync may cost nothing here; use --dir on a real disk", file=sys.stderr)
    return base, fstype, fsyncs


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    targets = prepare(arguments, "accept_rate", (("meta1", Meta1Server, meta1_available),
                                                 ("postfix", PostfixServer, postfix_available)))
    if not targets:
        return 1
    base, fstype, fsyncs = make_base(arguments, "meta1-accept-rate-")

    runs = run_all(arguments, targets, Run, lambda factory, run: bench(
        factory, base / run.label, run, arguments.reuse, arguments.timeout))
    print_table(runs)

    return finish(arguments, base, runs, fsync_per_second=fsyncs, filesystem=fstype)


AnyRun = TypeVar("AnyRun", bound=Run)


def run_all(arguments: argparse.Namespace, targets: list[tuple[str, Factory]], run_type: type[AnyRun],
            one_run: Callable[[Factory, AnyRun], AnyRun]) -> list[AnyRun]:
    """Every session count against every target in turn, each run made by one_run; with
    --rounds all of it again, the targets' order reversed every other round, so that a
    machine getting slower (or faster) during the runs favours neither server."""
    runs: list[AnyRun] = []
    for round_ in range(1, max(1, arguments.rounds) + 1):
        for sessions in arguments.sessions:
            for name, factory in (targets if round_ % 2 else list(reversed(targets))):
                print(f"running {name}, {sessions} sessions, {arguments.messages} messages, round {round_} ...",
                      file=sys.stderr, flush=True)
                run = run_type(name, sessions, arguments.messages, arguments.size)
                run.round = round_
                runs.append(one_run(factory, run))
    return runs


def finish(arguments: argparse.Namespace, base: Path, runs: Sequence[Run], **facts: object) -> int:
    """Writes --json (the facts, the runs' figures, the ratios), says where --keep kept
    things, and returns the exit status: 0 when every run is ok."""
    if arguments.json:
        arguments.json.write_text(json.dumps({
            **facts, "cpus": os.cpu_count(), "reuse_connections": arguments.reuse,
            "runs": [run.figures() for run in runs],
            "ratio_meta1_postfix": {str(sessions): statistics.median(values)
                                    for sessions, values in ratios(runs).items()},
            "ratios_per_round": {str(sessions): values for sessions, values in ratios(runs).items()},
        }, indent=2) + "\n")
    if arguments.keep:
        print(f"queues and logs kept in {base}")
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
