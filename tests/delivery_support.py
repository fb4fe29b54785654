"""Helpers for the delivery-path fault and peer tests: a whole relay on loopback.

    def test_x(world):                                   # the fixture below
        world.dns.add("example.test", "MX", "10 mx.example.test")
        far = world.sink("-f", "RCPT")                   # smtp-sink on 127.0.0.1:world.port
        home = world.peer(host="::1")                    # ScriptedPeer on [::1]:world.port
        mta = world.start(qmgr="min_queue_delay = 1h;")  # qmgr, smtps, smar, smtpc
        world.send("a@home.test", ["b@far.test"])

Responsibilities
    * :class:`World` — one test's relay: a :class:`~dnsserver.DnsServer` with the zones
      the test gives it, meta1's four daemons (``tests/mta.py``) configured to use that
      server and to deliver to ``world.port``, and the receiving peers. smtpc has one
      ``remote_port`` for every server, so a test that needs two servers runs them on the
      same port of ``127.0.0.1`` and ``::1`` (the only addresses tests touch); the port is
      chosen free on both. Everything it started is stopped by pid at the end.
    * :class:`ScriptedPeer` — a small threaded SMTP server for what smtp-sink cannot do:
      a reply per recipient (the local part says which: ``r550-x@…`` gets 550), a chosen
      EHLO extension list, a count of connections (null MX: "the peer sees nothing") and
      of those open at once (``open_now``, ``max_open``: connection limits), a ``hold``
      gate the reply to the end of data waits for (sessions pile up meanwhile), and a
      ``slow`` gate the reply to RCPT of a ``slow-…`` recipient waits for (a server slower
      than a client's timer; ``stalled_at`` says since when each waits). It never
      pipelines its replies and answers one command at a time.
    * :func:`start_sink` — Postfix's ``smtp-sink`` on a chosen address and port, with its
      fault-injection options; its dumps (``-d``) are read as they complete.
    * :func:`dsn_reports` — the per-recipient fields of an RFC 3464 DSN, parsed with the
      standard library's email package (an independent reader of what qmgr built).
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import re
import shutil
import smtplib
import socket
import socketserver
import sqlite3
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dnsserver import DnsServer
from mta import MTA, wait_for
from test_smtpc_interop import SINK

#: Seconds any wait in these tests may take before it fails.
WAIT = 20.0


def dual_port() -> int:
    """A TCP port free on both 127.0.0.1 and ::1 (smtpc's one ``remote_port``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6) as v6:
            v6.bind(("::1", 0))
            port = v6.getsockname()[1]
            with socket.socket() as v4:
                try:
                    v4.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both loopback addresses")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def wait_listening(host: str, port: int, alive=lambda: True) -> None:
    def up() -> bool:
        assert alive(), f"the server on {host}:{port} exited"
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout=10, interval=0.02, what=f"a listener on {host}:{port}")


@dataclass
class SinkProcess:
    """A running smtp-sink and what it dumped (``messages()``, ``wait(n)``)."""

    proc: subprocess.Popen
    dump: Path
    host: str

    def messages(self) -> list[tuple[dict[str, list[str]], bytes]]:
        """(smtp-sink's X- fields, content with CRLF) of every complete dump; one still
        being written (smtp-sink writes as the data arrives) is left out."""
        out = []
        for path in self.complete():
            head, _, rest = path.read_bytes().partition(b"Received: ")
            fields: dict[str, list[str]] = {}
            for line in head.decode().splitlines():
                name, _, value = line.partition(": ")
                fields.setdefault(name, []).append(value)
            content = rest.split(b"\n", 3)[3]           # after the three-line Received header
            out.append((fields, content[:-1].replace(b"\n", b"\r\n")))
        return out

    def complete(self) -> list[Path]:
        """Dump files that end with the empty line that closes a message."""
        return [f for f in sorted(self.dump.iterdir()) if f.read_bytes().endswith(b"\n\n")]

    def wait(self, count: int, timeout: float = WAIT) -> list[tuple[dict[str, list[str]], bytes]]:
        """Until ``count`` complete messages are dumped (more is not waited for)."""
        wait_for(lambda: len(self.complete()) >= count, timeout=timeout,
                 what=f"{count} messages at the sink on {self.host}")
        return self.messages()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dump, ignore_errors=True)


def start_sink(host: str, port: int, *options: str) -> SinkProcess:
    """smtp-sink on ``host``:``port`` dumping every transaction (``-d``)."""
    dump = Path(tempfile.mkdtemp(prefix="delivery-sink-"))
    os.chmod(dump, 0o755)
    args = [SINK]
    if os.geteuid() == 0:   # smtp-sink refuses to run as root without -u
        os.chown(dump, pwd.getpwnam("postfix").pw_uid, -1)
        args += ["-u", "postfix"]
    proc = subprocess.Popen(args + ["-d", f"{dump}/%H%M%S.", *options, f"{_bracketed(host)}:{port}", "10"],
                            stderr=subprocess.DEVNULL)
    running = SinkProcess(proc, dump, host)
    try:
        wait_listening(host, port, lambda: proc.poll() is None)
    except BaseException:
        running.stop()
        raise
    return running


# --- a scripted SMTP peer -------------------------------------------------------------------

RCPT_CODE = re.compile(r"^r([245]\d\d)-", re.IGNORECASE)
SLOW_RCPT = re.compile(r"^slow-", re.IGNORECASE)


@dataclass
class Transaction:
    """What one SMTP transaction delivered to a :class:`ScriptedPeer`."""

    client: str
    mail: str
    rcpts: list[str]
    content: bytes


@dataclass
class ScriptedPeer:
    """See the module documentation. ``extensions``: the EHLO lines after the host name."""

    host: str = "127.0.0.1"
    port: int = 0
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")
    connections: int = 0
    transactions: list[Transaction] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    hold: threading.Event | None = None   # set: the end of data is answered
    slow: threading.Event | None = None   # set: RCPT of a slow-… recipient is answered
    stalled_at: list[float] = field(default_factory=list)    # time.monotonic() of each slow RCPT
    open_now: int = 0
    max_open: int = 0

    def start(self) -> "ScriptedPeer":
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = WAIT

            def handle(self) -> None:
                with peer._lock:
                    peer.connections += 1
                    peer.open_now += 1
                    peer.max_open = max(peer.max_open, peer.open_now)
                try:
                    peer._session(self.rfile, self.wfile, self.client_address[0])
                except (OSError, ValueError):
                    pass
                finally:
                    with peer._lock:
                        peer.open_now -= 1

        class Server(socketserver.ThreadingTCPServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            allow_reuse_address = True
            daemon_threads = True

        self._lock = threading.Lock()
        self.server = Server((self.host, self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def _session(self, rfile, wfile, client: str) -> None:
        def reply(text: str) -> None:
            wfile.write(text.encode() + b"\r\n")
            wfile.flush()

        reply("220 peer.test ESMTP")
        mail, rcpts = None, []
        while line := rfile.readline(4096):
            command = line.rstrip(b"\r\n").decode("utf-8", "replace")
            with self._lock:
                self.commands.append(command)
            verb = command[:4].upper()
            if verb in ("EHLO", "LHLO"):
                lines = ("peer.test", *self.extensions)
                reply("\r\n".join([f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]))
            elif verb == "HELO":
                reply("250 peer.test")
            elif verb == "MAIL":
                mail, rcpts = command[10:].strip(), []
                reply("250 2.1.0 ok")
            elif verb == "RCPT":
                address = command[8:].strip()
                if self.slow is not None and SLOW_RCPT.match(address.strip("<")):
                    with self._lock:
                        self.stalled_at.append(time.monotonic())
                    self.slow.wait(WAIT)
                wanted = RCPT_CODE.match(address.strip("<"))
                code = wanted.group(1) if wanted else "250"
                if code == "250":
                    rcpts.append(address)
                reply(f"{code} {code[0]}.1.{1 if code[0] == '5' else 0} rcpt {address}")
            elif verb == "DATA":
                if not rcpts:
                    reply("554 5.5.1 no valid recipients")
                    continue
                reply("354 go ahead")
                content = bytearray()
                while (data := rfile.readline(1 << 20)) not in (b".\r\n", b""):
                    content += data[1:] if data.startswith(b".") else data
                if self.hold is not None:
                    self.hold.wait(WAIT)
                with self._lock:
                    self.transactions.append(Transaction(client, mail or "", list(rcpts), bytes(content)))
                mail, rcpts = None, []
                reply("250 2.0.0 queued")
            elif verb == "RSET":
                mail, rcpts = None, []
                reply("250 2.0.0 ok")
            elif verb == "QUIT":
                reply("221 2.0.0 bye")
                return
            else:
                reply("502 5.5.2 not implemented")

    def wait(self, count: int, timeout: float = WAIT) -> list[Transaction]:
        wait_for(lambda: len(self.transactions) >= count, timeout=timeout,
                 what=f"{count} transactions at the peer on {self.host}")
        return list(self.transactions)


# --- the relay --------------------------------------------------------------------------------

class World:
    """One test's relay: DNS, meta1, peers (see the module documentation)."""

    def __init__(self, base: Path):
        self.base = base
        self.port = dual_port()
        self.dns = DnsServer({}).__enter__()
        self.mta: MTA | None = None
        self._stoppers: list = [self.dns.__exit__]

    def sink(self, *options: str, host: str = "127.0.0.1", port: int | None = None) -> SinkProcess:
        """smtp-sink on ``host`` at smtpc's port (or ``port``, for a peer's own next hop)."""
        if SINK is None:
            pytest.skip("Postfix smtp-sink is not installed")
        running = start_sink(host, port or self.port, *options)
        self._stoppers.append(running.stop)
        return running

    def peer(self, host: str = "127.0.0.1", **options) -> ScriptedPeer:
        running = ScriptedPeer(host, self.port, **options).start()
        self._stoppers.append(running.stop)
        return running

    def zone(self, domain: str, *addresses: str, mx: str | None = None) -> None:
        """``domain`` with one exchanger (``mx``, default ``mx.<domain>``) at ``addresses``."""
        exchanger = mx or f"mx.{domain}"
        self.dns.add(domain, "MX", f"10 {exchanger}")
        for address in addresses:
            self.dns.add(exchanger, "AAAA" if ":" in address else "A", address)

    def start(self, *, qmgr: str = "min_queue_delay = 1h;", smtpc: str = "", dns_timeout: int = 2,
              smar: str = "", extra: str = "") -> MTA:
        """meta1 on this world; ``smar``, ``smtpc``, ``qmgr``: more of those sections,
        ``extra``: more sections (lmtpd, …)."""
        host, port = self.dns.address
        mta = MTA(self.base, extra_global=(
            f"smar {{ nameserver = {{ {host}:{port} }}; DNS_timeout = {dns_timeout};\n{smar} }}\n"
            f"smtpc {{ remote_port = {self.port}; IO_timeout = 10s; {smtpc} }}\n"
            f"qmgr {{ {qmgr} }}\n{extra}"))
        self.mta = mta
        self._stoppers.append(mta.stop)
        mta.start()
        mta.spawn("smar")
        mta.spawn("smtpc")
        mta.wait_log("qmgr", "smtpc connected")
        return mta

    def send(self, sender: str, recipients: list[str], message: bytes, **options) -> dict:
        """One message through smtps; smtplib's refused-recipients dict."""
        assert self.mta is not None
        with smtplib.SMTP("127.0.0.1", self.mta.port, timeout=30) as client:
            return client.sendmail(sender, recipients, message, **options)

    def qmgr_log(self) -> str:
        """Every qmgr log of this test (restarts write new files)."""
        assert self.mta is not None
        return "".join(p.read_text(errors="replace") for p in sorted(self.base.glob("qmgr.*.log")))

    def wait_qmgr(self, text: str, timeout: float = WAIT) -> None:
        wait_for(lambda: text in self.qmgr_log(), timeout=timeout, what=f"{text!r} in the qmgr logs")

    def wait_empty(self, timeout: float = WAIT) -> None:
        """Until no content file is left: every message and DSN is done."""
        assert self.mta is not None
        wait_for(lambda: not self.mta.content_files(), timeout=timeout, what="the queue to empty")

    def deferred(self) -> list[tuple[str, int, int, str]]:
        """DEFEDB: (address, attempts, reply code, status) of every deferred recipient."""
        assert self.mta is not None
        database = self.mta.queue / "defedb" / "defedb.sqlite"
        if not database.exists():
            return []
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            return sorted(db.execute("SELECT address, attempts, reply_code, status FROM recipients").fetchall())

    def stop(self) -> None:
        for stop in reversed(self._stoppers):
            stop()


@pytest.fixture
def world(tmp_path):
    running = World(tmp_path)
    yield running
    running.stop()


# --- reading DSNs ----------------------------------------------------------------------------

def dsn_reports(content: bytes) -> list[dict[str, str]]:
    """The per-recipient field groups of the message/delivery-status part, lower-case keys."""
    message = email.message_from_bytes(content, policy=email.policy.compat32)
    assert message.get_content_type() == "multipart/report", message.get_content_type()
    assert message.get_param("report-type") in ("delivery-status", "global-delivery-status")
    [status] = [part for part in message.walk()
                if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status")]
    payload = status.get_payload()
    if status.get_content_type() == "message/delivery-status":
        groups = payload               # compat32 splits it into one Message per field group
    else:                              # message/global-delivery-status (RFC 6533): read as text
        text = payload[0].as_string() if isinstance(payload, list) else payload
        groups = [email.message_from_string(chunk)
                  for chunk in re.split(r"\r?\n\s*\r?\n", text) if chunk.strip()]
    return [{key.lower(): " ".join(value.split()) for key, value in group.items()} for group in groups[1:]]

