"""The smtpc session machine against its own transition table.

* Exhaustive: every (state, input) pair that can come from outside is tried on a real
  session driven into that state. A pair in the table takes exactly its row (seen in the
  trace). A peer input without a row becomes ``BAD_REPLY``: the session closes and every
  open recipient is deferred — never a crash. A driver call without a row raises
  :class:`SessionMisuse` and changes nothing.
* Stateful (Hypothesis): a random server (any reply class, garbage, extra replies,
  hang-ups, timeouts) against a driver that follows the rules. After every step: each
  traced step is a table row, nothing is sent after Close, every transaction that ended
  has exactly one result per recipient, and a closed session holds no transaction.
"""

from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meta1.smtpc.session import (Close, Delivery, Send, Session, SessionEnded, SessionMisuse,
                                 Settings, TransactionResult)
from meta1.smtpc.states import INTERNAL_INPUTS, LOCAL_INPUTS, TABLE, Input, State
from test_smtpc_session import EHLO_FULL, EHLO_PLAIN, GREETING, delivery

EHLO_CHUNKING = b"250-mx.test\r\n250-SIZE 10000\r\n250 CHUNKING\r\n"


def _session(lmtp: bool = False, chunk_size: int = 1 << 20) -> tuple[Session, list[dict]]:
    trace: list[dict] = []
    return Session(Settings("client.test", lmtp=lmtp, chunk_size=chunk_size), trace=trace.append), trace


def _steps(*steps: Callable[[Session], object], **options) -> Callable[[], tuple[Session, list[dict]]]:
    def build() -> tuple[Session, list[dict]]:
        session, trace = _session(**options)
        for step in steps:
            step(session)
        trace.clear()
        return session, trace
    return build


def connect(s: Session): return s.connected()
def greet(s: Session): return s.receive(GREETING)
def ehlo(s: Session): return s.receive(EHLO_PLAIN)
def mail(s: Session): return s.send(delivery("b@example.net"))
def ok(s: Session): return s.receive(b"250 ok\r\n")
def go(s: Session): return s.receive(b"354 go\r\n")


#: How to drive a fresh session into each state an outside input can meet.
REACH: dict[State, Callable[[], tuple[Session, list[dict]]]] = {
    State.CONNECTING: _steps(),
    State.GREETING: _steps(connect),
    State.EHLO_SENT: _steps(connect, greet),
    State.HELO_SENT: _steps(connect, greet, lambda s: s.receive(b"500 no\r\n")),
    State.LHLO_SENT: _steps(connect, greet, lmtp=True),
    State.READY: _steps(connect, greet, ehlo),
    State.RSET_SENT: _steps(connect, greet, ehlo, mail, ok, ok, lambda s: s.receive(b"554 no\r\n")),
    State.MAIL_SENT: _steps(connect, greet, ehlo, mail),
    State.RCPT_SENT: _steps(connect, greet, ehlo, mail, ok),
    State.DATA_SENT: _steps(connect, greet, ehlo, mail, ok, ok),
    State.CONTENT: _steps(connect, greet, ehlo, mail, ok, ok, go),
    State.CHUNKING: _steps(connect, greet, lambda s: s.receive(EHLO_CHUNKING), mail, ok, ok),
    State.CHUNK_SENT: _steps(connect, greet, lambda s: s.receive(EHLO_CHUNKING), mail, ok, ok,
                             lambda s: s.content(b"more than four\r\n"), chunk_size=4),
    State.DOT_SENT: _steps(connect, greet, ehlo, mail, ok, ok, go, lambda s: s.content(b"x\r\n", last=True)),
    State.DRAINING: _steps(connect, greet, lambda s: s.receive(EHLO_FULL), mail,
                           lambda s: s.receive(b"451 later\r\n")),
    State.QUIT_SENT: _steps(connect, greet, ehlo, lambda s: s.quit()),
    State.CLOSED: _steps(connect, greet, ehlo, lambda s: s.quit(), lambda s: s.receive(b"221 bye\r\n")),
}
#: Entered and left within one action chain: no outside input ever meets it.
TRANSIENT = {State.GREETED}

INPUT_CALLS: dict[Input, Callable[[Session], list]] = {
    Input.CONNECTED: lambda s: s.connected(),
    Input.CLOSED: lambda s: s.closed(),
    Input.TIMEOUT: lambda s: s.timeout(),
    Input.REPLY_2: lambda s: s.receive(b"250 ok\r\n"),
    Input.REPLY_3: lambda s: s.receive(b"354 go\r\n"),
    Input.REPLY_4: lambda s: s.receive(b"451 4.3.0 later\r\n"),
    Input.REPLY_5: lambda s: s.receive(b"550 5.0.0 no\r\n"),
    Input.BAD_REPLY: lambda s: s.receive(b"2x0 garbage\r\n"),
    Input.SEND: lambda s: s.send(delivery("b@example.net")),
    Input.REFUSE: lambda s: s.send(delivery("b@example.net", size=10 ** 9)),
    Input.CONTENT: lambda s: s.content(b"x\r\n"),
    Input.CONTENT_END: lambda s: s.content(b"x\r\n", last=True),
    Input.QUIT: lambda s: s.quit(),
    Input.ABORT: lambda s: s.abort(),
}


def test_every_state_is_reachable_or_transient() -> None:
    assert set(REACH) | TRANSIENT == set(State)
    for state, build in REACH.items():
        assert build()[0].state is state
    assert set(INPUT_CALLS) | INTERNAL_INPUTS == set(Input)


@pytest.mark.parametrize("state", list(REACH), ids=lambda s: s.name)
@pytest.mark.parametrize("input", list(INPUT_CALLS), ids=lambda i: i.name)
def test_every_pair(state: State, input: Input) -> None:
    session, trace = REACH[state]()
    if (input in LOCAL_INPUTS and (state, input) not in TABLE) or (
            input is Input.REFUSE and (state, Input.SEND) not in TABLE):
        pending = list(session._pending)
        with pytest.raises(SessionMisuse):
            INPUT_CALLS[input](session)
        assert session.state is state and trace == [] and list(session._pending) == pending
        return
    is_reply = input.name.startswith("REPLY_")
    effects = INPUT_CALLS[input](session)
    if state is State.CLOSED and (is_reply or input is Input.BAD_REPLY):
        assert trace == [] and effects == []            # nothing is read after the close
        return
    expected = input
    if (state, input) not in TABLE or (is_reply and not REACH[state]()[0]._pending):
        expected = Input.BAD_REPLY                       # protocol error (or unsolicited)
    first = trace[0]
    assert (first["old"], first["input"]) == (state.name, expected.name)
    assert first["new"] == TABLE[(state, expected)].next.name
    for step in trace:
        assert (State[step["old"]], Input[step["input"]]) in TABLE
    if expected is Input.BAD_REPLY and state not in (State.QUIT_SENT, State.CLOSED):
        assert session.state is State.CLOSED
        assert any(isinstance(e, Close) for e in effects)
        ended = [e for e in effects if isinstance(e, SessionEnded)]
        assert len(ended) == 1 and ended[0].reply.code == 451 and ended[0].local


class RandomServer(RuleBasedStateMachine):
    """A driver that keeps the rules, a server that keeps none."""

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[dict] = []
        self.session: Session | None = None
        self.closed = False
        self.ended = 0
        self.sent_after_close = False
        self.open_deliveries: list[Delivery] = []
        self.results: list[TransactionResult] = []

    @rule(lmtp=st.booleans(), chunk=st.sampled_from([3, 1 << 20]))
    @precondition(lambda self: self.session is None)
    def start(self, lmtp: bool, chunk: int) -> None:
        self.session = Session(Settings("client.test", lmtp=lmtp, chunk_size=chunk), trace=self.trace.append)
        self.apply(self.session.connected())

    def apply(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Send) and self.closed:
                self.sent_after_close = True
            elif isinstance(effect, Close):
                self.closed = True
            elif isinstance(effect, SessionEnded):
                self.ended += 1
            elif isinstance(effect, TransactionResult):
                assert effect.delivery is self.open_deliveries.pop(0)
                assert len(effect.results) == len(effect.delivery.recipients)
                assert [r.index for r in effect.results] == list(range(len(effect.results)))
                self.results.append(effect)

    @rule(data=st.sampled_from([
        b"220 mx ESMTP\r\n", b"250 ok\r\n", b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
        b"250-mx\r\n250-8BITMIME\r\n250-DSN\r\n250 SIZE 100\r\n", b"354 go\r\n", b"451 4.3.0 later\r\n",
        b"550 5.1.1 no\r\n", b"421 4.3.2 bye\r\n", b"221 bye\r\n", b"250 a\r\n250 b\r\n",
        b"xyz\r\n", b"250-a\r\n550 b\r\n", b"25", b"0 split\r\n", b"250 bare\n"]))
    @precondition(lambda self: self.session is not None)
    def server_says(self, data: bytes) -> None:
        self.apply(self.session.receive(data))

    @rule(event=st.sampled_from(["closed", "timeout", "abort", "connected"]))
    @precondition(lambda self: self.session is not None)
    def connection_event(self, event: str) -> None:
        if event == "connected" and self.session.state is not State.CONNECTING:
            self.apply(self.session.receive(b""))  # only a fresh session may be connected
            return
        self.apply(getattr(self.session, event)())

    @rule(count=st.integers(1, 3), size=st.sampled_from([10, 1000]), eight_bit=st.booleans())
    @precondition(lambda self: self.session is not None and self.session.ready)
    def deliver(self, count: int, size: int, eight_bit: bool) -> None:
        d = delivery(*[f"r{i}@example.net" for i in range(count)], size=size, eight_bit=eight_bit)
        self.open_deliveries.append(d)
        self.apply(self.session.send(d))

    @rule(piece=st.sampled_from([b"a\r\n", b".\r\n", b"x\r", b"\n.\n"]), last=st.booleans())
    @precondition(lambda self: self.session is not None and self.session.wants_content)
    def content(self, piece: bytes, last: bool) -> None:
        self.apply(self.session.content(piece, last=last))

    @rule()
    @precondition(lambda self: self.session is not None and self.session.ready)
    def quit(self) -> None:
        self.apply(self.session.quit())

    @invariant()
    def consistent(self) -> None:
        for step in self.trace:
            assert (State[step["old"]], Input[step["input"]]) in TABLE
            assert TABLE[(State[step["old"]], Input[step["input"]])].next is State[step["new"]]
        assert not self.sent_after_close
        assert self.ended <= 1
        if self.session is not None and self.session.state is State.CLOSED:
            assert self.closed and self.ended == 1
            assert self.session.delivery is None and not self.open_deliveries


RandomServer.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestRandomServer = RandomServer.TestCase
