"""The sans-I/O smtpc session over real loopback sockets, against real servers.

Peers: Postfix's ``smtp-sink`` (SMTP, ``-L`` LMTP, ``-p`` without PIPELINING, and its
fault injection ``-r``/``-f``/``-Q``), whose ``-d`` dump files show exactly what arrived;
and a strict stdlib server written here that offers no PIPELINING and drops a client that
pipelines anyway (as OpenSMTPD does), with or without CHUNKING. The I/O is a tiny
blocking driver in this file: meta1/ holds none.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meta1.ipc.records import Recipient
from meta1.smtpc.session import (Close, Delivery, NeedContent, Ready, Send, Session, SessionEnded,
                                 Settings, TransactionResult, Wait)
from mta import free_port

SINK = shutil.which("smtp-sink", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
needs_sink = pytest.mark.skipif(SINK is None, reason="Postfix smtp-sink is not installed")

MESSAGE = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: interop\r\n\r\n"
           b"first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n")
EIGHT_BIT = b"Subject: 8bit\r\n\r\ncaf\xc3\xa9 \xe2\x82\xac\r\n"


def rcpt(address: str, **fields) -> Recipient:
    return Recipient(f"r-{address}", address, fields.get("notify"), fields.get("orcpt_type"),
                     fields.get("orcpt"))


def delivery(*addresses: str, content: bytes = MESSAGE, **fields) -> Delivery:
    recipients = tuple(rcpt(a) if isinstance(a, str) else a for a in addresses)
    return Delivery(fields.pop("sender", "a@example.org"), recipients, size=len(content), **fields)


@dataclass
class Outcome:
    results: list[TransactionResult] = field(default_factory=list)
    ended: SessionEnded | None = None


def deliver(port: int, jobs: list[tuple[Delivery, bytes]], *, piece: int = 7, timeout: float = 10.0,
            **settings) -> Outcome:
    """Connect, run the session to its end, return its results (a blocking driver)."""
    session = Session(Settings(helo_name="client.test", **settings))
    outcome = Outcome()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    jobs = list(jobs)
    content = b""
    work = list(session.connected())
    try:
        while True:
            while work:
                effect = work.pop(0)
                if isinstance(effect, Send):
                    try:
                        sock.sendall(effect.data)
                    except OSError:     # the server is gone; the next recv says so
                        pass
                elif isinstance(effect, Close):
                    sock.close()
                elif isinstance(effect, SessionEnded):
                    outcome.ended = effect
                elif isinstance(effect, TransactionResult):
                    outcome.results.append(effect)
                elif isinstance(effect, Ready):
                    if jobs:
                        next_delivery, content = jobs.pop(0)
                        work += session.send(next_delivery)
                    else:
                        work += session.quit()
                elif isinstance(effect, NeedContent):
                    # Small pieces cut lines and CRLFs anywhere: stuffing must not care.
                    while session.wants_content:
                        now, content = content[:piece], content[piece:]
                        work += session.content(now, last=not content)
            if session.waiting_for is Wait.NOTHING:
                return outcome
            try:
                data = sock.recv(65536)
            except socket.timeout:
                work += session.timeout()
                continue
            except OSError:             # reset by the server
                data = b""
            work += session.receive(data) if data else session.closed()
    finally:
        sock.close()


# --- smtp-sink ---------------------------------------------------------------------------

@dataclass
class Sink:
    port: int
    dump: Path

    def messages(self) -> list[tuple[dict[str, list[str]], bytes]]:
        """(smtp-sink's X- headers, content with CRLF) of every dumped message."""
        out = []
        for path in sorted(self.dump.iterdir()):
            text = path.read_bytes()
            head, _, rest = text.partition(b"Received: ")
            fields: dict[str, list[str]] = {}
            for line in head.decode().splitlines():
                name, _, value = line.partition(": ")
                fields.setdefault(name, []).append(value)
            content = rest.split(b"\n", 3)[3]           # the three-line Received header
            assert content.endswith(b"\n\n")             # "an empty line" ends the dump
            out.append((fields, content[:-1].replace(b"\n", b"\r\n")))
        return out


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "smtp-sink exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("smtp-sink did not start listening")


@pytest.fixture
def sink():
    """Start smtp-sink with the given options; dumps go to a directory it can write."""
    started: list[tuple[subprocess.Popen, str]] = []

    def start(*options: str) -> Sink:
        dump = tempfile.mkdtemp(prefix="smtpc-sink-")
        os.chmod(dump, 0o755)
        args = [SINK]
        if os.geteuid() == 0:   # smtp-sink refuses to run as root without -u
            os.chown(dump, pwd.getpwnam("postfix").pw_uid, -1)
            args += ["-u", "postfix"]
        port = free_port()
        proc = subprocess.Popen(args + ["-d", f"{dump}/%H%M%S.", *options, f"127.0.0.1:{port}", "10"],
                                stderr=subprocess.PIPE)
        started.append((proc, dump))
        _wait_listening(port, proc)
        # The probe connection above counts as a session; let smtp-sink forget it.
        return Sink(port, Path(dump))

    yield start
    for proc, dump in started:
        proc.kill()
        proc.wait()
        shutil.rmtree(dump, ignore_errors=True)


def _wait_dumps(sink: Sink, count: int) -> list:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        files = list(sink.dump.iterdir())
        if len(files) >= count and all(f.read_bytes().endswith(b"\n\n") for f in files):
            return sink.messages()
        time.sleep(0.02)
    raise AssertionError(f"smtp-sink dumped {len(list(sink.dump.iterdir()))} of {count} messages")


def codes(outcome: Outcome) -> list[list[int]]:
    return [[r.reply.code for r in t.results] for t in outcome.results]


@needs_sink
def test_smtp_sink_two_messages_on_one_connection_byte_identical(sink) -> None:
    server = sink()
    first = delivery(rcpt("b@example.net", notify=("SUCCESS", "FAILURE"), orcpt_type="rfc822",
                          orcpt="b@example.net"), "c@example.net", ret="HDRS", envid="env-1")
    second = delivery("d@example.net", content=EIGHT_BIT, eight_bit=True, sender="")
    outcome = deliver(server.port, [(first, MESSAGE), (second, EIGHT_BIT)])
    assert codes(outcome) == [[250, 250], [250]]
    assert outcome.ended.reply is None and outcome.ended.greeted
    dumps = sorted(_wait_dumps(server, 2), key=lambda m: m[0]["X-Mail-Args"])
    (fields8, content8), (fields, content) = dumps
    assert content == MESSAGE and content8 == EIGHT_BIT
    # smtp-sink offers DSN and 8BITMIME (and no SIZE): the parameters went through.
    assert fields["X-Mail-Args"] == ["<a@example.org> RET=HDRS ENVID=env-1"]
    assert fields["X-Rcpt-Args"] == ["<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net",
                                     "<c@example.net>"]
    assert fields8["X-Mail-Args"] == ["<> BODY=8BITMIME"]


@needs_sink
def test_smtp_sink_lmtp(sink) -> None:
    server = sink("-L")
    outcome = deliver(server.port, [(delivery("b@example.net", "c@example.net"), MESSAGE)], lmtp=True)
    assert codes(outcome) == [[250, 250]]
    (fields, content), = _wait_dumps(server, 1)
    assert fields["X-Client-Proto"] == ["LMTP"] and content == MESSAGE


@needs_sink
def test_smtp_sink_without_pipelining_dsn_or_8bitmime(sink) -> None:
    server = sink("-p", "-N", "-8")
    plain = delivery(rcpt("b@example.net", notify=("NEVER",)), ret="FULL")
    eight = delivery("c@example.net", content=EIGHT_BIT, eight_bit=True)
    outcome = deliver(server.port, [(eight, EIGHT_BIT), (plain, MESSAGE)])
    assert [(r.reply.code, r.reply.status, r.local) for t in outcome.results for r in t.results] == [
        (554, "5.6.3", True), (250, "2.0.0", False)]
    (fields, content), = _wait_dumps(server, 1)
    assert fields["X-Mail-Args"] == ["<a@example.org>"] and fields["X-Rcpt-Args"] == ["<b@example.net>"]
    assert content == MESSAGE


@needs_sink
def test_smtp_sink_soft_rcpt_and_hard_mail_failures(sink) -> None:
    soft = sink("-r", "RCPT")
    outcome = deliver(soft.port, [(delivery("b@example.net", "c@example.net"), MESSAGE)])
    assert [(r.reply.code, r.reply.status) for r in outcome.results[0].results] == [(450, "4.3.0")] * 2
    hard = sink("-f", "MAIL")
    outcome = deliver(hard.port, [(delivery("b@example.net"), MESSAGE), (delivery("c@example.net"), MESSAGE)])
    assert [(r.reply.code, r.reply.status) for t in outcome.results for r in t.results] == [(500, "5.3.0")] * 2
    assert outcome.ended.reply is None   # RSET and the second transaction on the same connection


@needs_sink
def test_smtp_sink_421_after_data_defers(sink) -> None:
    server = sink("-Q", "DATA")
    outcome = deliver(server.port, [(delivery("b@example.net"), MESSAGE)])
    result, = outcome.results[0].results
    assert result.temporary
    assert outcome.ended is not None


# --- a strict stdlib server: no PIPELINING, optional CHUNKING ----------------------------

class StrictServer:
    """One-connection-at-a-time SMTP server that refuses pipelining it did not offer."""

    def __init__(self, chunking: bool):
        self.chunking = chunking
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.violations: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buffer = bytearray()

        def line() -> bytes | None:
            while b"\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return None
                buffer.extend(data)
            end = buffer.index(b"\r\n")
            text = bytes(buffer[:end])
            del buffer[:end + 2]
            return text

        def exactly(size: int) -> bytes:
            while len(buffer) < size:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError
                buffer.extend(data)
            data = bytes(buffer[:size])
            del buffer[:size]
            return data

        conn.sendall(b"220 strict.test ESMTP\r\n")
        content = bytearray()
        while (command := line()) is not None:
            verb = command.split(b" ")[0].upper()
            if buffer and verb != b"BDAT":  # more already here: the client did not wait for us
                self.violations.append(command.decode())
                conn.sendall(b"554 5.5.0 pipelining not offered\r\n")
                return
            if verb == b"EHLO":
                conn.sendall(b"250-strict.test\r\n250-8BITMIME\r\n" +
                             (b"250-CHUNKING\r\n" if self.chunking else b"") + b"250 SIZE 100000\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET"):
                conn.sendall(b"250 2.0.0 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go\r\n")
                while (data_line := line()) != b".":
                    if data_line is None:
                        return
                    content += (data_line[1:] if data_line.startswith(b".") else data_line) + b"\r\n"
                self.messages.append(bytes(content))
                content.clear()
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == b"BDAT" and self.chunking:
                parts = command.split(b" ")
                content += exactly(int(parts[1]))
                if buffer:
                    self.violations.append("data after a chunk")
                    return
                if len(parts) > 2 and parts[2].upper() == b"LAST":
                    self.messages.append(bytes(content))
                    content.clear()
                conn.sendall(b"250 2.0.0 chunk ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"500 5.5.1 what\r\n")


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_strict_server_without_pipelining(chunking: bool) -> None:
    server = StrictServer(chunking)
    try:
        jobs = [(delivery("b@example.net", "c@example.net", "d@example.net"), MESSAGE),
                (delivery("e@example.net", content=EIGHT_BIT, eight_bit=True), EIGHT_BIT)]
        outcome = deliver(server.port, jobs, chunk_size=16)
    finally:
        server.close()
    assert server.violations == []
    assert codes(outcome) == [[250, 250, 250], [250]]
    assert server.messages == [MESSAGE, EIGHT_BIT]


def test_the_strict_server_does_catch_a_pipelining_client() -> None:
    # The check above means something only if the server notices pipelining.
    server = StrictServer(chunking=False)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert sock.recv(1024).startswith(b"220")
            sock.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\n")
            reply = b""
            while not reply.endswith(b"\r\n") or b"554" not in reply:
                data = sock.recv(1024)
                if not data:
                    break
                reply += data
    finally:
        server.close()
    assert server.violations == ["EHLO x"]
