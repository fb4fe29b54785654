"""Real SMTP clients submit to smtps; what is queued is exactly what they sent.

The peers are independent implementations: swaks (Perl), Python's smtplib and Postfix's
smtp-source. Each test runs real ``meta1 qmgr`` and ``meta1 smtps`` processes
(:class:`mta.MTA`), lets the peer submit, and then compares the queue — ``mailq`` for
the envelope, the content file for the message — with what the peer says it sent. Our
Received header is the only difference allowed (``body_of`` strips it).

The peers are Debian packages installed by ``tools/peers``. A missing peer fails the
test, except in the i386 lane, whose root has no peers (``META1_LANE=i386``): there the
test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mta import ACCEPTED_ID, MTA, SMTPClient, accepted_id, body_of

PEER_TIMEOUT = 60


def need(binary: str) -> str:
    """The path of a peer program; skip in the i386 lane, fail anywhere else."""
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is not None:
        return path
    if os.environ.get("META1_LANE") == "i386":
        pytest.skip(f"{binary} is not installed in the i386 root (that lane has no peers)")
    pytest.fail(f"{binary} not found: install the interop peers with `sh tools/peers` (as root)")


def run_peer(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=PEER_TIMEOUT, check=False)


def accepted_ids(transcript: str) -> list[str]:
    return ACCEPTED_ID.findall(transcript)


# -- swaks ---------------------------------------------------------------------------------

# A complete message with CRLF line ends: header, then lines that need dot-stuffing (a
# lone ".", "..", ".hidden", a "." inside what looks like an end of data), UTF-8 text
# and octets that are not UTF-8. No "%" (swaks tokens) and no backslash-n (swaks turns
# the two characters into a line break).
SWAKS_MESSAGE = (
    b"From: Alice <a@example.org>\r\n"
    b"To: Bob <b@example.net>\r\n"
    b"Subject: interop with swaks\r\n"
    b"Message-ID: <swaks-1@example.org>\r\n"
    b"\r\n"
    b".\r\n"
    b"..\r\n"
    b".hidden\r\n"
    b"a line\r\n"
    b".\r\n"
    b"more after a lone dot\r\n"
    b"8-bit: \xc3\xa9t\xc3\xa9 \xe2\x82\xac and raw \xff\xfe octets\r\n"
    b". leading dot and space\r\n"
    b"last line\r\n")


def swaks(mta: MTA, data_file: Path, *options: str) -> subprocess.CompletedProcess:
    """swaks sending ``data_file`` as the whole DATA section.

    With ``--data @file`` swaks adds no header of its own: it only removes a trailing
    "<CRLF>.<CRLF>" from the file, dot-stuffs, and appends its own terminator (swaks'
    --data and --no-data-fixup documentation, and its source). The file therefore ends
    with ".\\r\\n" so that the message swaks sends is exactly SWAKS_MESSAGE.
    """
    return run_peer(need("swaks"), "--server", f"127.0.0.1:{mta.port}", "--timeout", "20",
                    "--ehlo", "swaks.client.test", "--from", "a@example.org",
                    "--data", f"@{data_file}", *options)


def client_lines(transcript: str) -> list[str]:
    """The transcript's commands (" -> ") and replies ("<- ") in order, first words only."""
    return [line.split()[1] if line.startswith(" -> ") else "reply:" + line.split()[1]
            for line in transcript.splitlines()
            if line.startswith((" -> ", "<-  ")) and len(line.split()) > 1]


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "lockstep"])
def test_swaks_message_is_queued_byte_for_byte(tmp_path, pipeline):
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(SWAKS_MESSAGE + b".\r\n")
    with MTA(tmp_path) as mta:
        result = swaks(mta, data_file, "--to", "b@example.net,c@example.net",
                       *(["--pipeline"] if pipeline else []))
        transcript = result.stdout.decode("utf-8", "replace")
        assert result.returncode == 0, transcript + result.stderr.decode(errors="replace")
        ta_id, = accepted_ids(transcript)
        queued = mta.mailq()
        content = mta.content(ta_id)

    assert "250-PIPELINING" in transcript
    flow = client_lines(transcript)
    envelope = flow[flow.index("MAIL"):flow.index("MAIL") + 8]
    if pipeline:
        # RFC 2920: the whole group MAIL, RCPT, RCPT, DATA goes out before any reply.
        assert envelope == ["MAIL", "RCPT", "RCPT", "DATA",
                            "reply:250", "reply:250", "reply:250", "reply:354"]
    else:
        assert envelope == ["MAIL", "reply:250", "RCPT", "reply:250", "RCPT", "reply:250",
                            "DATA", "reply:354"]
    (message,) = queued
    assert message["id"] == ta_id
    assert message["sender"] == "a@example.org"
    assert [r["address"] for r in message["recipients"]] == ["b@example.net", "c@example.net"]
    assert [r["id"] for r in message["recipients"]] == [f"{ta_id}-0000", f"{ta_id}-0001"]
    assert body_of(content) == SWAKS_MESSAGE
    assert content.startswith(b"Received: from swaks.client.test ([127.0.0.1])\r\n")
    assert message["size"] == len(content)


def test_swaks_stuffs_what_it_sends(tmp_path):
    """The dots really went over the wire stuffed: swaks' raw dump shows ".." where the
    message has "." — so the equality above is our unstuffing, not a lucky no-op."""
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(SWAKS_MESSAGE + b".\r\n")
    with MTA(tmp_path) as mta:
        result = swaks(mta, data_file, "--to", "b@example.net", "--pipeline")
        transcript = result.stdout.decode("utf-8", "replace")
        assert result.returncode == 0, transcript
        ta_id, = accepted_ids(transcript)
        content = mta.content(ta_id)
    sent_lines = [line[4:] for line in transcript.splitlines() if line.startswith(" -> ")]
    body_start = sent_lines.index("")   # the empty line after the header
    assert sent_lines[body_start + 1:body_start + 4] == ["..", "...", "..hidden"]
    assert sent_lines[-2:] == [".", "QUIT"]
    assert body_of(content).split(b"\r\n\r\n", 1)[1].startswith(b".\r\n..\r\n.hidden\r\n")


# -- smtplib -------------------------------------------------------------------------------


class RecordingSMTP(smtplib.SMTP):
    """smtplib as is, remembering each MAIL's options and each DATA's message and reply."""

    def __init__(self, *args, **kwargs):
        self.mail_options: list[tuple[str, ...]] = []
        self.messages: list[bytes] = []
        self.data_replies: list[tuple[int, bytes]] = []
        super().__init__(*args, **kwargs)

    def mail(self, sender, options=()):
        self.mail_options.append(tuple(options))
        return super().mail(sender, options)

    def data(self, msg):
        self.messages.append(msg)
        reply = super().data(msg)
        self.data_replies.append(reply)
        return reply


def data_reply_id(reply: tuple[int, bytes]) -> str:
    code, text = reply
    assert code == 250, reply
    return accepted_id(text.decode("ascii"))


def test_smtplib_sendmail_utf8_8bit_several_recipients(tmp_path):
    sender = "jörg@example.org"
    recipients = ["b@example.net", "пользователь@example.net", "c@example.net"]
    message = ("From: Jörg <jörg@example.org>\r\n"
               "To: b@example.net\r\n"
               "Subject: SMTPUTF8 and 8BITMIME\r\n"
               "\r\n"
               "Grüße aus Köln — €\r\n"
               ".\r\n"
               "..two dots\r\n"
               "last\r\n").encode("utf-8")
    with MTA(tmp_path) as mta:
        with RecordingSMTP("127.0.0.1", mta.port, local_hostname="smtplib.test",
                           timeout=20) as smtp:
            refused = smtp.sendmail(sender, recipients, message,
                                    mail_options=["SMTPUTF8", "BODY=8BITMIME"])
            assert smtp.has_extn("smtputf8") and smtp.has_extn("8bitmime")
        assert refused == {}
        ta_id = data_reply_id(smtp.data_replies[0])
        (queued,) = mta.mailq()
        content = mta.content(ta_id)

    options = smtp.mail_options[0]
    assert f"size={len(message)}" in options, options   # smtplib declares SIZE itself
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(options)
    assert queued["id"] == ta_id
    assert queued["sender"] == sender
    assert [r["address"] for r in queued["recipients"]] == recipients
    assert [r["id"] for r in queued["recipients"]] == [f"{ta_id}-{i:04X}" for i in range(3)]
    assert body_of(content) == message
    # D-SMTPS-9: an SMTPUTF8 transaction is received "with UTF8SMTP"; three recipients: no "for".
    header = content[:len(content) - len(message)]
    assert b" with UTF8SMTP id " + ta_id.encode() in header
    assert b"for <" not in header


def test_smtplib_send_message(tmp_path):
    plain = EmailMessage()
    plain["From"] = "Alice <a@example.org>"
    plain["To"] = "Bob <b@example.net>, Carol <c@example.net>"
    plain["Subject"] = "Grüße via send_message"
    plain.set_content("Hallo,\n.\n..zwei Punkte\nÄpfel und Birnen\n")

    international = EmailMessage()
    international["From"] = "Jörg <jörg@example.org>"
    international["To"] = "Zoë <zoë@example.net>"
    international["Subject"] = "SMTPUTF8 chosen by smtplib"
    international.set_content("ünïcödé\n")

    with MTA(tmp_path) as mta:
        with RecordingSMTP("127.0.0.1", mta.port, timeout=20) as smtp:
            assert smtp.send_message(plain) == {}
            assert smtp.send_message(international) == {}
        ids = [data_reply_id(reply) for reply in smtp.data_replies]
        queued = mta.mailq()
        contents = [mta.content(ta_id) for ta_id in ids]

    assert [q["id"] for q in queued] == ids
    assert queued[0]["sender"] == "a@example.org"
    assert [r["address"] for r in queued[0]["recipients"]] == ["b@example.net", "c@example.net"]
    assert queued[1]["sender"] == "jörg@example.org"
    assert [r["address"] for r in queued[1]["recipients"]] == ["zoë@example.net"]
    # smtplib declares nothing for an 8-bit body with ASCII addresses (meta1 takes the
    # octets as they come, T12), and SMTPUTF8 with BODY=8BITMIME for non-ASCII addresses.
    assert "SMTPUTF8" not in smtp.mail_options[0] and not smtp.messages[0].isascii()
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(smtp.mail_options[1])
    for sent, content in zip(smtp.messages, contents):
        assert sent.endswith(b"\r\n")
        assert body_of(content) == sent
    assert b"\r\n.\r\n..zwei Punkte\r\n" in smtp.messages[0]


# -- Postfix smtp-source -----------------------------------------------------------------------


STALL_TIMEOUT = 20    # a run takes well under a second here


def smtp_source(mta: MTA, *options: str) -> subprocess.CompletedProcess:
    """Run smtp-source against smtps; a run that stalls fails with a diagnosis."""
    argv = [need("smtp-source"), *options, "-f", "a@example.org", "-t", "b@example.net",
            f"127.0.0.1:{mta.port}"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=STALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            queued = len(mta.mailq())
            woken = wake_smtps(mta, proc)
            proc.kill()
            proc.communicate()
            pytest.fail(f"smtp-source stalled for {STALL_TIMEOUT} s with {queued} messages "
                        "queued; " + (
                            "it finished once unrelated connections made smtps' event loop "
                            "run: a lost wake-up (worker results queued with "
                            "call_soon_threadsafe while the loop sleeps in select), as fixed "
                            "in ca58c44 (EventLoop._on_wakeup)" if woken
                            else "unrelated connections did not help"))
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def wake_smtps(mta: MTA, proc: subprocess.Popen, seconds: float = 10.0) -> bool:
    """Connect to smtps again and again (each connection is I/O that runs its loop) until
    ``proc`` ends; True if it did."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with SMTPClient(mta.port) as poke:
                poke.reply()
        except OSError:
            pass
    return proc.poll() is not None


def test_smtp_source_100_messages_from_10_sessions(tmp_path):
    with MTA(tmp_path) as mta:
        result = smtp_source(mta, "-s", "10", "-m", "100", "-l", "5120")
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        queued = mta.mailq()
        sizes = {q["id"]: len(mta.content(q["id"])) for q in queued}
    assert len(queued) == 100
    assert len({q["id"] for q in queued}) == 100
    for message in queued:
        assert message["size"] > 5120          # -l counts the payload, headers come on top
        assert message["size"] == sizes[message["id"]]
        assert message["sender"] == "a@example.org"
        assert [r["address"] for r in message["recipients"]] == ["b@example.net"]


def test_smtp_source_five_recipients_per_message(tmp_path):
    with MTA(tmp_path) as mta:
        result = smtp_source(mta, "-s", "10", "-m", "20", "-r", "5")
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        queued = mta.mailq()
    assert len(queued) == 20
    for message in queued:
        addresses = [r["address"] for r in message["recipients"]]
        # smtp-source numbers the recipients it generates from -t: "5b@…", …, "b@…".
        assert len(set(addresses)) == 5
        assert all(re.fullmatch(r"[0-9]*b@example\.net", a) for a in addresses), addresses
        assert [r["id"] for r in message["recipients"]] == [
            f"{message['id']}-{i:04X}" for i in range(5)]
        assert message["sender"] == "a@example.org"
