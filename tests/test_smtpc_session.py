"""The smtpc session machine, scenario by scenario: server replies in, client bytes out.

Each scenario runs a :class:`Run`: a tiny driver that feeds the server's replies in the
order given (one list element = one read), hands the session its deliveries whenever it
says ``Ready`` (then QUIT), and feeds the content when asked. The transcript interleaves
what the client sent (``C:``) and what the server said (``S:``), so lock-step and pipelined
behaviour are visible line by line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from meta1.ipc.records import Recipient
from meta1.smtpc.session import (Close, ContentEncoder, Delivery, NeedContent, Ready,
                                 RecipientResult, Send, Session, SessionEnded, SessionMisuse,
                                 Settings, TransactionResult, Wait)
from meta1.smtpc.states import State

BODY = [b"Subject: t\r\n\r\nhello\r\n"]


def rcpt(address: str, notify: tuple[str, ...] | None = None, orcpt: str | None = None) -> Recipient:
    return Recipient(f"r-{address}", address, notify, "rfc822" if orcpt else None, orcpt)


def delivery(*addresses: str, **fields) -> Delivery:
    fields.setdefault("size", len(BODY[0]))
    return Delivery(fields.pop("sender", "a@example.org"),
                    tuple(rcpt(a) if isinstance(a, str) else a for a in addresses), **fields)


@dataclass
class Run:
    """Drives one session: deliveries when Ready, content when asked, QUIT at the end."""

    session: Session
    deliveries: list[tuple[Delivery, list[bytes]]]
    transcript: list[str] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)
    results: list[TransactionResult] = field(default_factory=list)
    recipient_results: list[RecipientResult] = field(default_factory=list)
    ended: SessionEnded | None = None
    closed: bool = False
    trace: list[dict] = field(default_factory=list)
    quit_when_idle: bool = True
    _content: list[bytes] = field(default_factory=list)

    def handle(self, effects: list) -> None:
        work = list(effects)
        while work:
            effect = work.pop(0)
            assert not self.closed or isinstance(effect, SessionEnded), f"{effect} after Close"
            if isinstance(effect, Send):
                self.wire += effect.data
                self.transcript += [("C: " + line.decode("utf-8", "replace")).rstrip()
                                    for line in effect.data.split(b"\r\n")[:-1]]
            elif isinstance(effect, Close):
                self.closed = True
            elif isinstance(effect, SessionEnded):
                assert self.ended is None
                self.ended = effect
            elif isinstance(effect, TransactionResult):
                self.results.append(effect)
            elif isinstance(effect, RecipientResult):
                self.recipient_results.append(effect)
            elif isinstance(effect, Ready):
                if self.deliveries:
                    next_delivery, self._content = self.deliveries.pop(0)
                    work += self.session.send(next_delivery)
                elif self.quit_when_idle:
                    work += self.session.quit()
            elif isinstance(effect, NeedContent):
                while self.session.wants_content and self._content:
                    piece = self._content.pop(0)
                    work += self.session.content(piece, last=not self._content)
                if self.session.wants_content:   # an empty message
                    work += self.session.content(b"", last=True)

    def server(self, data: bytes) -> None:
        self.transcript += [("S: " + line.decode("latin-1")).rstrip() for line in data.split(b"\r\n")[:-1]]
        self.handle(self.session.receive(data))

    def codes(self) -> list[list[int]]:
        return [[r.reply.code for r in t.results] for t in self.results]


def talk(server: list[bytes], deliveries: list[Delivery | tuple[Delivery, list[bytes]]],
         **settings) -> Run:
    settings.setdefault("helo_name", "client.test")
    run = Run(Session(Settings(**settings)), [d if isinstance(d, tuple) else (d, list(BODY))
                                              for d in deliveries])
    run.session.machine.trace = run.trace.append
    run.handle(run.session.connected())
    for data in server:
        run.server(data)
    return run


def lines(text: str) -> list[str]:
    text = text.replace("{BODY}", BODY_T).replace("{QUIT}", QUIT_T)
    return [line.strip() for line in text.strip().splitlines()]


EHLO_PIPE = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_PLAIN = b"250-mx.test\r\n250 SIZE 10000\r\n"
EHLO_FULL = (b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-DSN\r\n"
             b"250-SMTPUTF8\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n")
GREETING = b"220 mx.test ESMTP\r\n"
BYE = b"221 2.0.0 bye\r\n"
# Transcript pieces most scenarios share.
HELLO_PIPE = """
    S: 220 mx.test ESMTP
    C: EHLO client.test
    S: 250-mx.test
    S: 250-PIPELINING
    S: 250-SIZE 10000
    S: 250-8BITMIME
    S: 250 ENHANCEDSTATUSCODES"""
HELLO_PLAIN = """
    S: 220 mx.test ESMTP
    C: EHLO client.test
    S: 250-mx.test
    S: 250 SIZE 10000"""
BODY_T = "C: Subject: t\nC:\nC: hello\nC: ."
QUIT_T = "C: QUIT\nS: 221 2.0.0 bye"

# --- the scenario table ------------------------------------------------------------------

SCENARIOS = {
    "pipelined transaction, one recipient refused": dict(
        server=[GREETING, EHLO_PIPE, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n354 go\r\n",
                b"250 2.0.0 queued\r\n", BYE],
        deliveries=[delivery("b@example.net", "c@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: RCPT TO:<c@example.net>
            C: DATA
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            S: 550 5.1.1 unknown
            S: 354 go
            {BODY}
            S: 250 2.0.0 queued
            {QUIT}""",
        codes=[[250, 550]], end=None),
    "no PIPELINING: one command at a time": dict(
        server=[GREETING, EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"451 4.2.0 later\r\n", b"354 go\r\n",
                b"250 queued\r\n", BYE],
        deliveries=[delivery("b@example.net", "c@example.net")],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 250 ok
            C: RCPT TO:<c@example.net>
            S: 451 4.2.0 later
            C: DATA
            S: 354 go
            {BODY}
            S: 250 queued
            {QUIT}""",
        codes=[[250, 451]], end=None),
    "554 greeting: QUIT, nothing else": dict(
        server=[b"554 5.7.1 go away\r\n", BYE], deliveries=[delivery("b@example.net")],
        transcript="""
            S: 554 5.7.1 go away
            {QUIT}""",
        codes=[], end=(554, False, False)),
    "421 greeting: QUIT": dict(
        server=[b"421 4.3.2 busy\r\n", BYE], deliveries=[delivery("b@example.net")],
        transcript="""
            S: 421 4.3.2 busy
            {QUIT}""",
        codes=[], end=(421, False, False)),
    "EHLO refused with 5xx: HELO, no extensions, no parameters": dict(
        server=[GREETING, b"502 5.5.1 EHLO?\r\n", b"250 mx.test\r\n", b"250 ok\r\n", b"250 ok\r\n",
                b"354 go\r\n", b"250 ok\r\n", BYE],
        deliveries=[delivery(rcpt("b@example.net", notify=("NEVER",)), envid="x", ret="HDRS")],
        transcript="""
            S: 220 mx.test ESMTP
            C: EHLO client.test
            S: 502 5.5.1 EHLO?
            C: HELO client.test
            S: 250 mx.test
            C: MAIL FROM:<a@example.org>
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            {BODY}
            S: 250 ok
            {QUIT}""",
        codes=[[250]], end=None),
    "EHLO refused with 4xx: QUIT": dict(
        server=[GREETING, b"421 4.3.2 not now\r\n", BYE], deliveries=[],
        transcript="""
            S: 220 mx.test ESMTP
            C: EHLO client.test
            S: 421 4.3.2 not now
            {QUIT}""",
        codes=[], end=(421, False, True)),
    "HELO refused too: QUIT": dict(
        server=[GREETING, b"500 no\r\n", b"501 no\r\n", BYE], deliveries=[],
        transcript="""
            S: 220 mx.test ESMTP
            C: EHLO client.test
            S: 500 no
            C: HELO client.test
            S: 501 no
            {QUIT}""",
        codes=[], end=(501, False, True)),
    "every recipient refused: DATA refused, RSET, connection still usable": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n",
                b"250 2.0.0 reset\r\n", BYE],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 550 5.1.1 no
            S: 554 5.5.1 no valid recipients
            C: RSET
            S: 250 2.0.0 reset
            {QUIT}""",
        codes=[[550]], end=None),
    "every recipient refused but DATA accepted: a lone dot (RFC 2920 §3.1)": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n", b"554 5.5.1 no recipients\r\n",
                b"250 reset\r\n", BYE],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 550 5.1.1 no
            S: 354 go
            C: .
            S: 554 5.5.1 no recipients
            C: RSET
            S: 250 reset
            {QUIT}""",
        codes=[[550]], end=None),
    "MAIL refused, pipelined: the RCPT and DATA replies are drained": dict(
        server=[GREETING, EHLO_PIPE, b"451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
                b"250 reset\r\n", BYE],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 451 4.3.0 try later
            S: 503 5.5.1 need MAIL
            S: 503 5.5.1 need MAIL
            C: RSET
            S: 250 reset
            {QUIT}""",
        codes=[[451]], end=None),
    "MAIL refused, lock-step": dict(
        server=[GREETING, EHLO_PLAIN, b"550 5.7.1 sender refused\r\n", b"250 reset\r\n", BYE],
        deliveries=[delivery("b@example.net", "c@example.net")],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 550 5.7.1 sender refused
            C: RSET
            S: 250 reset
            {QUIT}""",
        codes=[[550, 550]], end=None),
    "DATA refused: RSET": dict(
        server=[GREETING, EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"451 4.3.0 no DATA now\r\n",
                b"250 reset\r\n", BYE],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 250 ok
            C: DATA
            S: 451 4.3.0 no DATA now
            C: RSET
            S: 250 reset
            {QUIT}""",
        codes=[[451]], end=None),
    "message refused after the dot: no RSET needed": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"552 5.3.4 too big\r\n", BYE],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            {BODY}
            S: 552 5.3.4 too big
            {QUIT}""",
        codes=[[552]], end=None),
    "two transactions on one connection": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 first\r\n",
                b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 second\r\n", BYE],
        deliveries=[delivery("b@example.net"), (delivery("c@example.net", sender=""), [b"x\r\n"])],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            {BODY}
            S: 250 first
            C: MAIL FROM:<> SIZE=21
            C: RCPT TO:<c@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            C: x
            C: .
            S: 250 second
            {QUIT}""",
        codes=[[250], [250]], end=None),
    "over the server's SIZE: refused here, the next message still goes": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n", BYE],
        deliveries=[delivery("b@example.net", size=10001), delivery("c@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<c@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            {BODY}
            S: 250 ok
            {QUIT}""",
        codes=[[552], [250]], end=None),
    "8-bit message, no 8BITMIME: 5.6.3 without sending": dict(
        server=[GREETING, EHLO_PLAIN, BYE],
        deliveries=[delivery("b@example.net", "c@example.net", eight_bit=True)],
        transcript=HELLO_PLAIN + """
            {QUIT}""",
        codes=[[554, 554]], end=None),
    "8-bit message, 8BITMIME offered: BODY=8BITMIME": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n", BYE],
        deliveries=[(delivery("b@example.net", eight_bit=True, size=6), [b"caf\xc3\xa9\r\n"])],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=6 BODY=8BITMIME
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            C: café
            C: .
            S: 250 ok
            {QUIT}""",
        codes=[[250]], end=None),
    "SMTPUTF8 needed, not offered: 5.6.7 without sending": dict(
        server=[GREETING, EHLO_PIPE, BYE],
        deliveries=[delivery("b@example.net", smtputf8=True)],
        transcript=HELLO_PIPE + """
            {QUIT}""",
        codes=[[553]], end=None),
    "DSN, SMTPUTF8 and CHUNKING offered: parameters passed on, BDAT": dict(
        server=[GREETING, EHLO_FULL, b"250 ok\r\n250 ok\r\n", b"250 2.0.0 queued\r\n", BYE],
        deliveries=[delivery(rcpt("bé@example.net", notify=("SUCCESS", "FAILURE"), orcpt="bé@example.net"),
                             sender="ä@example.org", smtputf8=True, ret="HDRS", envid="id+1 x")],
        transcript="""
            S: 220 mx.test ESMTP
            C: EHLO client.test
            S: 250-mx.test
            S: 250-PIPELINING
            S: 250-SIZE 10000
            S: 250-8BITMIME
            S: 250-DSN
            S: 250-SMTPUTF8
            S: 250-CHUNKING
            S: 250 ENHANCEDSTATUSCODES
            C: MAIL FROM:<ä@example.org> SIZE=21 SMTPUTF8 RET=HDRS ENVID=id+2B1+20x
            C: RCPT TO:<bé@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+C3+A9@example.net
            S: 250 ok
            S: 250 ok
            C: BDAT 21 LAST
            C: Subject: t
            C:
            C: hello
            S: 250 2.0.0 queued
            {QUIT}""",
        codes=[[250]], end=None),
    "DSN parameters dropped when DSN is not offered": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n", BYE],
        deliveries=[delivery(rcpt("b@example.net", notify=("NEVER",), orcpt="b@example.net"),
                             ret="FULL", envid="e1")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            {BODY}
            S: 250 ok
            {QUIT}""",
        codes=[[250]], end=None),
    "BDAT in chunks, one chunk refused: RSET": dict(
        settings=dict(chunk_size=8),
        server=[GREETING, b"250-mx.test\r\n250 CHUNKING\r\n", b"250 ok\r\n", b"250 ok\r\n",
                b"250 2.0.0 8 octets\r\n", b"552 5.3.4 enough\r\n", b"250 reset\r\n", BYE],
        deliveries=[(delivery("b@example.net"), [b"line one\r\n", b"line two\r\n", b"line three\r\n"])],
        transcript="""
            S: 220 mx.test ESMTP
            C: EHLO client.test
            S: 250-mx.test
            S: 250 CHUNKING
            C: MAIL FROM:<a@example.org>
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 250 ok
            C: BDAT 10
            C: line one
            S: 250 2.0.0 8 octets
            C: BDAT 10
            C: line two
            S: 552 5.3.4 enough
            C: RSET
            S: 250 reset
            {QUIT}""",
        codes=[[552]], end=None),
    "LMTP: LHLO, one reply per accepted recipient after the dot": dict(
        settings=dict(lmtp=True),
        server=[b"220 lmtp.test LMTP\r\n", b"250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
                b"250 ok\r\n250 ok\r\n550 5.1.1 no mailbox\r\n250 ok\r\n354 go\r\n",
                b"250 2.0.0 b delivered\r\n452 4.2.2 d over quota\r\n", BYE],
        deliveries=[delivery("b@example.net", "c@example.net", "d@example.net")],
        transcript="""
            S: 220 lmtp.test LMTP
            C: LHLO client.test
            S: 250-lmtp.test
            S: 250-PIPELINING
            S: 250 ENHANCEDSTATUSCODES
            C: MAIL FROM:<a@example.org>
            C: RCPT TO:<b@example.net>
            C: RCPT TO:<c@example.net>
            C: RCPT TO:<d@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 550 5.1.1 no mailbox
            S: 250 ok
            S: 354 go
            {BODY}
            S: 250 2.0.0 b delivered
            S: 452 4.2.2 d over quota
            {QUIT}""",
        codes=[[250, 550, 452]], end=None),
    "LMTP: LHLO refused, no HELO": dict(
        settings=dict(lmtp=True),
        server=[b"220 lmtp.test LMTP\r\n", b"500 5.5.1 what\r\n", BYE], deliveries=[delivery("b@example.net")],
        transcript="""
            S: 220 lmtp.test LMTP
            C: LHLO client.test
            S: 500 5.5.1 what
            {QUIT}""",
        codes=[], end=(500, False, True)),
    "connection lost after the dot: the recipients are deferred": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n"],
        deliveries=[delivery("b@example.net")], events=["closed"],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            C: Subject: t
            C:
            C: hello
            C: .""",
        codes=[[451]], end=(451, True, True)),
    "timeout waiting for RCPT: QUIT, close, deferred": dict(
        server=[GREETING, EHLO_PLAIN, b"250 ok\r\n"],
        deliveries=[delivery("b@example.net", "c@example.net")], events=["timeout"],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 250 ok
            C: RCPT TO:<b@example.net>
            C: QUIT""",
        codes=[[451, 451]], end=(451, True, True)),
    "an extra reply (response injection) is a protocol error, not a RCPT answer": dict(
        server=[GREETING, EHLO_PLAIN, b"250 ok\r\n250 injected\r\n"],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 250 ok
            S: 250 injected
            C: RCPT TO:<b@example.net>
            C: QUIT""",
        codes=[[451]], end=(451, True, True)),
    "a reply during the content is a protocol error; no QUIT inside DATA": dict(
        server=[GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n550 5.0.0 early\r\n"],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PIPE + """
            C: MAIL FROM:<a@example.org> SIZE=21
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            S: 550 5.0.0 early""",
        codes=[[451]], end=(451, True, True)),
    "a multi-line reply with mixed codes is a protocol error": dict(
        server=[GREETING, b"250-mx.test\r\n550 PIPELINING\r\n"], deliveries=[],
        transcript="""
            S: 220 mx.test ESMTP
            C: EHLO client.test
            S: 250-mx.test
            S: 550 PIPELINING
            C: QUIT""",
        codes=[], end=(451, True, True)),
    "354 to RCPT is a protocol error": dict(
        server=[GREETING, EHLO_PLAIN, b"250 ok\r\n", b"354 what\r\n"],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 354 what
            C: QUIT""",
        codes=[[451]], end=(451, True, True)),
    "250 to DATA is a protocol error": dict(
        server=[GREETING, EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"250 what\r\n"],
        deliveries=[delivery("b@example.net")],
        transcript=HELLO_PLAIN + """
            C: MAIL FROM:<a@example.org> SIZE=21
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 250 ok
            C: DATA
            S: 250 what
            C: QUIT""",
        codes=[[451]], end=(451, True, True)),
    "data from an idle server is a protocol error": dict(
        server=[GREETING, EHLO_PLAIN, b"421 4.4.2 idle\r\n"], deliveries=[], quit=False,
        transcript=HELLO_PLAIN + """
            S: 421 4.4.2 idle
            C: QUIT""",
        codes=[], end=(451, True, True)),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    case = SCENARIOS[name]
    run = Run(Session(Settings("client.test", **case.get("settings", {}))),
              [d if isinstance(d, tuple) else (d, list(BODY)) for d in case["deliveries"]],
              quit_when_idle=case.get("quit", True))
    run.handle(run.session.connected())
    for data in case["server"]:
        run.server(data)
    for event in case.get("events", []):
        run.handle(getattr(run.session, event)())
    assert run.transcript == lines(case["transcript"])
    assert run.codes() == case["codes"]
    assert run.closed and run.session.state is State.CLOSED
    end = None if run.ended.reply is None else (run.ended.reply.code, run.ended.local, run.ended.greeted)
    assert end == case["end"]
    # Every recipient got exactly one result, the same one in both effects.
    final = [r for t in run.results for r in t.results]
    assert len(final) == len(run.recipient_results) and all(r in run.recipient_results for r in final)
    for step in run.trace:
        assert step["machine"] == "smtpc-session"


def test_local_refusals_carry_the_enhanced_codes() -> None:
    run = talk([GREETING, EHLO_PLAIN, BYE], [delivery("b@example.net", size=20000),
                                             delivery("b@example.net", eight_bit=True),
                                             delivery("b@example.net", smtputf8=True)])
    assert [(r.reply.code, r.reply.status, r.local) for t in run.results for r in t.results] == [
        (552, "5.3.4", True), (554, "5.6.3", True), (553, "5.6.7", True)]


def test_results_say_whose_reply_it_is() -> None:
    run = talk(SCENARIOS["pipelined transaction, one recipient refused"]["server"],
               [delivery("b@example.net", "c@example.net")])
    first, second = run.results[0].results
    assert first.delivered and not first.local and first.reply.status == "2.0.0"
    assert second.permanent and second.reply.lines == ("unknown",)


def test_waiting_for_tells_the_driver_which_timer() -> None:
    session = Session(Settings("client.test"))
    assert session.waiting_for is Wait.CONNECT
    session.connected()
    assert session.waiting_for is Wait.REPLY
    session.receive(GREETING)
    session.receive(EHLO_PIPE)
    assert session.waiting_for is Wait.TRANSACTION
    session.send(delivery("b@example.net"))
    assert session.waiting_for is Wait.REPLY
    session.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert session.waiting_for is Wait.CONTENT and session.wants_content
    session.content(b"x\r\n", last=True)
    assert session.waiting_for is Wait.FINAL_REPLY
    session.receive(b"250 ok\r\n")
    assert session.ready
    session.quit()
    session.receive(BYE)
    assert session.waiting_for is Wait.NOTHING


def test_driver_mistakes_raise_session_misuse_and_change_nothing() -> None:
    session = Session(Settings("client.test"))
    with pytest.raises(SessionMisuse):
        session.send(delivery("b@example.net"))
    with pytest.raises(SessionMisuse):
        session.content(b"x")
    assert session.state is State.CONNECTING


@pytest.mark.parametrize("pieces, stuffed", [
    ([b".hello\r\n"], b"..hello\r\n"),
    ([b"a\r\n.b\r\n"], b"a\r\n..b\r\n"),
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n"),
    ([b"a\r", b"\n.", b"b\r\n"], b"a\r\n..b\r\n"),
    ([b"a\r\n.\r\n"], b"a\r\n..\r\n"),
    ([b"no final line end"], b"no final line end\r\n"),
    ([b"bare\nLF\n.\n"], b"bare\r\nLF\r\n..\r\n"),       # outbound smuggling: never \n.\n
    ([b"bare\rCR\r"], b"bare\r\nCR\r\n"),
    ([b"x\r", b"\r", b"\n"], b"x\r\n\r\n"),
    ([b""], b""),
])
def test_content_encoder(pieces: list[bytes], stuffed: bytes) -> None:
    encoder = ContentEncoder(dot_stuffing=True)
    out = b"".join(encoder.encode(p) for p in pieces) + encoder.finish()
    assert out == stuffed and encoder.octets == len(stuffed)


def test_content_encoder_is_split_independent() -> None:
    content = b".a\r\nb\n.c\r\r\n..\r\n.\r\nend"
    whole = ContentEncoder(True)
    expected = whole.encode(content) + whole.finish()
    for cut in range(len(content) + 1):
        for cut2 in range(cut, len(content) + 1):
            encoder = ContentEncoder(True)
            out = (encoder.encode(content[:cut]) + encoder.encode(content[cut:cut2])
                   + encoder.encode(content[cut2:]) + encoder.finish())
            assert out == expected, (cut, cut2)


def test_dot_stuffing_across_content_pieces_on_the_wire() -> None:
    run = talk([GREETING, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n", BYE],
               [(delivery("b@example.net"), [b"a\r", b"\n.", b"b\r\n.", b"\r\n"])])
    assert run.wire.endswith(b"DATA\r\na\r\n..b\r\n..\r\n.\r\n" + b"QUIT\r\n")
