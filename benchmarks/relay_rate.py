"""relay_rate — how fast meta1 relays mail end to end, next to Postfix, same machine.

    python3 benchmarks/relay_rate.py [--messages N] [--sessions 10,50] [--size 5120]
                                     [--only meta1|postfix] [--reuse] [--dir DIR]
                                     [--timeout SECONDS] [--json FILE] [--keep]
                                     [--smtps-processes N] [--connections INITIAL,MAX]

Issue 4's relay benchmark; not a test, not run in CI. For every session count it drives
Postfix's `smtp-source` (S parallel sessions, N messages of SIZE body bytes, one
recipient each, one message per connection unless --reuse) into a server that relays
every message to Postfix's `smtp-sink`: first meta1 (smtps, qmgr, smar, smtpc of this
checkout), then a private Postfix instance (smtpd, cleanup, qmgr, smtp). The clock runs
from the start of smtp-source until the sink has received the N-th message; printed per
run: those seconds, messages per second, the server's CPU milliseconds per message (all
its processes), smtp-source's, when smtp-source itself had finished (the accept phase),
how many messages the sink got and how many were still in the server's queue once it
had settled; then each server's CPU per process, and the ratio meta1/Postfix of the
message rates per session count. Both servers are durable as in accept_rate.py: every
message is fsync()ed into the queue before its 250, and relayed from there.

Shared with accept_rate.py (imported, not copied): the process bookkeeping from /proc,
free ports, the fsync baseline, the server classes (this module's are subclasses that
add delivery), the options, the JSON output and the exit status. Read that module's
docstring for how the servers are started, how CPU is read and how everything is stopped
by pid; what follows is what relaying adds.

The sink: `smtp-sink -c -m 1000 127.0.0.1:PORT 1000` (`-u postfix` as root, which it
requires), one fresh sink per run, started before the server so that the server's
configuration can name its port. It accepts everything with PIPELINING, 8BITMIME and
DSN offered, stores nothing and prints a running counter line (`sess=.. quit=..
mesg=N`, ended by a carriage return) whenever a message ends with "." or a session
ends; stdout goes to a file, and this script reads the file's last bytes every 10 ms
until `mesg` reaches N. That costs the sink one small write() per event — far less than
dumping every message to a file (`-d`), which would put the sink's own disk writes into
the race — and keeps the sink running, so that the servers see the 250 of the last
message too and empty their queues. `-M N` (exit after N messages) would stop the clock
without polling, but the sink would go away with replies outstanding, and then
neither server could be checked for an empty queue.

meta1: the configuration of accept_rate.py plus `smar { nameserver = { 127.0.0.1:P }; }`
pointing at a DNS server on loopback in this script's process (tests/dnsserver.py, which
answers `example.net MX 10 mx.example.net` and `mx.example.net A 127.0.0.1`), and
`smtpc { remote_port = SINKPORT; }`; qmgr with its default limits per destination
address, `initial_connections = 4`, `max_connections = 20` (slow start from 4 up to 20
sessions to 127.0.0.1), unless --connections. The daemons are started in the order
qmgr, smtps, smar, smtpc and the clock starts only once qmgr's log says that smtpc and
smar are connected. smar's TTL cache means a handful of DNS queries per run; the DNS
server's CPU is this script's, not meta1's.

Postfix: the private instance of accept_rate.py without the hold: `relayhost =
[127.0.0.1]:SINKPORT` (brackets: no MX lookup, Postfix's shortest path to a fixed
next hop), default transport smtp with its defaults — connection cache on demand,
`initial_destination_concurrency = 5`, `default_destination_concurrency_limit = 20` —
unless --connections, which sets `initial_destination_concurrency` and
`smtp_destination_concurrency_limit` to the same figures as meta1's. Both servers thus
talk to one next hop with about the same concurrency.

CPU per process: for meta1 the tree of each daemon (smtps with its worker processes);
for Postfix the processes by command name (smtpd, cleanup, qmgr, smtp,
trivial-rewrite, ...), and under `(exited)` what processes that ended during the run
used (master reaps them; Postfix's processes exit after max_use = 100 uses).

A run is ok when smtp-source exited 0, the sink got at least N messages, and within 30 s
of the N-th arrival the server's queue was empty (mailq --json, postqueue -j). A run
that does not see N arrivals within --timeout (default 30 s + 1 s per 20 messages) is
failed; smtp-source is killed, server and sink are stopped.

Caveats: as accept_rate.py's (same machine and disk for everyone, real fsync, a tmpfs
warned about), and: the sink shares the CPUs too (its CPU is shown); a message delivered
twice (after a lost 250) counts twice at the sink, which the empty-queue check does not
catch; smtp-source does not pipeline but both relays' clients do, to a sink that offers
PIPELINING.

Linux only (/proc). Exit status: 0 when every run was ok, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import accept_rate
from accept_rate import (
    READY_TIMEOUT, SBIN_PATH, STOP_GRACE, Measure, Meta1Server, PostfixServer, Run, Server, bench,
    run_all,
    children_cpu_seconds, finish, free_port, make_base, meta1_available, postfix_available, prepare,
    print_table, process_tree, read_stat_fields, smtp_source_command, tree_cpu_seconds, wait_for_banner,
)

sys.path.insert(0, str(accept_rate.REPO / "tests"))
from dnsserver import DnsServer  # noqa: E402  (a test helper, reused as the benchmark's DNS)

RECIPIENT_DOMAIN = accept_rate.RECIPIENT.rpartition("@")[2]
ZONES = {
    RECIPIENT_DOMAIN: {"MX": [f"10 mx.{RECIPIENT_DOMAIN}"]},
    f"mx.{RECIPIENT_DOMAIN}": {"A": ["127.0.0.1"]},
}
SINK_SESSIONS = 1000   # smtp-sink -m and backlog: never the limit
POLL_SECONDS = 0.01    # how often the sink's counter is read
DRAIN_SECONDS = 30.0   # how long a server may take to empty its queue after the last arrival
COUNTER_TAIL = 256     # bytes read from the end of the counter file: several counter lines


# --- the sink --------------------------------------------------------------------------

class Sink:
    """smtp-sink on a free loopback port with running counters (-c) in a file."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.counters = workdir / "sink.counters"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(mode=0o755)
        path = shutil.which("smtp-sink", path=SBIN_PATH)
        if not path:
            raise SystemExit("relay_rate: smtp-sink not found (Debian package postfix; sh tools/peers installs it)")
        command = [path, "-c", "-m", str(SINK_SESSIONS)]
        if os.geteuid() == 0:
            command += ["-u", "postfix"]  # smtp-sink refuses to run as root without -u
        command += [f"127.0.0.1:{self.port}", str(SINK_SESSIONS)]
        with self.counters.open("wb") as counters, (self.workdir / "sink.log").open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=counters, stderr=log)
        wait_for_banner(self.port, lambda: self.process is not None and self.process.poll() is None)

    def arrived(self) -> int:
        """Messages the sink has received so far: `mesg=` of its last counter line."""
        with self.counters.open("rb") as counters:
            size = counters.seek(0, 2)
            counters.seek(max(0, size - COUNTER_TAIL))
            tail = counters.read()
        lines = tail.replace(b"\n", b"\r").split(b"\r")
        for line in reversed(lines):
            _, found, number = line.rpartition(b"mesg=")
            if found and number.strip().isdigit():
                return int(number)
        return 0

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds([self.process.pid]) if self.process else 0.0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --- the relays ------------------------------------------------------------------------

Connections = tuple[int, int]


class Meta1Relay(Meta1Server):
    """meta1's four daemons relaying every message to the sink via an MX on loopback."""

    daemons = ("qmgr", "smtps", "smar", "smtpc")

    def __init__(self, workdir: Path, sink_port: int, nameserver: tuple[str, int],
                 connections: Connections | None) -> None:
        super().__init__(workdir)
        self.sink_port = sink_port
        self.nameserver = nameserver
        self.connections = connections

    def config_text(self) -> str:
        host, port = self.nameserver
        text = (super().config_text()
                + f"smar {{ nameserver = {{ {host}:{port} }}; }}\n"
                + f"smtpc {{ remote_port = {self.sink_port}; }}\n")
        if self.connections:
            initial, maximum = self.connections
            text += f"qmgr {{ smtpc {{ initial_connections = {initial}; max_connections = {maximum}; }} }}\n"
        return text

    def start(self) -> None:
        super().start()
        # Delivery needs qmgr's links to smtpc and smar; until then mail would only queue.
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(line in self.log.read_text(errors="replace")
                      for line in ("smtpc connected", "connected to smar")):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise RuntimeError("meta1: qmgr did not get both smtpc and smar connected")
            time.sleep(0.05)

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far per daemon (each daemon's process tree)."""
        return {daemon: tree_cpu_seconds([process.pid]) for daemon, process in zip(self.daemons, self.processes)}


class PostfixRelay(PostfixServer):
    """The private Postfix instance relaying every message to the sink."""

    def __init__(self, workdir: Path, sink_port: int, connections: Connections | None) -> None:
        super().__init__(workdir)
        self.sink_port = sink_port
        self.connections = connections

    def delivery_settings(self) -> list[str]:
        settings = [f"relayhost = [127.0.0.1]:{self.sink_port}"]
        if self.connections:
            initial, maximum = self.connections
            settings += [f"initial_destination_concurrency = {initial}",
                         f"smtp_destination_concurrency_limit = {maximum}"]
        return settings

    def queued(self) -> int:
        return len(self.queue_entries())

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far per command name over master's tree; the reaped children's
        time (the roots' cutime+cstime) as "(exited)"."""
        parts: dict[str, float] = {}
        roots = set(self.root_pids())
        for pid in process_tree(roots):
            fields = read_stat_fields(pid)
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if fields:
                ticks = [int(value) for value in fields[11:15]]
                parts[name] = parts.get(name, 0.0) + (ticks[0] + ticks[1]) / accept_rate.CLOCK_TICKS
                if pid in roots:
                    parts["(exited)"] = parts.get("(exited)", 0.0) + (ticks[2] + ticks[3]) / accept_rate.CLOCK_TICKS
        return parts


# --- runs ------------------------------------------------------------------------------

@dataclass
class RelayRun(Run):
    """A relay run; `queued` is what was left in the server's queue once it settled."""

    arrived: int = 0
    source_seconds: float = 0.0
    sink_cpu_seconds: float = 0.0
    cpu_parts: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and self.source_exit == 0 and self.arrived >= self.messages and self.queued == 0

    @staticmethod
    def table_header() -> str:
        return f" {'sink':>6} {'accepted':>8} {'arrived':>7} {'left':>5}"

    def table_cells(self) -> str:
        return (f" {1000 * self.sink_cpu_seconds / self.messages:>6.2f} {self.source_seconds:>7.2f}s"
                f" {self.arrived:>7} {'-' if self.queued is None else self.queued:>5}")

    def detail_lines(self) -> list[str]:
        parts = sorted(self.cpu_parts.items(), key=lambda item: -item[1])
        return [f"{self.target} {self.sessions} sessions, CPU ms/msg per process: "
                + ", ".join(f"{name} {1000 * seconds / self.messages:.2f}" for name, seconds in parts if seconds > 0)]


def parts_difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def relay_measure(sink: Sink) -> Measure:
    """The measurement of one run against a started relay (accept_rate.bench calls it)."""

    def measure_run(server: Server, run: Run, reuse: bool, timeout: float) -> None:
        assert isinstance(run, RelayRun) and isinstance(server, (Meta1Relay, PostfixRelay))
        command = smtp_source_command(server.port, run.sessions, run.messages, run.size, reuse)
        cpu_before = tree_cpu_seconds(server.server_pids())
        parts_before = server.cpu_parts()
        sink_before = sink.cpu_seconds()
        client_before = children_cpu_seconds()
        with (sink.workdir / f"smtp-source-{server.name}.log").open("w+") as source_log:
            started = time.monotonic()
            source = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=source_log, stderr=source_log)
            try:
                wait_for_arrivals(sink, source, run, started, started + timeout)
                run.seconds = time.monotonic() - started
                run.cpu_seconds = tree_cpu_seconds(server.server_pids()) - cpu_before
                run.cpu_parts = parts_difference(server.cpu_parts(), parts_before)
                run.sink_cpu_seconds = sink.cpu_seconds() - sink_before
                run.arrived = sink.arrived()
                run.source_exit = source.wait(max(1.0, started + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.error = run.error or f"smtp-source did not finish within {timeout:.0f} s"
            finally:
                if source.poll() is None:
                    source.kill()
                    source.wait()
            run.client_cpu_seconds = children_cpu_seconds() - client_before
            if run.source_exit not in (None, 0):
                source_log.seek(0)
                run.error = run.error or f"smtp-source exit {run.source_exit}: {source_log.read().strip()[:500]}"
        run.queued = settled_queue(server)
        if run.queued and not run.error:
            run.error = f"{run.queued} messages still queued {DRAIN_SECONDS:.0f} s after the last arrival"

    return measure_run


def wait_for_arrivals(sink: Sink, source: subprocess.Popen[str], run: RelayRun, started: float,
                      deadline: float) -> None:
    """Until the sink has N messages (or the deadline, or smtp-source failing); notes
    when smtp-source finished, which is when the last message was accepted."""
    while sink.arrived() < run.messages:
        now = time.monotonic()
        if not run.source_seconds and source.poll() is not None:
            run.source_seconds = now - started
            if source.returncode != 0:
                return
        if now > deadline:
            run.error = f"{sink.arrived()} of {run.messages} messages at the sink after {now - started:.0f} s"
            return
        time.sleep(POLL_SECONDS)
    if not run.source_seconds and source.poll() is not None:
        run.source_seconds = time.monotonic() - started


def settled_queue(server: Server) -> int:
    """Messages left in the server's queue, waiting up to DRAIN_SECONDS for it to empty
    (the last 250s are on their way, and removal follows them)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while (left := server.queued()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --- output ----------------------------------------------------------------------------

def connections(text: str) -> Connections:
    try:
        initial, maximum = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not INITIAL,MAX: {text!r}") from None
    if not 1 <= initial <= maximum:
        raise argparse.ArgumentTypeError("need 1 <= INITIAL <= MAX")
    return initial, maximum


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = accept_rate.argument_parser("meta1 vs Postfix relay rate (smtp-source -> server -> smtp-sink, real fsync)")
    parser.add_argument("--connections", type=connections, metavar="INITIAL,MAX",
                        help="sessions to the sink: meta1's qmgr initial/max_connections and Postfix's"
                             " initial_destination_concurrency/smtp_destination_concurrency_limit"
                             " (default: each server's defaults, 4,20 and 5,20)")
    return accept_rate.finish_arguments(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    with DnsServer(ZONES) as dns_server:
        nameserver = dns_server.address
        candidates: list[tuple[str, Callable[[Path, int], Server], Callable[[], str]]] = [
            ("meta1", lambda workdir, port: Meta1Relay(workdir, port, nameserver, arguments.connections),
             meta1_available),
            ("postfix", lambda workdir, port: PostfixRelay(workdir, port, arguments.connections), postfix_available),
        ]
        targets = prepare(arguments, "relay_rate", candidates)
        if not targets:
            return 1
        base, fstype, fsyncs = make_base(arguments, "meta1-relay-rate-")

        def one_run(factory: Callable[[Path, int], Server], run: RelayRun) -> RelayRun:
            """A fresh sink, then accept_rate's bench with the server pointed at it."""
            sink = Sink(base / f"sink-{run.label}")
            atexit.register(sink.stop)
            try:
                sink.start()
                bench(lambda workdir: factory(workdir, sink.port), base / run.label,
                      run, arguments.reuse, arguments.timeout, relay_measure(sink))
            finally:
                sink.stop()
                atexit.unregister(sink.stop)
            return run

        runs = run_all(arguments, targets, RelayRun, one_run)
        print_table(runs)
    return finish(arguments, base, runs, fsync_per_second=fsyncs, filesystem=fstype,
                  connections=arguments.connections)


if __name__ == "__main__":
    sys.exit(main())
