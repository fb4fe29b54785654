"""lmtpd as a process (``python -m meta1 lmtpd -f CONF``) on its UNIX socket, and the
whole local path: smtplib → smtps → qmgr → smtpc → LMTP → lmtpd → Maildir.

Clients are Python's ``smtplib.LMTP`` and the raw :class:`mta.SMTPClient`. Note that
``smtplib.LMTP.sendmail`` reads only the first of the per-recipient replies after the
data (RFC 2033 §4.2); the tests call ``data()`` and then ``getreply()`` once per further
recipient instead.
"""

from __future__ import annotations

import os
import signal
import smtplib
import stat

from conftest import run_meta1
from mta import MTA, SMTPClient, body_of, wait_for

MESSAGE = (b"From: sender@example.test\r\nTo: user@mx.test\r\nSubject: local\r\n\r\n"
           b"body\r\n.dot\r\n\xc3\xa9t\xc3\xa9\r\n")


def lmtpd(tmp_path, section: str = "lmtpd { }\n", **options) -> MTA:
    mta = MTA(tmp_path, extra_global=section, **options)
    mta.spawn("lmtpd")
    return mta


def new_files(mta: MTA, mailbox: str) -> list:
    directory = mta.queue / "mail" / mailbox / "new"
    return sorted(directory.iterdir()) if directory.exists() else []


def test_smtplib_lmtp_delivers_per_recipient_then_sigterm_exits_0(tmp_path):
    mta = lmtpd(tmp_path)
    try:
        socket_path = mta.queue / "lmtpd" / "lmtpsock"
        assert f"ready: listening on {socket_path}" in mta.log("lmtpd")
        client = smtplib.LMTP(str(socket_path), timeout=30)
        code, features = client.ehlo("client.test")             # LMTP's ehlo() says LHLO
        assert code == 250 and b"PIPELINING" in features and b"ENHANCEDSTATUSCODES" in features
        assert client.helo("client.test")[0] == 500               # RFC 2033 §4.1
        assert client.mail("sender@example.test")[0] == 250
        assert client.rcpt("Alice@mx.test") == (250, b"2.1.5 Recipient <Alice@mx.test> OK")
        assert client.rcpt("no/such@mx.test") == (550, b"5.1.1 <no/such@mx.test>: no such mailbox")
        assert client.rcpt("bob+lists@mx.test")[0] == 250
        assert client.data(MESSAGE) == (250, b"2.0.0 <Alice@mx.test> delivered")
        assert client.getreply() == (250, b"2.0.0 <bob+lists@mx.test> delivered")
        assert client.noop()[0] == 250
        client.quit()
        for mailbox, address in (("alice", b"Alice@mx.test"), ("bob", b"bob+lists@mx.test")):
            [path] = new_files(mta, mailbox)
            assert path.read_bytes() == (b"Return-Path: <sender@example.test>\nDelivered-To: "
                                         + address + b"\n" + MESSAGE.replace(b"\r\n", b"\n"))
            assert os.listdir(path.parent.parent / "tmp") == []
            # Log lines are written at the end of a loop iteration: wait, do not sample.
            mta.wait_log("lmtpd", f"to=<{address.decode()}> mailbox={mailbox} delivered: {path}")
        assert stat.S_IMODE(os.stat(mta.queue / "mail").st_mode) == 0o700
        assert mta.kill("lmtpd", signal.SIGTERM) == 0
        assert not socket_path.exists()
        assert "stopped" in mta.log("lmtpd")
    finally:
        mta.stop()


def test_sigterm_lets_a_message_in_data_finish(tmp_path):
    mta = lmtpd(tmp_path)
    try:
        with SMTPClient(mta.queue / "lmtpd" / "lmtpsock") as client:
            assert client.reply()[0] == 220
            client.send(b"LHLO c\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@mx.test>\r\n"
                        b"RCPT TO:<b@mx.test>\r\nDATA\r\n")
            assert [client.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 354]
            client.send(b"first part\r\n")
            mta.procs["lmtpd"].send_signal(signal.SIGTERM)
            mta.wait_log("lmtpd", "shutting down: 1 sessions open")
            assert mta.running("lmtpd")
            client.send(b"second part\r\n.\r\n")
            assert client.reply() == (250, "2.0.0 <a@mx.test> delivered")
            assert client.reply() == (250, "2.0.0 <b@mx.test> delivered")
            assert client.reply() == (421, "4.3.2 mx.test shutting down")
        assert mta.procs["lmtpd"].wait(timeout=30) == 0
        for mailbox in ("a", "b"):
            [path] = new_files(mta, mailbox)
            assert path.read_bytes().endswith(b"\nfirst part\nsecond part\n")
    finally:
        mta.stop()


def test_a_mailbox_that_cannot_be_written_gets_451_the_others_250(tmp_path):
    mta = lmtpd(tmp_path)
    try:
        (mta.queue / "mail").mkdir(mode=0o700)
        (mta.queue / "mail" / "broken").write_bytes(b"a file where a Maildir must be")
        client = smtplib.LMTP(str(mta.queue / "lmtpd" / "lmtpsock"), timeout=30)
        client.ehlo("client.test")
        client.mail("sender@example.test")
        for recipient in ("ok@mx.test", "broken@mx.test", "fine@mx.test"):
            assert client.rcpt(recipient)[0] == 250
        assert client.data(MESSAGE) == (250, b"2.0.0 <ok@mx.test> delivered")
        assert client.getreply() == (451, b"4.3.0 <broken@mx.test> mailbox write error; "
                                          b"try again later")
        assert client.getreply() == (250, b"2.0.0 <fine@mx.test> delivered")
        client.quit()
        assert len(new_files(mta, "ok")) == 1 and len(new_files(mta, "fine")) == 1
        mta.wait_log("lmtpd", "to=<broken@mx.test> mailbox=broken not delivered:")
    finally:
        mta.stop()


def test_without_an_lmtpd_section_it_refuses_to_start_with_78(tmp_path):
    config = tmp_path / "meta1.conf"
    config.write_text(f'queue_directory = "{tmp_path / "queue"}";\n')
    result = run_meta1("lmtpd", "-f", str(config))
    assert result.returncode == 78
    assert f"meta1 lmtpd: no lmtpd section in {config}" in result.stderr


def test_a_second_lmtpd_on_the_same_socket_exits_75(tmp_path):
    mta = lmtpd(tmp_path)
    try:
        result = run_meta1("lmtpd", "-f", str(mta.config))
        assert result.returncode == 75 and "a process listens on it" in result.stderr
        assert mta.running("lmtpd")
    finally:
        mta.stop()


def test_local_mail_goes_through_the_queue_into_the_maildir(tmp_path):
    """smtpc { LMTP_socket } pointed at lmtpd's socket: mail for the host's own domain
    (mx.test) ends in <queue>/mail/<user>/new/, byte for byte what the client sent after
    the Return-Path, Delivered-To and Received headers (with LF line ends: turning them
    back into CRLF gives the original), and the queue empties."""
    mta = MTA(tmp_path, extra_global="smtpc { LMTP_socket = lmtpd/lmtpsock; }\nlmtpd { }\n")
    with mta:
        mta.spawn("lmtpd")
        mta.spawn("smtpc")
        mta.wait_log("qmgr", "smtpc connected")
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as client:
            client.sendmail("sender@example.test", ["user@mx.test", "Other+tag@MX.test"], MESSAGE)
        wait_for(lambda: new_files(mta, "user") and new_files(mta, "other"),
                 what="the message in both Maildirs")
        for mailbox, address in (("user", b"user@mx.test"), ("other", b"Other+tag@MX.test")):
            [path] = new_files(mta, mailbox)
            data = path.read_bytes()
            prefix = b"Return-Path: <sender@example.test>\nDelivered-To: " + address + b"\n"
            assert data.startswith(prefix) and b"\r" not in data
            assert body_of(data[len(prefix):].replace(b"\n", b"\r\n")) == MESSAGE
        wait_for(lambda: not mta.content_files(), what="the message to leave the queue")
        assert mta.mailq() == []
        assert mta.log("qmgr").count("delivered: 250") == 2
