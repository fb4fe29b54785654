"""The receive path through real processes and sockets (reliability T04, T07, T10, T14–T16).

Every test runs real ``meta1 qmgr`` and ``meta1 smtps`` processes (:class:`mta.MTA`)
and talks to smtps over TCP with :class:`mta.SMTPClient`, which sends exactly the bytes
it is given and reads replies one at a time — so dot-stuffing, pipelining and smuggled
text are under the test's control, and every reply is checked in order. What counts is
what ends up in the queue: ``mailq`` for envelopes, the content file for messages.

Covered here
    * T04 dot-stuffing round trip; T07 long lines (998 accepted, longer refused after
      the real end, configurable limit up to 70,000-octet lines kept byte-identical);
    * T10(b) an oversize undeclared body with smuggled commands: read through, 552 at
      the real end, nothing stored past the limit, nothing queued, session in step;
    * T14 pipelined groups after EHLO and after HELO (D-SMTPS-3: in order);
    * T15 the Received header; T16 HELO sanitising inside it (D-SMTPS-4, D-SMTPS-9);
    * identifiers (D-ID-1, D-ID-2) across transactions, sessions and an smtps restart,
      and in every log line about a transaction;
    * 1,000 idle sessions at once; qmgr killed and restarted (replay, smtps
      reconnecting); a second qmgr on the same queue (D-CLI-3).
"""

from __future__ import annotations

import email.utils
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mta import MTA, SMTPClient, accepted_id, body_of, wait_for

ID = re.compile(r"^S[0-9A-F]{16}[0-9A-F]{2}$")
HEADER = b"Subject: receive path\r\n\r\n"


# -- helpers ---------------------------------------------------------------------------------


def stuff(content: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency: a "." at the start of a line is doubled."""
    assert content == b"" or content.endswith(b"\r\n")
    return re.sub(rb"(?m)^\.", b"..", content)


def greet(port: int, helo: bytes = b"client.test", verb: bytes = b"EHLO") -> SMTPClient:
    client = SMTPClient(port)
    code, text = client.reply()
    assert code == 220, text
    code, text = client.command(verb + b" " + helo)
    assert code == 250, text
    return client


def envelope(client: SMTPClient, recipients=("b@example.net",), sender="a@example.org") -> None:
    assert client.command(f"MAIL FROM:<{sender}>")[0] == 250
    for rcpt in recipients:
        assert client.command(f"RCPT TO:<{rcpt}>")[0] == 250


def send_data(client: SMTPClient, content: bytes) -> tuple[int, str]:
    """DATA with ``content`` stuffed and terminated; the reply to the final dot."""
    code, text = client.command("DATA")
    assert code == 354, text
    client.send(stuff(content) + b".\r\n")
    return client.reply()


def submit(client: SMTPClient, content: bytes, recipients=("b@example.net",)) -> str:
    """One whole transaction; its id."""
    envelope(client, recipients)
    code, text = send_data(client, content)
    assert code == 250, text
    return accepted_id(text)


def queued_body(mta: MTA, ta_id: str) -> bytes:
    return body_of(mta.content(ta_id))


def received_header(content: bytes) -> bytes:
    """Our Received header (with its folds) as it sits at the front of the content."""
    return content[:len(content) - len(body_of(content))]


def unfold(header: bytes) -> str:
    return re.sub(r"\r\n[ \t]", " ", header.decode("ascii")).rstrip("\r\n")


def counter(ta_id: str) -> int:
    return int(ta_id[1:17], 16)


# -- T04 dot-stuffing ---------------------------------------------------------------------------

DOT_MESSAGES = [
    HEADER + b".\r\n",
    HEADER + b"..\r\n",
    HEADER + b".hidden\r\n",
    HEADER + b"a line\r\n.\r\nafter a line that was a lone dot\r\n",
    HEADER + b"...\r\n. \r\n.\t\r\n.\r\n.\r\n..\r\n",
    b".first line of the message is a dot line\r\n\r\nbody\r\n",
    HEADER + b"not a terminator: \r\n.x\r\n and .\r\n. end\r\n",
    b"",   # DATA followed directly by ".": an empty message
]


def test_dot_stuffing_round_trip(tmp_path):
    with MTA(tmp_path) as mta, greet(mta.port) as client:
        ids = [submit(client, content) for content in DOT_MESSAGES]
        # The same content again, its stuffed form sent one octet per segment.
        envelope(client)
        assert client.command("DATA")[0] == 354
        for octet in stuff(DOT_MESSAGES[4]) + b".\r\n":
            client.send(bytes([octet]))
        code, text = client.reply()
        assert code == 250, text
        ids.append(accepted_id(text))
        assert client.command("QUIT")[0] == 221
        bodies = [queued_body(mta, ta_id) for ta_id in ids]
    assert bodies == DOT_MESSAGES + [DOT_MESSAGES[4]]


# -- T07 long lines -------------------------------------------------------------------------------


def long_line(octets: int) -> bytes:
    # Printable and varied, so that a truncation or split would show.
    return (b"0123456789abcdefghijklmnopqrstuvwxyz" * (octets // 36 + 1))[:octets] + b"\r\n"


def test_998_octet_lines_are_kept(tmp_path):
    content = HEADER + long_line(998) + b"short\r\n" + long_line(998)
    with MTA(tmp_path) as mta, greet(mta.port) as client:
        ta_id = submit(client, content)
        assert queued_body(mta, ta_id) == content


@pytest.mark.parametrize("octets", [999, 1000])
def test_longer_lines_are_refused_after_the_real_end(tmp_path, octets):
    content = HEADER + b"before\r\n" + long_line(octets) + b"after\r\n"
    with MTA(tmp_path) as mta, greet(mta.port) as client:
        envelope(client)
        code, text = send_data(client, content)
        assert (code, text[:6]) == (550, "5.6.0 "), text
        # In step: had the refusal come before the final dot, the dot would have been
        # read as a command and this NOOP would get that command's reply instead.
        assert client.command("NOOP") == (250, "2.0.0 OK")
        assert mta.mailq() == []
        wait_for(lambda: mta.content_files() == {}, timeout=10, what="the refused content removed")


def test_configured_line_limit_keeps_very_long_lines(tmp_path):
    content = HEADER + long_line(5000) + b"x\r\n" + long_line(70_000) + b"end\r\n"
    with MTA(tmp_path, extra_smtps="max_data_line_length = 100000;") as mta, \
            greet(mta.port) as client:
        ta_id = submit(client, content)
        envelope(client)
        code, text = send_data(client, HEADER + long_line(100_001))
        assert code == 550, text
        assert queued_body(mta, ta_id) == content
        assert [q["id"] for q in mta.mailq()] == [ta_id]


# -- T10(b) oversize, undeclared, with smuggled commands ------------------------------------


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


OVERSIZE = 8 << 20


def test_oversize_body_is_read_through_and_refused(tmp_path):
    smuggled = b"\r\nRSET\r\nMAIL FROM:<x@y>\r\n"
    filler = long_line(900) * ((OVERSIZE // 2) // 902)
    content = HEADER + filler + smuggled[2:] + filler + b"last\r\n"
    assert len(content) > OVERSIZE - 4096
    with MTA(tmp_path, extra_smtps="max_message_size = 64K;") as mta, \
            greet(mta.port) as client:
        smtps = mta.pid("smtps")
        rss_before = vm_kib(smtps, "VmRSS")
        envelope(client)
        code, text = send_data(client, content)
        assert (code, text[:6]) == (552, "5.3.4 "), text
        peak_kib = vm_kib(smtps, "VmHWM")
        # The partial content file is gone (removed by smtps' opener thread after the reply).
        wait_for(lambda: mta.content_files() == {}, timeout=10, what="the partial file removed")
        # No tail command ran: a smuggled MAIL would make this one "503 nested MAIL".
        code, text = client.command("MAIL FROM:<a@example.org>")
        assert code == 250, text
        assert client.command("RCPT TO:<b@example.net>")[0] == 250
        code, text = send_data(client, HEADER + b"small\r\n")
        assert code == 250, text
        ta_id = accepted_id(text)
        queued = mta.mailq()
        log = mta.log("smtps")
    assert [q["id"] for q in queued] == [ta_id]
    assert "x@y" not in log
    # Streamed, not buffered: the process grew by far less than the 8 MiB it read
    # (generous bound: a quarter of it, for allocator and read-buffer noise).
    assert peak_kib - rss_before < (OVERSIZE >> 10) // 4, (rss_before, peak_kib)


# -- T14 pipelining ---------------------------------------------------------------------------------

GROUP = (b"MAIL FROM:<a@example.org>\r\n"
         b"RCPT TO:<r1@example.net>\r\nRCPT TO:<r2@example.net>\r\nRCPT TO:<r3@example.net>\r\n"
         b"DATA\r\n")


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_pipelined_group_in_one_segment(tmp_path, verb):
    with MTA(tmp_path) as mta, greet(mta.port, verb=verb) as client:
        client.send(GROUP)
        replies = [client.reply()[0] for _ in range(5)]
        client.send(HEADER + b"pipelined\r\n.\r\n")
        code, text = client.reply()
        assert code == 250, text
        ta_id = accepted_id(text)
        assert client.command("QUIT")[0] == 221   # no stray reply was left in between
        (queued,) = mta.mailq()
    assert replies == [250, 250, 250, 250, 354]
    assert queued["id"] == ta_id
    assert [r["address"] for r in queued["recipients"]] == [
        "r1@example.net", "r2@example.net", "r3@example.net"]


# -- T15 Received ------------------------------------------------------------------------------------

EXISTING_TRACE = (
    b"Received: from relay.example (relay.example [192.0.2.1])\r\n"
    b"\tby mx.example with ESMTP id 4711;\r\n"
    b"\tWed, 25 Nov 2026 10:00:00 +0100\r\n"
    b"Received:   from  x  (odd   spacing)  by y ; Tue, 24 Nov 2026 09:00:00 -0500\r\n"
    b"Subject: trace\r\n"
    b"\r\n"
    b"Received: in the body is text\r\n")
DATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct"
                  r"|Nov|Dec) \d{4} \d\d:\d\d:\d\d [+-]\d{4}")


def test_received_header(tmp_path):
    with MTA(tmp_path) as mta, greet(mta.port, helo=b"client.example") as client:
        before = time.time()
        one = submit(client, EXISTING_TRACE)
        two = submit(client, EXISTING_TRACE, recipients=("b@example.net", "c@example.net"))
        after = time.time()
        contents = {ta_id: mta.content(ta_id) for ta_id in (one, two)}

    for ta_id, content in contents.items():
        header = received_header(content)
        assert body_of(content) == EXISTING_TRACE           # existing trace byte-identical
        assert content.count(b"Received:") == EXISTING_TRACE.count(b"Received:") + 1
        assert re.fullmatch(rb"Received: [\x20-\x7e]+(\r\n\t[\x20-\x7e]+)*\r\n", header), header
        text = unfold(header)
        assert len(text) < 998
        assert text.startswith("Received: from client.example ([127.0.0.1]) ")
        assert f" by mx.test (meta1) with ESMTP id {ta_id}" in text
        date = text.rsplit("; ", 1)[1]
        assert DATE.fullmatch(date), date
        stamp = email.utils.parsedate_to_datetime(date).timestamp()
        assert int(before) - 1 <= stamp <= after + 1
    assert " for <b@example.net>; " in unfold(received_header(contents[one]))
    assert " for <" not in unfold(received_header(contents[two]))


# -- T16 HELO sanitising ------------------------------------------------------------------------------

HELO_CASES = [
    (b"a(b)c\\d", "a?b?c?d"),
    (b"x" * 200, "x" * 200),
    (b"\xc3\xa9t\xc3\xa9.example", "?t?.example"),       # UTF-8: one "?" per character
    (b"caf\xe9.example", "caf?.example"),                 # not UTF-8: one "?" per octet
    (b"esc\x1b[31m\x7f.example", "esc?[31m?.example"),
    (b"(\\)", "???"),
]


def test_helo_is_sanitised_in_the_received_header(tmp_path):
    with MTA(tmp_path) as mta:
        ids = []
        for helo, _ in HELO_CASES:
            with greet(mta.port, helo=helo) as client:
                ids.append(submit(client, HEADER + b"helo test\r\n"))
        headers = [received_header(mta.content(ta_id)) for ta_id in ids]
    for (helo, shown), header in zip(HELO_CASES, headers):
        assert re.fullmatch(rb"Received: [\x20-\x7e]+(\r\n\t[\x20-\x7e]+)*\r\n", header), header
        assert header.count(b"\r\n") == 3, header   # no line break the client put there
        text = unfold(header)
        assert text.startswith(f"Received: from {shown} ([127.0.0.1]) by mx.test (meta1) ")
        # Parentheses and backslashes in the header are only our own.
        assert text.count("(") == text.count(")") == 2 and "\\" not in text


def test_overlong_helo_is_cut_in_the_received_header(tmp_path):
    with MTA(tmp_path) as mta, greet(mta.port, helo=b"y" * 1500) as client:
        header = received_header(mta.content(submit(client, HEADER + b"x\r\n")))
    first_line = header.split(b"\r\n")[0]
    assert len(first_line) < 998
    assert first_line.startswith(b"Received: from " + b"y" * 255 + b" ([127.0.0.1])")


# -- identifiers ------------------------------------------------------------------------------------

DAEMON_MESSAGES = ("ready:", "connected to qmgr", "connection to qmgr lost", "qmgr not reachable",
                   "shutting down", "stopped")


def log_messages(log: str) -> list[str]:
    """The text after "smtps[pid]: " of every log line."""
    return [line.split("]: ", 1)[1] for line in log.splitlines() if "]: " in line]


def test_ids_grow_and_name_everything(tmp_path):
    with MTA(tmp_path) as mta:
        ids = []
        for _session in range(2):
            with greet(mta.port) as client:
                ids.append(submit(client, HEADER + b"1\r\n"))
                ids.append(submit(client, HEADER + b"2\r\n",
                                  recipients=("r1@example.net", "r2@example.net",
                                              "r3@example.net")))
                assert client.command("QUIT")[0] == 221
        queued = {q["id"]: q for q in mta.mailq()}
        assert mta.kill("smtps", signal.SIGTERM) == 0
        first_log = mta.log("smtps")
        mta.spawn("smtps")
        mta.wait_linked()
        with greet(mta.port) as client:
            after_restart = [submit(client, HEADER + b"3\r\n") for _ in range(2)]

    assert all(ID.match(ta_id) for ta_id in ids + after_restart)
    counters = [counter(ta_id) for ta_id in ids + after_restart]
    assert counters == sorted(set(counters))             # strictly increasing, no repeats
    assert set(queued) == set(ids)
    for ta_id in ids:
        assert [r["id"] for r in queued[ta_id]["recipients"]] == [
            f"{ta_id}-{i:04X}" for i in range(len(queued[ta_id]["recipients"]))]
    assert len(queued[ids[1]]["recipients"]) == 3

    messages = log_messages(first_log)
    for message in messages:
        if not message.startswith(DAEMON_MESSAGES):
            assert re.match(r"S[0-9A-F]{18}(-[0-9A-F]{4})?: ", message), message
    for ta_id in ids:
        about = [m for m in messages if ta_id in m]
        assert any(f"ta={ta_id} mail from=<a@example.org>" in m for m in about), about
        assert any(f"ta={ta_id} accepted" in m for m in about), about
        rcpts = [m for m in about if "rcpt to=" in m]
        assert [m.split(":")[0] for m in rcpts] == [r["id"] for r in queued[ta_id]["recipients"]]
    for message in messages:   # every line about a transaction names one of ours
        if "ta=" in message or "rcpt to=" in message:
            assert any(ta_id in message for ta_id in ids), message


# -- many sessions ------------------------------------------------------------------------------------

IDLE_SESSIONS = 1000


@pytest.fixture
def many_fds():
    """Let this process and the daemons it starts (they inherit the limit) hold enough
    descriptors for both ends of every idle session; the old limit comes back after."""
    wanted = 2 * IDLE_SESSIONS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_idle_sessions(tmp_path, many_fds):
    started = time.monotonic()
    idle: list[SMTPClient] = []
    # max_sessions defaults to 1000; the transaction below is session 1001.
    with MTA(tmp_path, extra_smtps=f"max_sessions = {IDLE_SESSIONS + 10};") as mta:
        try:
            for _ in range(IDLE_SESSIONS):
                idle.append(SMTPClient(mta.port))
            greetings = [client.reply() for client in idle]
            with greet(mta.port) as client:
                ta_id = submit(client, HEADER + b"while 1000 others wait\r\n")
                assert client.command("QUIT")[0] == 221
            assert [q["id"] for q in mta.mailq()] == [ta_id]
        finally:
            for client in idle:
                client.close()
    assert greetings == [(220, "mx.test ESMTP meta1")] * IDLE_SESSIONS
    assert time.monotonic() - started < 30


# -- qmgr ------------------------------------------------------------------------------------------------


def test_qmgr_killed_and_restarted(tmp_path):
    with MTA(tmp_path) as mta:
        with greet(mta.port) as client:
            ids = [submit(client, HEADER + f"message {n}\r\n".encode()) for n in range(3)]
        assert mta.kill("qmgr") == -signal.SIGKILL
        mta.wait_log("smtps", "connection to qmgr lost")
        with greet(mta.port) as client:            # no qmgr: 451, and nothing kept
            envelope(client)
            code, text = send_data(client, HEADER + b"while qmgr is down\r\n")
            assert (code, text[:6]) == (451, "4.3.0 "), text
        wait_for(lambda: sorted(mta.content_files()) == sorted(ids), timeout=10,
                 what="the refused message's content file removed")

        qmgr = mta.spawn("qmgr")
        assert "recovered 3 transactions" in mta.log("qmgr")
        assert [q["id"] for q in mta.mailq()] == ids
        mta.wait_linked(qmgr_pid=qmgr.pid)
        with greet(mta.port) as client:
            fourth = submit(client, HEADER + b"after the restart\r\n")
        assert [q["id"] for q in mta.mailq()] == ids + [fourth]
        assert queued_body(mta, ids[1]) == HEADER + b"message 1\r\n"


def test_a_second_qmgr_refuses_the_queue(tmp_path):
    with MTA(tmp_path) as mta:
        second = subprocess.run([sys.executable, "-m", "meta1", "qmgr", "-f", str(mta.config)],
                                capture_output=True, text=True, env=mta.env(), timeout=30,
                                check=False)
        assert second.returncode == 75, second
        assert "another qmgr" in second.stderr
        # The first one is untouched: its socket and lock still serve smtps.
        with greet(mta.port) as client:
            ta_id = submit(client, HEADER + b"still served\r\n")
        assert [q["id"] for q in mta.mailq()] == [ta_id]
        assert mta.running("qmgr")
