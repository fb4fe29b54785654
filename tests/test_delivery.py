"""The whole path: a client → smtps → qmgr → smar (DNS on loopback) → smtpc → Postfix's
smtp-sink; bounces as DSNs that are delivered in turn; deferrals into DEFEDB."""

from __future__ import annotations

import smtplib
import sqlite3

import pytest

from dnsserver import DnsServer
from mta import MTA, body_of, wait_for
from test_interop import SWAKS_MESSAGE, swaks
from test_smtpc_interop import _wait_dumps, needs_sink, sink  # noqa: F401 (fixture)

ZONES = {
    "example.test": {"MX": ["10 mx.example.test"]},
    "mx.example.test": {"A": ["127.0.0.1"]},
}
MESSAGE = b"From: sender@example.test\r\nTo: rcpt@example.test\r\nSubject: relay\r\n\r\nbody\r\n.dot\r\n"


@pytest.fixture
def relay(tmp_path, sink):  # noqa: F811
    def start(*sink_options: str, qmgr_options: str = "") -> tuple[MTA, object]:
        server = sink(*sink_options)
        dns_server = DnsServer(ZONES).__enter__()
        started.append(dns_server)
        host, port = dns_server.address
        mta = MTA(tmp_path, extra_global=(f"smar {{ nameserver = {{ {host}:{port} }}; DNS_timeout = 2; }}\n"
                                          f"smtpc {{ remote_port = {server.port}; IO_timeout = 10s; }}\n"
                                          f"qmgr {{ min_queue_delay = 1h; {qmgr_options} }}\n"))
        started.append(mta)
        mta.start()
        mta.spawn("smar")
        mta.spawn("smtpc")
        mta.wait_log("qmgr", "smtpc connected")
        return mta, server

    started: list = []
    yield start
    for thing in reversed(started):
        thing.__exit__(None, None, None)


def send(mta: MTA, sender: str, recipients: list[str], message: bytes = MESSAGE) -> None:
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as client:
        client.sendmail(sender, recipients, message)


@needs_sink
def test_relayed_byte_identical_then_removed_from_the_queue(relay) -> None:
    mta, server = relay()
    send(mta, "sender@example.test", ["rcpt@example.test", "other@EXAMPLE.test"])
    [(fields, content)] = _wait_dumps(server, 1)
    assert content.startswith(b"Received: from ") and content.endswith(MESSAGE)
    assert fields["X-Rcpt-Args"] == ["<rcpt@example.test>", "<other@EXAMPLE.test>"]
    wait_for(lambda: not mta.content_files(), what="the content file to be removed")
    assert mta.mailq() == []
    assert "delivered: 250" in mta.log("qmgr")


@needs_sink
def test_swaks_pipelined_to_the_sink_byte_identical(relay, tmp_path) -> None:
    """The issue's whole path with swaks as the client (PIPELINING): what reaches the sink
    is what swaks sent (dot-stuffed lines, 8-bit octets), after our one Received header."""
    mta, server = relay()
    data_file = tmp_path / "swaks.eml"
    data_file.write_bytes(SWAKS_MESSAGE + b".\r\n")
    result = swaks(mta, data_file, "--to", "rcpt@example.test", "--pipeline")
    assert result.returncode == 0, result.stdout.decode(errors="replace")
    [(fields, content)] = _wait_dumps(server, 1)
    assert body_of(content) == SWAKS_MESSAGE
    assert content.startswith(b"Received: from swaks.client.test ([127.0.0.1])")
    assert fields["X-Rcpt-Args"] == ["<rcpt@example.test>"]
    wait_for(lambda: not mta.content_files(), what="the content file to be removed")


@needs_sink
def test_unknown_domain_bounces_with_a_dsn_that_is_delivered(relay) -> None:
    mta, server = relay()
    send(mta, "sender@example.test", ["nobody@gone.test"])
    [(fields, content)] = _wait_dumps(server, 1)
    assert fields["X-Mail-Args"] == ["<>"] or fields["X-Mail-Args"][0].startswith("<> ")
    assert fields["X-Rcpt-Args"] == ["<sender@example.test>"]
    assert b"multipart/report" in content and b"report-type=delivery-status" in content
    assert b"Action: failed" in content and b"Status: 5.1.2" in content
    assert b"Final-Recipient: rfc822; nobody@gone.test" in content
    assert MESSAGE in content                               # the message comes back whole
    wait_for(lambda: not mta.content_files(), what="original and DSN to leave the queue")


@needs_sink
def test_temporary_failure_goes_to_defedb_and_survives_a_restart(relay) -> None:
    mta, server = relay("-r", "RCPT")
    send(mta, "sender@example.test", ["later@example.test"])
    mta.wait_log("qmgr", "deferred (attempt 1)")
    database = mta.queue / "defedb" / "defedb.sqlite"
    wait_for(lambda: _deferred_rows(database) == [("later@example.test", 1)], what="the DEFEDB record")
    [entry] = mta.mailq()
    mta.kill("qmgr")
    mta.spawn("qmgr")
    assert [e["id"] for e in mta.mailq()] == [entry["id"]]
    assert "recovered 1 transactions" in mta.log("qmgr")


def _deferred_rows(database) -> list[tuple[str, int]]:
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("SELECT address, attempts FROM recipients").fetchall()


@needs_sink
def test_local_domain_goes_to_the_lmtp_socket_b63(tmp_path) -> None:
    """smtpc { LMTP_socket = lmtpsock; }: mail for the host's own domain (mx.test) is
    delivered over LMTP to <queue>/lmtpsock; each recipient gets its own reply (B63)."""
    import os
    import pwd
    import subprocess
    from test_smtpc_interop import SINK, Sink
    mta = MTA(tmp_path, extra_global='smtpc { LMTP_socket = lmtpsock; }\n')
    socket_path = mta.queue / "lmtpsock"
    import shutil
    import tempfile
    from pathlib import Path
    dump = Path(tempfile.mkdtemp(prefix="lmtp-sink-"))   # pytest's tmp_path is root-only
    os.chmod(dump, 0o755)
    mta.queue.mkdir(parents=True, exist_ok=True)
    args = [SINK]
    if os.geteuid() == 0:
        os.chown(dump, pwd.getpwnam("postfix").pw_uid, -1)
        args += ["-u", "postfix"]
    sink_proc = subprocess.Popen(args + ["-L", "-d", f"{dump}/%H%M%S.", f"unix:{socket_path}", "10"])
    try:
        wait_for(lambda: socket_path.exists(), what="the LMTP socket")
        os.chmod(socket_path, 0o666)
        with mta:
            mta.spawn("smtpc")
            mta.wait_log("qmgr", "smtpc connected")
            send(mta, "sender@example.test", ["alice@mx.test", "bob@MX.test"])
            [(fields, content)] = _wait_dumps(Sink(0, dump), 1)
            assert content.endswith(MESSAGE)
            assert fields["X-Rcpt-Args"] == ["<alice@mx.test>", "<bob@MX.test>"]
            wait_for(lambda: not mta.content_files(), what="the message to leave the queue")
            assert mta.log("qmgr").count("delivered: 250") == 2
    finally:
        sink_proc.kill()
        sink_proc.wait()
        shutil.rmtree(dump, ignore_errors=True)


@needs_sink
def test_incoming_log_files_of_complete_transactions_are_removed(relay, tmp_path) -> None:
    """qmgr { IBDB_file_size = 4K; }: after every message is delivered only the current
    log file (and perhaps one being sealed) remains, and a restart recovers nothing."""
    mta, server = relay(qmgr_options="IBDB_file_size = 4K;")
    for n in range(30):
        send(mta, "sender@example.test", [f"r{n}@example.test"])
    _wait_dumps(server, 30)
    ibdb = mta.queue / "ibdb"
    wait_for(lambda: not mta.content_files(), what="every message to leave the queue")
    mta.wait_log("qmgr", "removing incoming-log files")
    wait_for(lambda: len(list(ibdb.glob("*.ibdb"))) <= 2, what="old log files to be removed")
    mta.kill("qmgr")
    mta.spawn("qmgr")
    assert "recovered 0 transactions" in mta.log("qmgr")
