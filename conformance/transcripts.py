"""Replay SMTP transcripts: client lines in (``NAME.in``), server replies out (``NAME.ref``).

A transcript is a conversation with smtps written down: the ``.in`` file holds what the
client sends, the ``.ref`` file exactly what the server answers. The runner replays the
``.in`` file and compares. It drives either the sans-I/O session directly (fast, no
sockets: ``run_session``) or a running server over TCP (``run_server``, or
``python3 -m conformance.transcripts HOST:PORT FILE.in…``), so the same files pin the
machine and the daemon.

``.in`` syntax, one item per line:

``TEXT``          sent followed by CRLF
``~TEXT``         sent as is, with C escapes (``\\r \\n \\t \\0 \\xHH \\\\``) and no CRLF
                  added: bare CR/LF, NUL, several commands in one segment (pipelining)
``@repeat N TEXT``  TEXT + CRLF, N times in one segment
``@long N TEXT``  TEXT padded with "x" to N octets, CRLF included (overlong lines)
``@eof``          the client closes its side
``@fail-commit``  the next commit fails (sans-I/O runner only; e.g. qmgr down → 451)
``# …``           a comment (the first lines say what the transcript is about)
``#! set NAME=VALUE``  a session setting for the sans-I/O runner (``max_rcpts=3``,
                  ``storage_ok=false``); a transcript with settings is not replayed
                  against a live server

Every ``.in`` item is one segment (one ``send``/``receive``). ``.ref`` holds the server's
bytes split at CRLF, with ids (``S`` + 18 hex digits) replaced by ``<ID>``, and a last
line ``[closed]`` when the server closed the connection.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

ID = re.compile(r"S[0-9A-F]{18}")
HERE = Path(__file__).resolve().parent
TRANSCRIPTS = HERE / "smtp"


@dataclass(frozen=True)
class Step:
    kind: str          # "send", "eof", "fail-commit"
    data: bytes = b""


def unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
            continue
        out += {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}[nxt]
        i += 2
    return bytes(out)


def read_in(path: Path) -> tuple[list[Step], dict[str, str]]:
    steps: list[Step] = []
    options: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#! set "):
            name, _, value = line[len("#! set "):].partition("=")
            options[name.strip()] = value.strip()
            continue
        if line.startswith("#") or line == "":
            continue
        if line.startswith("~"):
            steps.append(Step("send", unescape(line[1:])))
        elif line.startswith("@repeat "):
            _, count, text = line.split(" ", 2)
            steps.append(Step("send", (text.encode("utf-8") + b"\r\n") * int(count)))
        elif line.startswith("@long "):
            _, count, text = line.split(" ", 2)
            data = text.encode("utf-8")
            steps.append(Step("send", data + b"x" * (int(count) - len(data) - 2) + b"\r\n"))
        elif line == "@eof":
            steps.append(Step("eof"))
        elif line == "@fail-commit":
            steps.append(Step("fail-commit"))
        else:
            steps.append(Step("send", line.encode("utf-8") + b"\r\n"))
    return steps, options


def render(output: bytes, closed: bool) -> str:
    text = ID.sub("<ID>", output.decode("utf-8", "replace"))
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    if closed:
        lines.append("[closed]")
    return "".join(line + "\n" for line in lines)


def expected(path_in: Path) -> str:
    return path_in.with_suffix(".ref").read_text(encoding="utf-8")


# -- the sans-I/O runner -----------------------------------------------------------------


class FixedServices:
    """Deterministic ids and clock for transcripts."""

    def __init__(self, storage_ok: bool = True):
        self.counter = 0
        self._storage_ok = storage_ok

    def now_us(self) -> int:
        return 1_764_064_800 * 1_000_000      # 2025-11-25T10:00:00Z

    def new_id(self) -> str:
        from meta1.ids import format_id
        self.counter += 1
        return format_id(self.counter, 0)

    def storage_ok(self) -> bool:
        return self._storage_ok

    def policy(self, session, check):
        """Every check passes (policy transcripts come with smar's policy)."""
        from meta1.smtps.session import Outcome
        return Outcome.OK, None


def session_settings(options: dict[str, str]):
    """The transcripts' settings (host name mx.test, 8BITMIME on) with ``#! set`` applied."""
    import dataclasses
    from meta1.smtps.session import Settings
    settings = Settings(hostname="mx.test", eightbitmime=True)
    fields = {f.name: f.type for f in dataclasses.fields(Settings)}
    changes = {}
    for name, value in options.items():
        if name == "storage_ok":
            continue
        if name not in fields:
            raise ValueError(f"unknown transcript setting {name!r}")
        default = getattr(settings, name)
        changes[name] = (value == "true") if isinstance(default, bool) else type(default)(value)
    return dataclasses.replace(settings, **changes)


def run_session(steps: list[Step], options: dict[str, str] | None = None):
    """Replay against :class:`meta1.smtps.session.Session`; (rendered output, commits)."""
    from meta1.smtps.session import (Close, CommitContent, DiscardContent, OpenContent, Send,
                                     Session, WriteContent)
    options = options or {}
    services = FixedServices(storage_ok=options.get("storage_ok", "true") == "true")
    session = Session(session_settings(options), services, client_address="192.0.2.1",
                      client_port=5555)
    current = bytearray()
    output = bytearray()
    closed = False
    commits = []
    fail_next = False

    def apply(effects) -> None:
        nonlocal closed, fail_next
        for effect in effects:
            if isinstance(effect, Send):
                output.extend(effect.data)
            elif isinstance(effect, WriteContent):
                current.extend(effect.data)
            elif isinstance(effect, (OpenContent, DiscardContent)):
                current.clear()
            elif isinstance(effect, Close):
                closed = True
            elif isinstance(effect, CommitContent):
                commits.append((effect.transaction, bytes(current)))
                ok, fail_next = not fail_next, False
                apply(session.commit_result(ok, "" if ok else "qmgr not connected"))

    apply(session.start())
    for step in steps:
        if closed:
            break
        if step.kind == "send":
            apply(session.receive(step.data))
        elif step.kind == "eof":
            apply(session.eof())
        elif step.kind == "fail-commit":
            fail_next = True
    return render(bytes(output), closed), commits


# -- the TCP runner ------------------------------------------------------------------------


def run_server(steps: list[Step], host: str, port: int, timeout: float = 10.0) -> str:
    """Replay against a running server; the output is read until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        for step in steps:
            if step.kind == "send":
                sock.sendall(step.data)
            elif step.kind == "eof":
                sock.shutdown(socket.SHUT_WR)
            elif step.kind == "fail-commit":
                raise ValueError("@fail-commit works with the sans-I/O runner only")
        output = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            output.extend(chunk)
    return render(bytes(output), True)


def main(argv: list[str]) -> int:
    host, _, port = argv[0].rpartition(":")
    failures = 0
    for name in argv[1:]:
        path = Path(name)
        steps, options = read_in(path)
        if options:
            print(f"skip {path} (session settings)")
            continue
        got = run_server(steps, host, int(port))
        if got != expected(path):
            failures += 1
            print(f"FAIL {path}\n--- expected\n{expected(path)}--- got\n{got}")
        else:
            print(f"ok   {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
