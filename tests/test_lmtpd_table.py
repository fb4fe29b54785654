"""The lmtpd session machine against its own transition table.

* Exhaustive: every (state, input) pair a client, the daemon or the clock can present is
  tried on a real session driven into that state. A pair in the table must take exactly
  its row (seen in the trace). A command whose pair is missing must be answered with the
  protocol-error reply ``503 5.5.1`` and change nothing; an event whose pair is missing
  (a timer in a state without one) must change nothing and say nothing.
* Stateful (Hypothesis): random client actions and delivery outcomes; after every step
  every traced step is a table row, the output is whole reply lines, the session reads
  only when it may, and a delivery is pending exactly in DELIVERING.
"""

from __future__ import annotations

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meta1.lmtpd.mailbox import Outcome
from meta1.lmtpd.session import Close, Deliver, Send, Session, Settings
from meta1.lmtpd.states import COMMAND_INPUTS, COMMAND_STATES, TABLE, Input, State
from meta1.smtp import R

LINES = {
    Input.LHLO: b"LHLO client.example\r\n",
    Input.HELO: b"HELO client.example\r\n",
    Input.EHLO: b"EHLO client.example\r\n",
    Input.MAIL: b"MAIL FROM:<a@b.example>\r\n",
    Input.RCPT: b"RCPT TO:<alice@mx.test>\r\n",
    Input.DATA: b"DATA\r\n",
    Input.RSET: b"RSET\r\n",
    Input.NOOP: b"NOOP\r\n",
    Input.VRFY: b"VRFY someone\r\n",
    Input.QUIT: b"QUIT\r\n",
    Input.UNKNOWN: b"XYZZY\r\n",
    Input.BAD_LINE: b"NOOP a\rb\r\n",
    Input.UNFRAMEABLE: b"NOOP\n",
}
assert set(LINES) == set(COMMAND_INPUTS)


class Driver:
    """A session plus a record of what it did."""

    def __init__(self):
        self.trace: list[dict] = []
        self.session = Session(Settings(hostname="mx.test"), "L1", trace=self.trace.append)
        self.output = bytearray()
        self.closed = False
        self.deliveries: list = []

    def apply(self, effects) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.output += effect.data
            elif isinstance(effect, Close):
                self.closed = True
            elif isinstance(effect, Deliver):
                self.deliveries.append(effect.request)

    def send(self, data: bytes) -> None:
        self.apply(self.session.receive(data))

    def deliver(self, durable: bool = True) -> None:
        request = self.deliveries.pop()
        self.apply(self.session.delivered([Outcome(durable, "x")] * len(request.recipients)))


STEPS = {
    State.GREETED: [],
    State.READY: [LINES[Input.LHLO]],
    State.MAIL: [LINES[Input.LHLO], LINES[Input.MAIL]],
    State.RCPT: [LINES[Input.LHLO], LINES[Input.MAIL], LINES[Input.RCPT]],
    State.DATA: [LINES[Input.LHLO], LINES[Input.MAIL], LINES[Input.RCPT], b"DATA\r\nx\r\n"],
    State.DELIVERING: [LINES[Input.LHLO], LINES[Input.MAIL], LINES[Input.RCPT],
                       b"DATA\r\nx\r\n.\r\n"],
    State.CLOSING: [LINES[Input.QUIT]],
}


def drive_to(state: State) -> Driver:
    d = Driver()
    if state is not State.CONNECTED:
        d.apply(d.session.start())
        for data in STEPS[state]:
            d.send(data)
    assert d.session.state is state
    d.trace.clear()
    d.output.clear()
    return d


def expressible(state: State, input: Input) -> bool:
    """Whether a client, the daemon or the clock can present ``input`` in ``state``.

    Command lines are content in DATA, wait in the buffer in DELIVERING, are not read in
    CLOSING, and come only after the greeting; DATA_END exists only in DATA, DELIVERED
    only in DELIVERING (anything else is a daemon bug, which ``delivered()`` refuses).
    """
    if input is Input.START:
        return state is State.CONNECTED
    if input in LINES:
        return state in COMMAND_STATES
    if input is Input.DATA_END:
        return state is State.DATA
    if input is Input.DELIVERED:
        return state is State.DELIVERING
    return True


def present(d: Driver, input: Input) -> None:
    s = d.session
    if input is Input.START:
        d.apply(s.start())
    elif input in LINES:
        d.send(LINES[input])
    elif input is Input.DATA_END:
        d.send(b".\r\n")
    elif input is Input.DELIVERED:
        d.deliver()
    elif input is Input.TIMEOUT:
        d.apply(s.timeout())
    elif input is Input.EOF:
        d.apply(s.eof())
    elif input is Input.SHUTDOWN:
        d.apply(s.shutdown())
    else:  # pragma: no cover
        raise AssertionError(input)


PAIRS = [(s, i) for s in State for i in Input if expressible(s, i)]


@pytest.mark.parametrize("state,input", PAIRS, ids=[f"{s.name}-{i.name}" for s, i in PAIRS])
def test_every_state_and_input(state, input):
    d = drive_to(state)
    present(d, input)
    row = TABLE.get((state, input))
    if row is None:
        assert d.trace == [] and d.session.state is state
        if input in LINES:
            assert bytes(d.output) == R.BAD_SEQUENCE.encode()     # the protocol error
        else:
            assert d.output == b"" and not d.closed
        return
    assert d.trace[0] == {"daemon": "lmtpd", "machine": "lmtpd-session", "id": "L1",
                          "old": state.name, "input": input.name, "new": row.next.name,
                          "time": None}


def test_command_pairs_without_a_row_are_the_out_of_order_ones():
    missing = {(s, i) for s in COMMAND_STATES for i in COMMAND_INPUTS if (s, i) not in TABLE}
    assert missing == {
        (State.GREETED, Input.MAIL), (State.GREETED, Input.RCPT), (State.GREETED, Input.DATA),
        (State.READY, Input.RCPT), (State.READY, Input.DATA),
        (State.MAIL, Input.MAIL), (State.MAIL, Input.DATA),     # RFC 2033 §4.2: DATA → 503
        (State.RCPT, Input.MAIL),
    }


def test_every_action_is_implemented():
    import meta1.lmtpd.session as session_module
    for row in TABLE.values():
        assert hasattr(session_module.Session, "_do_" + row.action), row.action


def test_delivered_outside_a_delivery_is_a_driver_bug():
    d = drive_to(State.READY)
    with pytest.raises(RuntimeError):
        d.session.delivered([])


# -- stateful exploration ---------------------------------------------------------------------

ACTIONS = [
    b"LHLO c.example\r\n", b"HELO c.example\r\n", b"EHLO c.example\r\n",
    b"MAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<alice@mx.test>\r\n",
    b"RCPT TO:<Bob+x@mx.test>\r\n", b"RCPT TO:<.hidden@mx.test>\r\n", b"RCPT TO:<bad\r\n",
    b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"VRFY x\r\n", b"XYZZY\r\n",
    b"NOOP a\rb\r\n", b"NOOP\n", b"abc", b".\r\n", b"\r\n.\r\n", b"line\r\n", b"\r", b"\n",
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n",
]


class SessionMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.d = Driver()
        self.d.apply(self.d.session.start())

    @rule(data=st.sampled_from(ACTIONS))
    def client_sends(self, data):
        if not self.d.closed:
            self.d.send(data)

    @rule(durable=st.booleans())
    def writes_finish(self, durable):
        if self.d.deliveries:
            self.d.deliver(durable)

    @rule()
    def client_hangs_up(self):
        if not self.d.closed:
            self.d.apply(self.d.session.eof())

    @rule()
    def timer_fires(self):
        if self.d.session.idle_timeout is not None:
            self.d.apply(self.d.session.timeout())

    @rule()
    def shutdown(self):
        self.d.apply(self.d.session.shutdown())

    @invariant()
    def every_step_is_a_row(self):
        for record in self.d.trace:
            row = TABLE[(State[record["old"]], Input[record["input"]])]
            assert row.next.name == record["new"]

    @invariant()
    def output_is_whole_reply_lines(self):
        out = bytes(self.d.output)
        if out:
            assert out.endswith(b"\r\n")
            for line in out[:-2].split(b"\r\n"):
                assert len(line) >= 4 and line[:3].isdigit() and line[3:4] in (b" ", b"-")

    @invariant()
    def reads_only_when_it_may(self):
        s = self.d.session
        assert s.wants_input == (s.state not in (State.DELIVERING, State.CLOSING))
        assert bool(self.d.deliveries) == (s.state is State.DELIVERING)

    @invariant()
    def closed_means_closing(self):
        assert self.d.closed == (self.d.session.state is State.CLOSING)


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
