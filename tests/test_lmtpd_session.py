"""The sans-I/O lmtpd session: conversations as data, mailbox rules, segmentation.

Each scenario is what a client sends (segments, pipelined or not), how the Maildir
writes end for each delivery, and the replies the session must give, in order. The
runner answers every ``Deliver`` at once with the scenario's next outcomes, so ordering
follows from the session alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from meta1.lmtpd.mailbox import LocalRecipient, Outcome, mailbox_for
from meta1.lmtpd.session import Close, Deliver, Send, Session, Settings
from meta1.lmtpd.states import State

GREETING = "220 mx.test LMTP meta1"
LHLO_REPLY = ["250-mx.test", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME",
              "250 SMTPUTF8"]
ENVELOPE = b"LHLO c.example\r\nMAIL FROM:<s@x.example>\r\n"
ENVELOPE_REPLIES = [GREETING, *LHLO_REPLY, "250 2.1.0 Sender <s@x.example> OK"]


class Client:
    def __init__(self, outcomes: list[list[bool]] | None = None, *, auto: bool = True):
        self.session = Session(Settings(hostname="mx.test"), "L1")
        self.output = bytearray()
        self.requests: list = []
        self.pending = None
        self.outcomes = list(outcomes or [])
        self.auto = auto
        self.closed = False
        self.apply(self.session.start())

    def apply(self, effects):
        for effect in effects:
            if isinstance(effect, Send):
                self.output += effect.data
            elif isinstance(effect, Close):
                self.closed = True
            elif isinstance(effect, Deliver):
                self.requests.append(effect.request)
                self.pending = effect.request
                if self.auto:
                    self.finish()

    def finish(self, durable: list[bool] | None = None):
        request, self.pending = self.pending, None
        if durable is None:
            durable = self.outcomes.pop(0) if self.outcomes else [True] * len(request.recipients)
        self.apply(self.session.delivered([Outcome(ok, "path" if ok else "disk full")
                                           for ok in durable]))

    def send(self, *segments: bytes):
        for segment in segments:
            self.apply(self.session.receive(segment))

    def replies(self) -> list[str]:
        return [line for line in self.output.decode("utf-8", "replace").split("\r\n") if line]


@dataclass(frozen=True)
class Scenario:
    name: str
    segments: tuple[bytes, ...]
    replies: tuple[str, ...]
    #: per delivery, per recipient: whether the write is durable (default: all are)
    outcomes: tuple[tuple[bool, ...], ...] = ()
    #: per delivery: (sender, [(address, mailbox)…], content)
    deliveries: tuple = ()
    closed: bool = False
    state: State | None = None
    extra: dict = field(default_factory=dict)


SCENARIOS = [
    Scenario(
        "the whole conversation pipelined in one segment",
        (ENVELOPE + b"RCPT TO:<alice@mx.test>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n"
         b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n",),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <alice@mx.test> OK",
         "250 2.1.5 Recipient <bob@mx.test> OK", "354 End data with <CR><LF>.<CR><LF>",
         "250 2.0.0 <alice@mx.test> delivered", "250 2.0.0 <bob@mx.test> delivered",
         "221 2.0.0 mx.test closing connection"),
        deliveries=(("s@x.example", [("alice@mx.test", "alice"), ("bob@mx.test", "bob")],
                     b"Subject: t\r\n\r\nbody\r\n"),),
        closed=True),
    Scenario(
        "a refused recipient gets no reply after the data; the others in RCPT order",
        (ENVELOPE, b"RCPT TO:<Carol+news@mx.test>\r\n", b"RCPT TO:<no/such@mx.test>\r\n",
         b"RCPT TO:<dave@mx.test>\r\n", b"DATA\r\n", b"x\r\n.\r\n"),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <Carol+news@mx.test> OK",
         "550 5.1.1 <no/such@mx.test>: no such mailbox",
         "250 2.1.5 Recipient <dave@mx.test> OK", "354 End data with <CR><LF>.<CR><LF>",
         "250 2.0.0 <Carol+news@mx.test> delivered", "250 2.0.0 <dave@mx.test> delivered"),
        deliveries=(("s@x.example", [("Carol+news@mx.test", "carol"), ("dave@mx.test", "dave")],
                     b"x\r\n"),),
        state=State.READY),
    Scenario(
        "a write that failed is 451 for its recipient only",
        (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\n"
         b"DATA\r\nx\r\n.\r\n",),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <a@mx.test> OK",
         "250 2.1.5 Recipient <b@mx.test> OK", "250 2.1.5 Recipient <c@mx.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <a@mx.test> delivered",
         "451 4.3.0 <b@mx.test> mailbox write error; try again later",
         "250 2.0.0 <c@mx.test> delivered"),
        outcomes=((True, False, True),)),
    Scenario(
        "dot-unstuffing; a leading dot of the content and lone dots in lines",
        (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\n",
         b"..first\r\nmid.dle\r\n...\r\n. \r\n..\r\n.\r\n"),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <a@mx.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <a@mx.test> delivered"),
        deliveries=(("s@x.example", [("a@mx.test", "a")],
                     b".first\r\nmid.dle\r\n..\r\n \r\n.\r\n"),)),
    Scenario(
        "a bare LF or CR never ends the data (no smuggling)",
        (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\n",
         b"one\n.\nMAIL FROM:<evil@x.example>\r\n", b"two\r.\rthree\r\n.\r",
         b"four\r\n\n.\n", b"\r\n.\r\n"),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <a@mx.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <a@mx.test> delivered"),
        deliveries=(("s@x.example", [("a@mx.test", "a")],
                     b"one\n.\nMAIL FROM:<evil@x.example>\r\ntwo\r.\rthree\r\n"
                     b"\rfour\r\n\n.\n\r\n"),)),
    Scenario(
        "an empty message",
        (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\n.\r\n",),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <a@mx.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <a@mx.test> delivered"),
        deliveries=(("s@x.example", [("a@mx.test", "a")], b""),)),
    Scenario(
        "RFC 2033 §4.1: HELO and EHLO are refused, LHLO works",
        (b"HELO c.example\r\n", b"EHLO c.example\r\n", b"LHLO\r\n", b"LHLO c.example\r\n"),
        (GREETING, "500 5.5.1 This is an LMTP server: say LHLO (RFC 2033 4.1)",
         "500 5.5.1 This is an LMTP server: say LHLO (RFC 2033 4.1)",
         "501 5.5.4 LHLO needs a domain or address literal", *LHLO_REPLY),
        state=State.READY),
    Scenario(
        "out of order: 503 5.5.1, and DATA without an accepted recipient (RFC 2033 §4.2)",
        (b"MAIL FROM:<s@x.example>\r\n", b"LHLO c\r\n", b"RCPT TO:<a@mx.test>\r\n",
         b"DATA\r\n", b"MAIL FROM:<s@x.example>\r\n", b"MAIL FROM:<t@x.example>\r\n",
         b"RCPT TO:<-@mx.test>\r\n", b"RCPT TO:<\".x\"@mx.test>\r\n", b"DATA\r\n"),
        (GREETING, "503 5.5.1 Bad sequence of commands",
         *[line.replace("c.example", "c") for line in LHLO_REPLY],
         "503 5.5.1 Bad sequence of commands", "503 5.5.1 Bad sequence of commands",
         "250 2.1.0 Sender <s@x.example> OK", "503 5.5.1 Bad sequence of commands",
         "250 2.1.5 Recipient <-@mx.test> OK", "550 5.1.1 <\".x\"@mx.test>: no such mailbox",
         "354 End data with <CR><LF>.<CR><LF>"),
        state=State.DATA),
    Scenario(
        "DATA after every recipient was refused",
        (ENVELOPE + b"RCPT TO:<x y@mx.test>\r\nRCPT TO:<\"x y\"@mx.test>\r\nDATA\r\n",),
        (*ENVELOPE_REPLIES, "501 5.1.3 Bad recipient address syntax",
         "550 5.1.1 <\"x y\"@mx.test>: no such mailbox", "503 5.5.1 Bad sequence of commands"),
        state=State.MAIL),
    Scenario(
        "RSET ends the transaction; NOOP, VRFY, unknown verbs",
        (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nRSET\r\nDATA\r\nNOOP\r\nVRFY a\r\nHELP\r\n"
         b"RSET x\r\n",),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <a@mx.test> OK", "250 2.0.0 Reset state",
         "503 5.5.1 Bad sequence of commands", "250 2.0.0 OK",
         "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
         "500 5.5.1 Command unrecognized", "501 5.5.4 No parameters allowed"),
        state=State.READY),
    Scenario(
        "parameters: BODY= and SMTPUTF8 are offered, SIZE, DSN and AUTH are not",
        (b"LHLO c\r\n", b"MAIL FROM:<s@x.example> SIZE=10\r\n",
         b"MAIL FROM:<s@x.example> RET=FULL\r\n", b"MAIL FROM:<j\xc3\xb6@x.example>\r\n",
         b"MAIL FROM:<j\xc3\xb6@x.example> BODY=8BITMIME SMTPUTF8\r\n",
         b"RCPT TO:<a@mx.test> NOTIFY=NEVER\r\n", b"RCPT TO:<\xc3\xa4@mx.test>\r\n",
         b"RCPT TO:<a@m\xc3\xbc.test>\r\n", b"DATA\r\n", b"\xff\r\n.\r\n"),
        (GREETING, *[line.replace("c.example", "c") for line in LHLO_REPLY],
         "555 5.5.4 Unsupported parameter SIZE", "555 5.5.4 Unsupported parameter RET",
         "553 5.6.7 Must declare SMTPUTF8 to send unicode address",
         "250 2.1.0 Sender <j?@x.example> OK", "555 5.5.4 Unsupported parameter NOTIFY",
         "550 5.1.1 <?@mx.test>: no such mailbox", "250 2.1.5 Recipient <a@m?.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <a@m?.test> delivered"),
        deliveries=(("jö@x.example", [("a@mü.test", "a")], b"\xff\r\n"),)),
    Scenario(
        "Postmaster, with and without a domain, in any case",
        (ENVELOPE + b"RCPT TO:<Postmaster>\r\nRCPT TO:<POSTMASTER+x@mx.test>\r\nDATA\r\n"
         b"x\r\n.\r\n",),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <Postmaster> OK",
         "250 2.1.5 Recipient <POSTMASTER+x@mx.test> OK", "354 End data with <CR><LF>.<CR><LF>",
         "250 2.0.0 <Postmaster> delivered", "250 2.0.0 <POSTMASTER+x@mx.test> delivered"),
        deliveries=(("s@x.example", [("Postmaster", "postmaster"),
                                     ("POSTMASTER+x@mx.test", "postmaster")], b"x\r\n"),)),
    Scenario(
        "two transactions on one connection; the null sender",
        (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\n1\r\n.\r\nMAIL FROM:<>\r\n"
         b"RCPT TO:<b@mx.test>\r\nDATA\r\n2\r\n.\r\n",),
        (*ENVELOPE_REPLIES, "250 2.1.5 Recipient <a@mx.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <a@mx.test> delivered",
         "250 2.1.0 Sender <> OK", "250 2.1.5 Recipient <b@mx.test> OK",
         "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 <b@mx.test> delivered"),
        deliveries=(("s@x.example", [("a@mx.test", "a")], b"1\r\n"),
                    ("", [("b@mx.test", "b")], b"2\r\n"))),
    Scenario(
        "command framing errors: bare CR and an overlong line are answered, bare LF closes",
        (b"NOOP a\rb\r\n", b"NOOP " + b"x" * 3000 + b"\r\n", b"NOOP\r\n", b"NOOP\n"),
        (GREETING, "500 5.5.2 Bare CR in command line", "500 5.5.2 Line too long",
         "250 2.0.0 OK", "500 5.5.2 Bare LF in command line; closing connection"),
        closed=True),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario):
    client = Client([list(o) for o in scenario.outcomes])
    client.send(*scenario.segments)
    assert client.replies() == list(scenario.replies)
    assert client.closed == scenario.closed
    if scenario.state is not None:
        assert client.session.state is scenario.state
    for request, (sender, recipients, content) in zip(client.requests, scenario.deliveries):
        assert request.sender == sender
        assert request.recipients == tuple(LocalRecipient(a, m) for a, m in recipients)
        assert request.content == content
    if scenario.deliveries:
        assert len(client.requests) == len(scenario.deliveries)


def test_commands_after_the_final_dot_wait_for_the_writes():
    client = Client(auto=False)
    client.send(ENVELOPE + b"RCPT TO:<a@mx.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\nx\r\n.\r\n"
                b"NOOP\r\nMAIL FROM:<t@x.example>\r\n")
    assert client.session.state is State.DELIVERING and not client.session.wants_input
    assert client.replies()[-1] == "354 End data with <CR><LF>.<CR><LF>"
    client.send(b"RSET\r\n")                 # arrives meanwhile: buffered, not answered
    assert client.replies()[-1] == "354 End data with <CR><LF>.<CR><LF>"
    client.finish([False, True])
    assert client.replies()[-6:] == [
        "354 End data with <CR><LF>.<CR><LF>",
        "451 4.3.0 <a@mx.test> mailbox write error; try again later",
        "250 2.0.0 <b@mx.test> delivered", "250 2.0.0 OK", "250 2.1.0 Sender <t@x.example> OK",
        "250 2.0.0 Reset state"]
    assert client.session.state is State.READY


def test_shutdown_during_data_finishes_the_message_then_421():
    client = Client(auto=False)
    client.send(ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\npart\r\n")
    client.apply(client.session.shutdown())
    assert not client.closed and client.session.state is State.DATA
    client.send(b"rest\r\n.\r\n")
    client.apply(client.session.shutdown())  # a second signal changes nothing
    assert client.pending.content == b"part\r\nrest\r\n"
    client.finish()
    assert client.replies()[-2:] == ["250 2.0.0 <a@mx.test> delivered",
                                     "421 4.3.2 mx.test shutting down"]
    assert client.closed


def test_shutdown_when_idle_is_421_at_once():
    client = Client()
    client.send(b"LHLO c\r\n")
    client.apply(client.session.shutdown())
    assert client.replies()[-1] == "421 4.3.2 mx.test shutting down" and client.closed


def test_client_gone_while_delivering_the_writes_still_count():
    client = Client(auto=False)
    client.send(ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\nx\r\n.\r\n")
    client.apply(client.session.eof())
    assert not client.closed and client.session.state is State.DELIVERING
    client.finish()
    assert client.closed and client.session.state is State.CLOSING


def test_timeout_is_421_and_close():
    client = Client()
    client.send(ENVELOPE)
    assert client.session.idle_timeout == 300.0
    client.apply(client.session.timeout())
    assert client.replies()[-1] == "421 4.4.2 mx.test timeout; closing connection"
    assert client.closed and client.session.idle_timeout is None


def test_delivered_needs_one_outcome_per_recipient():
    client = Client(auto=False)
    client.send(ENVELOPE + b"RCPT TO:<a@mx.test>\r\nDATA\r\nx\r\n.\r\n")
    with pytest.raises(ValueError):
        client.session.delivered([])


# -- segmentation ------------------------------------------------------------------------------

CONVERSATION = (ENVELOPE + b"RCPT TO:<a@mx.test>\r\nRCPT TO:<x!@mx.test>\r\n"
                b"RCPT TO:<b+c@mx.test>\r\nDATA\r\n..one\r\ntwo\n.\r\n\r\n.\r\nNOOP\r\n"
                b"MAIL FROM:<>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n.\r\nQUIT\r\n")


def _segments(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, start = [], 0
    for point in points + [len(data)]:
        out.append(data[start:point])
        start = point
    return [s for s in out if s]


@settings(deadline=None, max_examples=200)
@given(cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_segmentation_gives_the_same_conversation(cuts):
    whole = Client()
    whole.send(CONVERSATION)
    split = Client()
    split.send(*_segments(CONVERSATION, cuts))
    assert split.replies() == whole.replies()
    assert split.requests == whole.requests
    assert whole.requests[0].content == b".one\r\ntwo\n.\r\n\r\n"
    assert whole.closed and split.closed


# -- mailbox rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("local_part,mailbox", [
    ("alice", "alice"), ("Alice", "alice"), ("ALICE+Lists", "alice"), ("a+b+c", "a"),
    ("first.last", "first.last"), ("under_score-dash", "under_score-dash"), ("0", "0"),
    ("-", "-"), ("x" * 64, "x" * 64), ("x" * 64 + "+detail", "x" * 64),
    ("postmaster", "postmaster"), ("Postmaster", "postmaster"), ("PostMaster+x", "postmaster"),
    ("trailing.", "trailing."),
    # refused
    ("x" * 65, None), ("", None), ("+detail", None), (".hidden", None), (".", None),
    ("..", None), ("a/b", None), ("a b", None), ("a!b", None), ("a%b", None),
    ("jö", None), ("a\x00b", None), ("a@b", None), ("K", "k"),
    ("\u212a", None),     # KELVIN SIGN: lower() makes it an ASCII "k"; not a second "k"
])
def test_mailbox_for(local_part, mailbox):
    assert mailbox_for(local_part) == mailbox
