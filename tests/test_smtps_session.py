"""The sans-I/O smtps session: content, trace header, ids, segmentation (no sockets)."""

from __future__ import annotations

import logging
import re

from hypothesis import given, settings, strategies as st

from conformance.transcripts import FixedServices
from meta1.ipc.records import ResolvedRecipient
from meta1.smtp import Reply
from meta1.smtps.session import (Close, CommitContent, OpenContent, Outcome, Send, Session, Settings,
                                 WriteContent)


class Client:
    def __init__(self, services=None, **settings_changes):
        self.session = Session(Settings(hostname="mx.test", eightbitmime=True, **settings_changes),
                               services or FixedServices(), client_address="192.0.2.7",
                               client_port=4242)
        self.output = bytearray()
        self.content = bytearray()
        self.commits: list[tuple[object, bytes]] = []
        self.closed = False
        self.apply(self.session.start())

    def apply(self, effects):
        for e in effects:
            if isinstance(e, Send):
                self.output += e.data
            elif isinstance(e, OpenContent):
                self.content = bytearray()
            elif isinstance(e, WriteContent):
                self.content += e.data
            elif isinstance(e, CommitContent):
                self.commits.append((e.transaction, bytes(self.content)))
                self.apply(self.session.commit_result(True))
            elif isinstance(e, Close):
                self.closed = True

    def send(self, *segments: bytes):
        for segment in segments:
            self.apply(self.session.receive(segment))

    def replies(self) -> list[str]:
        return [line for line in self.output.decode("ascii", "replace").split("\r\n") if line]


def strip_received(content: bytes) -> tuple[bytes, bytes]:
    """(our Received header, the rest)."""
    match = re.match(rb"Received: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*", content)
    assert match, content[:200]
    return match.group(0), content[match.end():]


ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"


def stuff(body: bytes) -> bytes:
    """What a client sends for ``body`` (whole CRLF lines): dot-stuffed, then the end."""
    lines = body.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def segments(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, start = [], 0
    for p in points + [len(data)]:
        out.append(data[start:p])
        start = p
    return [s for s in out if s]


line_text = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
bodies = st.lists(st.one_of(line_text, st.sampled_from([b".", b"..", b".hidden", b"", b". "])),
                  max_size=12).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@settings(deadline=None, max_examples=150)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_dot_stuffing_round_trip_in_any_segmentation(body, cuts):
    """T04: what arrives in the queue is exactly the unstuffed body, however it was split."""
    if b"\x00" in body.split(b"\r\n\r\n")[0]:
        body = body.replace(b"\x00", b"")      # NUL in the header is refused (T11)
    client = Client()
    client.send(ENVELOPE + b"DATA\r\n", *segments(stuff(body), cuts))
    (transaction, content), = client.commits
    # Compared with the Received header of the same session for a known body: a body
    # whose first line starts with white space would look like a continuation of it.
    header = our_received_header()
    assert content[:len(header)] == header and content[len(header):] == body
    assert transaction.size == len(content)


def our_received_header() -> bytes:
    """The Received header a fresh Client's first transaction gets (fixed services)."""
    client = Client()
    client.send(ENVELOPE + b"DATA\r\n", stuff(b"x\r\n"))
    (_, content), = client.commits
    assert content.endswith(b"\r\nx\r\n")
    return content[:-len(b"x\r\n")]


def test_a_long_content_line_in_segments_without_lf_is_content():
    """T07: a 70,000-octet line arriving in LF-less pieces is content, not a long command."""
    client = Client(max_data_line_length=100_000)
    line = b"y" * 70_000
    client.send(ENVELOPE + b"DATA\r\n", *[line[i:i + 1000] for i in range(0, len(line), 1000)],
                b"\r\n.\r\n")
    (_, content), = client.commits
    assert strip_received(content)[1] == line + b"\r\n"


def test_a_bdat_chunk_in_segments_without_lf():
    client = Client()
    chunk = (b"z" * 98 + b"\r\n") * 90          # 9000 octets; pieces cut mid-line
    client.send(ENVELOPE + b"BDAT 9000 LAST\r\n", *[chunk[i:i + 700] for i in range(0, 9000, 700)])
    (_, content), = client.commits
    assert strip_received(content)[1] == chunk
    assert client.replies()[-1].startswith("250 2.0.0 S")


def test_received_header_is_one_safe_trace_line_group():
    """T15/T16: one Received header, the client's HELO made printable and comment-safe."""
    client = Client()
    client.send(b"EHLO a(b)c\\d\xc3\xa9\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                b"DATA\r\nReceived: from elsewhere\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    (transaction, content), = client.commits
    header, rest = strip_received(content)
    assert rest.startswith(b"Received: from elsewhere\r\nSubject: x\r\n")
    text = header.decode("ascii")
    assert text == (f"Received: from a?b?c?d? ([192.0.2.7])\r\n"
                    f"\tby mx.test (meta1) with ESMTP id {transaction.ta_id}\r\n"
                    f"\tfor <c@d.example>; Tue, 25 Nov 2025 10:00:00 +0000\r\n")


def test_received_date_after_2038():
    """Times are 64-bit: the trace date works past 2038 on i386 too."""
    class Later(FixedServices):
        def now_us(self):
            return (2**33) * 1_000_000      # 2242-03-16T12:56:32Z
    client = Client(services=Later())
    client.send(ENVELOPE + b"DATA\r\n\r\n.\r\n")
    (transaction, content), = client.commits
    assert b"Wed, 16 Mar 2242 12:56:32 +0000" in strip_received(content)[0]
    assert transaction.arrival == 2**33 * 1_000_000


def test_every_log_line_about_a_transaction_names_it(caplog):
    caplog.set_level(logging.INFO, logger="meta1.smtps")
    client = Client()
    client.send(ENVELOPE + b"RCPT TO:<e@f.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
    (transaction, _), = client.commits
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"{transaction.ta_id}-0000: rcpt to=<c@d.example>") for line in lines)
    assert any(line.startswith(f"{transaction.ta_id}-0001: rcpt to=<e@f.example>") for line in lines)
    assert all(line.startswith(client.session.id) or line.startswith(transaction.ta_id)
               for line in lines)
    assert sum(transaction.ta_id in line for line in lines) == 4   # mail, 2 rcpt, accepted


def test_ids_grow_and_recipients_are_numbered():
    client = Client()
    client.send(ENVELOPE + b"RCPT TO:<e@f.example>\r\nDATA\r\n.\r\n"
                b"MAIL FROM:<>\r\nRCPT TO:<g@h.example>\r\nDATA\r\n.\r\n")
    (first, _), (second, _) = client.commits
    assert re.fullmatch(r"S[0-9A-F]{16}[0-9A-F]{2}", first.ta_id)
    assert client.session.id < first.ta_id < second.ta_id
    assert [r.rcpt_id for r in first.recipients] == [f"{first.ta_id}-0000", f"{first.ta_id}-0001"]
    assert second.sender == ""


def test_commit_waits_and_pipelined_commands_wait_with_it():
    """While a commit is pending nothing more is read; the next replies follow the 250."""
    session = Session(Settings(hostname="mx.test"), FixedServices(), client_address="192.0.2.7")
    session.start()
    effects = session.receive(ENVELOPE + b"DATA\r\nx\r\n.\r\nNOOP\r\nQUIT\r\n")
    assert isinstance(effects[-1], CommitContent)
    assert not session.wants_input and session.idle_timeout is None
    later = session.commit_result(True)
    sent = b"".join(e.data for e in later if isinstance(e, Send))
    assert sent.startswith(b"250 2.0.0 S") and sent.endswith(b"250 2.0.0 OK\r\n221 2.0.0 mx.test closing connection\r\n")
    assert isinstance(later[-1], Close)


def test_quit_closes_without_lingering_other_ends_linger() -> None:
    """After QUIT nothing more is due from the client: Close(linger=False). A session ended
    by the server (a timeout here) lingers, so a pipelining client still reads our 421."""
    quitter = Client()
    effects = quitter.session.receive(b"EHLO c.example\r\nQUIT\r\n")
    assert [e for e in effects if isinstance(e, Close)] == [Close(linger=False)]
    idle = Client()
    effects = idle.session.timeout()
    assert [e for e in effects if isinstance(e, Close)] == [Close(linger=True)]


# -- policy verdicts (spec/policy.md) -------------------------------------------------------------

class Policy(FixedServices):
    """Scripted verdicts: ``verdicts[(stage, address)]`` → (Outcome, Reply); with ``wait``
    every check is held until :meth:`answer` (the asynchronous path through smar)."""

    def __init__(self, verdicts=None, wait=False):
        super().__init__()
        self.verdicts = verdicts or {}
        self.wait = wait
        self.asked: list = []

    def policy(self, session, check):
        self.asked.append(check)
        if self.wait:
            return None
        return self.verdicts.get((check.stage, check.recipient or check.sender), (Outcome.OK, None))


DENIED = Reply(550, "5.7.1", ("Relaying denied",))


def test_a_refused_client_gets_554_and_then_only_quit() -> None:
    """RFC 5321 §3.1: 554 instead of 220, then every command but QUIT gets 503."""
    client = Client(Policy({("connect", None): (Outcome.REFUSED, Reply(554, "5.7.1", ("Access denied",)))}))
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nNOOP\r\nQUIT\r\n")
    assert client.replies() == ["554 5.7.1 Access denied", "503 5.5.1 No SMTP service here; send QUIT",
                                "503 5.5.1 No SMTP service here; send QUIT",
                                "503 5.5.1 No SMTP service here; send QUIT", "221 2.0.0 mx.test closing connection"]
    assert client.closed and client.commits == []


def test_a_client_told_421_at_connect_is_closed() -> None:
    client = Client(Policy({("connect", None): (Outcome.CLOSE, Reply(421, "4.7.0", ("Too many connections",)))}))
    assert client.replies() == ["421 4.7.0 Too many connections"] and client.closed


def test_refused_sender_and_recipient_leave_the_session_where_it_was() -> None:
    services = Policy({("mail", "spam@bad.example"): (Outcome.REFUSED, Reply(550, "5.7.1", ("Sender refused",))),
                       ("rcpt", "far@away.example"): (Outcome.REFUSED, DENIED),
                       ("rcpt", "later@busy.example"): (Outcome.REFUSED, Reply(451, "4.3.0", ("Try later",)))})
    client = Client(services)
    client.send(b"EHLO c.example\r\nMAIL FROM:<spam@bad.example>\r\nRCPT TO:<x@y.example>\r\n"
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<far@away.example>\r\nRCPT TO:<later@busy.example>\r\n"
                b"DATA\r\nRCPT TO:<ok@here.example>\r\nDATA\r\nbody\r\n.\r\n")
    replies = client.replies()
    assert replies[-9:] == ["550 5.7.1 Sender refused", "503 5.5.1 Need MAIL command",
                            "250 2.1.0 Sender <a@b.example> OK", "550 5.7.1 Relaying denied",
                            "451 4.3.0 Try later", "554 5.5.1 No valid recipients",
                            "250 2.1.5 Recipient <ok@here.example> OK",
                            "354 End data with <CR><LF>.<CR><LF>", replies[-1]]
    [(transaction, _)] = client.commits
    assert [r.address for r in transaction.recipients] == ["ok@here.example"]
    assert [r.rcpt_id for r in transaction.recipients] == [f"{transaction.ta_id}-0000"]
    assert client.session.errors == 5        # every 4xx/5xx counts (max_errors_per_session)


def test_pipelined_commands_wait_for_each_verdict_in_order() -> None:
    """The asynchronous path: nothing after MAIL is read until its verdict; then RCPT's."""
    services = Policy(wait=True)
    client = Client(services)
    assert client.replies() == [] and client.session.state.name == "CHECKING_CLIENT"
    client.apply(client.session.policy_result(Outcome.OK))
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\n"
                b"DATA\r\nbody\r\n.\r\nQUIT\r\n")
    assert client.replies()[-1] == "250 HELP" and [c.stage for c in services.asked] == ["connect", "mail"]
    assert not client.session.wants_input and client.session.idle_timeout is None
    client.apply(client.session.policy_result(Outcome.OK))
    assert [c.recipient for c in services.asked[2:]] == ["c@d.example"]
    client.apply(client.session.policy_result(Outcome.REFUSED, DENIED))
    client.apply(client.session.policy_result(Outcome.OK))
    after_ehlo = client.replies()[client.replies().index("250 HELP") + 1:]
    assert after_ehlo[:4] == ["250 2.1.0 Sender <a@b.example> OK", "550 5.7.1 Relaying denied",
                              "250 2.1.5 Recipient <e@f.example> OK", "354 End data with <CR><LF>.<CR><LF>"]
    assert after_ehlo[4].endswith(" accepted") and after_ehlo[5:] == ["221 2.0.0 mx.test closing connection"]
    [(transaction, _)] = client.commits
    assert [r.address for r in transaction.recipients] == ["e@f.example"]


def test_a_verdict_after_the_client_left_is_dropped() -> None:
    services = Policy(wait=True)
    client = Client(services)
    client.apply(client.session.policy_result(Outcome.OK))
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    client.apply(client.session.eof())
    assert client.closed
    assert client.session.policy_result(Outcome.OK) == []


def test_discard_accepts_and_queues_nothing() -> None:
    """DISCARD: the client sees 250 for everything; nothing is committed."""
    client = Client(Policy({("rcpt", "drop@spam.example"): (Outcome.DISCARD, None)}))
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<drop@spam.example>\r\n"
                b"DATA\r\nbody\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<keep@b.example>\r\nDATA\r\nx\r\n.\r\n")
    replies = client.replies()
    assert sum(r.startswith("250 2.0.0 S") and r.endswith(" accepted") for r in replies) == 2
    [(transaction, _)] = client.commits
    assert [r.address for r in transaction.recipients] == ["keep@b.example"]


def test_discard_at_connect_discards_every_transaction() -> None:
    client = Client(Policy({("connect", None): (Outcome.DISCARD, None)}))
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n")
    assert client.replies()[0].startswith("220 ") and client.replies()[-1].endswith(" accepted")
    assert client.commits == []


def test_a_client_with_its_own_settings_gets_them_before_the_greeting_d_pol_25() -> None:
    """The connect verdict's settings (an smtps_session_conf: entry) replace the server's:
    EHLO without PIPELINING and with the session's SIZE, its recipient limit (452 4.5.3,
    RFC 5321 §4.5.3.1.10), its line limit and timeout. Commands pipelined anyway are
    still answered in order, one reply each."""
    services = Policy(wait=True)
    client = Client(services)
    own = Settings(hostname="mx.test", pipelining=False, max_message_size=5000, max_rcpts=2,
                   max_command_line_length=600, io_timeout=30.0)
    client.apply(client.session.policy_result(Outcome.OK, None, (), own))
    assert client.session.settings is own and client.session.idle_timeout == 30.0
    client.send(b"EHLO c.example\r\n")
    assert client.replies()[1:] == ["250-mx.test", "250-SIZE 5000", "250-ENHANCEDSTATUSCODES", "250-DSN",
                                    "250-SMTPUTF8", "250-CHUNKING", "250 HELP"]
    services.wait = False
    client.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@d.example>\r\n"
                b"RCPT TO:<f@d.example>\r\nNOOP " + b"x" * 600 + b"\r\n")
    assert client.replies()[-5:] == ["250 2.1.0 Sender <a@b.example> OK", "250 2.1.5 Recipient <c@d.example> OK",
                                     "250 2.1.5 Recipient <e@d.example> OK", "452 4.5.3 Too many recipients",
                                     "500 5.5.2 Line too long"]


def test_settings_with_a_refusal_are_not_taken() -> None:
    services = Policy(wait=True)
    client = Client(services)
    client.apply(client.session.policy_result(Outcome.CLOSE, Reply(421, "4.3.0", ("try later",)), (),
                                              Settings(hostname="other.test")))
    assert client.session.settings.hostname == "mx.test" and client.closed


def test_a_recipient_is_queued_as_the_copies_its_routes_name_d_pol_21() -> None:
    """An alias's verdict carries one route per copy: each becomes a queued recipient with
    its next hop, the client's DSN parameters, and the RCPT address as ORCPT when the
    client gave none (RFC 3461 §4.2); the reply still names what the client sent."""
    team = (ResolvedRecipient("lmtp:", "alice@mx.test"), ResolvedRecipient("far.test", "bob@far.test"))
    crew = (ResolvedRecipient("lmtp:", "ann@mx.test"), ResolvedRecipient("lmtp:", "dora@mx.test"),
            ResolvedRecipient("far.test", "bob@FAR.test"))
    client = Client(Policy({("rcpt", "team@mx.test"): (Outcome.OK, None, team),
                            ("rcpt", "ann@mx.test"): (Outcome.OK, None, (ResolvedRecipient("lmtp:", "ann@mx.test"),)),
                            ("rcpt", "list@mx.test"): (Outcome.OK, None, crew)}))
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<team@mx.test> NOTIFY=FAILURE\r\n"
                b"RCPT TO:<ann@mx.test>\r\nRCPT TO:<list@mx.test> ORCPT=rfc822;given@x.example\r\n"
                b"RCPT TO:<c@d.example>\r\nDATA\r\nbody\r\n.\r\n")
    after_ehlo = client.replies()[client.replies().index("250 HELP") + 2:]     # after the sender's 250
    assert after_ehlo[:4] == ["250 2.1.5 Recipient <team@mx.test> OK", "250 2.1.5 Recipient <ann@mx.test> OK",
                                     "250 2.1.5 Recipient <list@mx.test> OK", "250 2.1.5 Recipient <c@d.example> OK"]
    [(transaction, _)] = client.commits
    assert [(r.rcpt_id[-4:], r.address, r.nexthop, r.notify, r.orcpt) for r in transaction.recipients] == [
        ("0000", "alice@mx.test", "lmtp:", ("FAILURE",), "team@mx.test"),
        ("0001", "bob@far.test", "far.test", ("FAILURE",), "team@mx.test"),
        ("0002", "ann@mx.test", "lmtp:", None, None),                 # not an alias: no ORCPT added
        # ann and bob are queued already (one copy per address and next hop); dora is new,
        # with the client's ORCPT kept.
        ("0003", "dora@mx.test", "lmtp:", None, "given@x.example"),
        ("0004", "c@d.example", "", None, None)]                     # no routes: queued unrouted


def test_copies_beyond_the_recipient_limit_get_452_before_any_is_queued() -> None:
    many = tuple(ResolvedRecipient("far.test", f"u{i}@far.test") for i in range(3))
    client = Client(Policy({("rcpt", "list@mx.test"): (Outcome.OK, None, many)}), max_rcpts=4)
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<one@x.example>\r\nRCPT TO:<two@x.example>\r\n"
                b"RCPT TO:<list@mx.test>\r\nDATA\r\nbody\r\n.\r\n")
    assert client.replies()[client.replies().index("250 HELP") + 4] == "452 4.5.3 Too many recipients"
    [(transaction, _)] = client.commits
    assert [r.address for r in transaction.recipients] == ["one@x.example", "two@x.example"]
