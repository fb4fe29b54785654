"""Real receiving peers at the end of the whole path: client → smtps → qmgr → smar (DNS on
loopback) → smtpc → peer.

* aiosmtpd (Python's asyncio SMTP server): offers neither PIPELINING nor DSN, so smtpc
  must send one command at a time and drop the DSN parameters; the relayed content must
  be byte-identical (dot lines, 8-bit body, long lines).
* A private Postfix instance (``benchmarks/relay_rate.py``'s ``PostfixRelay``): its
  smtpd takes the message from smtpc and relays it to an smtp-sink, where it must arrive
  unchanged. Needs root and Postfix; skipped otherwise.

Both peers listen on smtpc's ``remote_port`` on 127.0.0.1 (``delivery_support.World``).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import REPO
from delivery_support import WAIT, world  # noqa: F401 (fixture)
from mta import body_of, wait_for
from test_smtpc_interop import needs_sink

# Date and Message-ID present, so Postfix's cleanup adds no header of its own.
MESSAGE = (b"From: sender@home.test\r\nTo: rcpt@far.test\r\nSubject: peers\r\n"
           b"Date: Wed, 25 Nov 2026 05:00:00 +0000\r\nMessage-ID: <peers.1@home.test>\r\n\r\n"
           b"first line\r\n.leading dot\r\n..two dots\r\n.\r\n" + b"x" * 990 + b"\r\n"
           + "caf\u00e9 \u20ac\r\n".encode() + b"last line\r\n")
SENDER = "sender@home.test"


class Recorder:
    """aiosmtpd handler: keeps every envelope, and notes a command that arrived while
    the previous one was still unanswered (pipelining that was not offered)."""

    def __init__(self) -> None:
        self.envelopes: list = []
        self.pipelined: list[str] = []
        self.lock = threading.Lock()

    def _check(self, server, command: str) -> None:
        buffered = getattr(getattr(server, "_reader", None), "_buffer", b"")
        if buffered:
            self.pipelined.append(f"{command} with {bytes(buffered)[:40]!r} behind it")

    async def handle_MAIL(self, server, session, envelope, address, options):
        self._check(server, "MAIL")
        envelope.mail_from, envelope.mail_options = address, list(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self._check(server, "RCPT")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.envelopes.append(envelope)
        return "250 2.0.0 OK"


def test_aiosmtpd_without_pipelining_or_dsn_gets_the_content_byte_identical(world) -> None:  # noqa: F811
    controller_module = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is not installed")
    recorder = Recorder()
    controller = controller_module.Controller(recorder, hostname="127.0.0.1", port=world.port,
                                              server_hostname="aio.test")
    controller.start()
    try:
        world.zone("far.test", "127.0.0.1")
        world.start()
        world.send(SENDER, ["a@far.test", "b@far.test"], MESSAGE, mail_options=["BODY=8BITMIME", "RET=HDRS"],
                   rcpt_options=["NOTIFY=FAILURE"])
        wait_for(lambda: recorder.envelopes, timeout=WAIT, what="the message at aiosmtpd")
        world.wait_empty()
    finally:
        controller.stop()
    [envelope] = recorder.envelopes
    assert envelope.mail_from == SENDER and envelope.rcpt_tos == ["a@far.test", "b@far.test"]
    assert "BODY=8BITMIME" in envelope.mail_options
    assert not [o for o in envelope.mail_options if o.startswith("RET=")]   # no DSN offered: dropped
    assert envelope.rcpt_options == []                         # NOTIFY dropped likewise
    assert body_of(envelope.original_content) == MESSAGE
    assert recorder.pipelined == []
    assert "delivered: 250 2.0.0 OK" in world.qmgr_log()


@needs_sink
def test_postfix_smtpd_as_the_receiving_peer(world) -> None:  # noqa: F811
    if os.geteuid() != 0 or shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin") is None:
        pytest.skip("a private Postfix instance needs root and Postfix")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from relay_rate import PostfixRelay
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink_port = probe.getsockname()[1]
    final = world.sink(port=sink_port)
    # Postfix's daemons run as the postfix user: pytest's 0700 directories are closed to it.
    workdir = Path(tempfile.mkdtemp(prefix="meta1-postfix-"))
    os.chmod(workdir, 0o755)
    postfix = PostfixRelay(workdir, sink_port, None)
    postfix.port = world.port                                  # smtpc's remote_port
    try:
        postfix.start()
        world.zone("far.test", "127.0.0.1")
        world.start()
        world.send(SENDER, ["a@far.test", "b@far.test"], MESSAGE, mail_options=["BODY=8BITMIME"])
        [(fields, content)] = final.wait(1, timeout=WAIT)
        world.wait_empty()
    finally:
        postfix.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert sorted(args.split()[0] for args in fields["X-Rcpt-Args"]) == ["<a@far.test>", "<b@far.test>"]
    # Postfix adds its own Received header above ours; below them the message is unchanged.
    assert content.endswith(MESSAGE) and b"by mx.test (meta1)" in content
