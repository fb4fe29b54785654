"""Run meta1's daemons as real processes for a test: config, start, wait, kill, stop.

``MTA(tmp_path)`` writes a configuration (queue in the test's directory, smtps on a free
loopback port, host name ``mx.test``), starts ``meta1 qmgr`` and ``meta1 smtps`` as
subprocesses and waits until each says it is ready. Every process it starts is stopped
by pid when the test ends (``stop``), so nothing outlives a test.

Every run records its state-machine trace (``trace_file``, unless the test sets its own)
and ``stop`` checks it with :mod:`meta1.tools.tracecheck`: whatever a test does, each
transition of each daemon must be a row of its machine's table, each instance's records
must chain, and smtpc may deliver only what qmgr scheduled (issue 7, trace validation).

``SMTPClient`` is a raw client for tests that need byte control: it sends exactly the
bytes it is given and reads the server's replies one complete reply at a time, so a test
can pipeline, split or smuggle and still check every reply in order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

READY_TIMEOUT = 30.0
TRACE_FILE = "trace.ndjson"          # in the test's directory, beside the queue (a full queue
                                     # file system must not cut the trace)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = READY_TIMEOUT, interval: float = 0.01, what: str = ""):
    """Poll ``predicate`` until it is true (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


class MTA:
    def __init__(self, base: Path, *, extra_smtps: str = "", extra_global: str = "",
                 port: int | None = None, queue: Path | None = None, smtps_flags: str = "8bitmime"):
        self.base = Path(base)
        self.queue = queue or self.base / "queue"
        self.port = port or free_port()
        self.config = self.base / "meta1.conf"
        trace = "" if "trace_file" in extra_global else f'trace_file = "{self.base / TRACE_FILE}";'
        self.config.write_text(
            f'queue_directory = "{self.queue}";\n'
            f'hostname = mx.test;\n'
            f'{trace}\n{extra_global}\n'
            "smtps {\n"
            f"    flags = {{ {smtps_flags} }};\n"
            f"    listen_socket {{ type = inet; address = 127.0.0.1; port = {self.port}; }}\n"
            f"{extra_smtps}\n"
            "}\n")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.starts: dict[str, int] = {}

    # -- processes ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def spawn(self, daemon: str, wait: bool = True) -> subprocess.Popen:
        self.starts[daemon] = self.starts.get(daemon, 0) + 1
        log = self.base / f"{daemon}.{self.starts[daemon]}.log"
        self.logs[daemon] = log
        proc = subprocess.Popen([sys.executable, "-m", "meta1", daemon, "-f", str(self.config)],
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                env=self.env(), cwd=str(self.base))
        self.procs[daemon] = proc
        if wait:
            wait_for(lambda: self._ready(daemon, proc), what=f"{daemon} ready")
        return proc

    def _ready(self, daemon: str, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{daemon} exited with {proc.returncode}:\n{self.log(daemon)}")
        return "ready" in self.log(daemon)

    def log(self, daemon: str) -> str:
        path = self.logs.get(daemon)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.base.glob("*.log")))

    def wait_log(self, daemon: str, text: str, timeout: float = READY_TIMEOUT) -> None:
        """Until the current log of ``daemon`` contains ``text``."""
        wait_for(lambda: text in self.log(daemon), timeout=timeout, what=f"{text!r} in {daemon} log")

    def start(self) -> "MTA":
        self.spawn("qmgr")
        self.spawn("smtps")
        self.wait_linked()
        return self

    def wait_linked(self, qmgr_pid: int | None = None) -> None:
        """Until smtps is connected to qmgr (its log says so). With ``qmgr_pid``: connected
        to that qmgr process — after a restart of qmgr alone, smtps' log already holds the
        line for the previous one."""
        line = "connected to qmgr" if qmgr_pid is None else f"connected to qmgr (pid {qmgr_pid})"
        wait_for(lambda: line in self.log("smtps"), what=f"smtps linked to qmgr ({line!r})")

    def pid(self, daemon: str) -> int:
        return self.procs[daemon].pid

    def running(self, daemon: str) -> bool:
        proc = self.procs.get(daemon)
        return proc is not None and proc.poll() is None

    def kill(self, daemon: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs[daemon]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout=30)

    def stop(self) -> None:
        for daemon in ("smtps", "smtpc", "lmtpd", "qmgr", "smar"):
            proc = self.procs.get(daemon)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.check_trace()

    def check_trace(self) -> None:
        """The run's trace, checked against the tables (see the module docstring)."""
        from meta1.tools.tracecheck import check
        path = self.base / TRACE_FILE
        if not path.exists():
            return
        with open(path, encoding="utf-8", errors="surrogateescape") as lines:
            report = check(lines)
        assert not report.violations, f"the trace of this run breaks the tables:\n{report.text()}"

    # -- looking at the queue ------------------------------------------------------------------

    def meta1(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "meta1", *args], capture_output=True,
                              text=True, env=self.env(), timeout=60, check=False)

    def mailq(self) -> list[dict]:
        result = self.meta1("mailq", "-f", str(self.config), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def content(self, ta_id: str) -> bytes:
        from meta1.queue.cdb import read_content
        from meta1.queue.layout import QueueLayout
        return read_content(QueueLayout(self.queue).content_path(ta_id))

    def content_files(self) -> dict[str, Path]:
        """Every file in the content directories (cdb/<digit>/), by name."""
        from meta1.queue.layout import QueueLayout
        cdb = QueueLayout(self.queue).cdb
        return {path.name: path for path in sorted(cdb.glob("*/*"))}

    def quarantined(self) -> list[str]:
        """The names in the quarantine directory (damaged files and their .why notes)."""
        from meta1.queue.layout import QueueLayout
        directory = QueueLayout(self.queue).quarantine
        return sorted(os.listdir(directory)) if directory.exists() else []

    def __enter__(self) -> "MTA":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def body_of(content: bytes) -> bytes:
    """The message as the client sent it: the content without our Received header."""
    assert content.startswith(b"Received: ")
    end = content.index(b"\r\n", 0)
    while content[end + 2:end + 3] in (b"\t", b" "):
        end = content.index(b"\r\n", end + 2)
    return content[end + 2:]


ACCEPTED_ID = re.compile(r"\b(S[0-9A-F]{16}[0-9A-F]{2}) accepted")


def accepted_id(reply_text: str) -> str:
    """The transaction id in smtps' ``250 2.0.0 <id> accepted``."""
    match = ACCEPTED_ID.search(reply_text)
    assert match is not None, f"not an accepted reply: {reply_text!r}"
    return match.group(1)


class SMTPClient:
    """A raw SMTP client over TCP (or a UNIX socket, given its Path): bytes out exactly
    as given, replies in one at a time.

    ``reply()`` returns ``(code, text)`` for the next complete reply (``text`` holds its
    lines without the code, joined by newlines); nothing is read ahead of what the test
    asks for beyond the socket buffer, so replies to a pipelined group are checked in
    order. Socket operations time out after ``timeout`` seconds, which bounds every test.
    """

    def __init__(self, port: int | Path, host: str = "127.0.0.1", timeout: float = 10.0, source: str | None = None):
        if isinstance(port, Path):      # a UNIX socket (lmtpd)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(port))
        else:                           # ``source``: the client's own loopback address
            self.sock = socket.create_connection((host, port), timeout=timeout,
                                                 source_address=(source, 0) if source else None)
        self.buffer = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unparsed: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self._line().decode("ascii", "replace")
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), "\n".join(lines)

    def command(self, line: bytes | str) -> tuple[int, str]:
        """Send one command line (CRLF added) and read its reply."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SMTPClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
