"""The smtps session machine against its own transition table.

* Exhaustive: every (state, input) pair is tried on a real session driven into that
  state. A pair in the table must take exactly its row (seen in the trace); a pair not
  in the table must change nothing and raise nothing.
* Stateful (Hypothesis): random sequences of client actions; after every step the
  invariants hold — every traced step is a table row, output is whole CRLF lines, the
  session reads input only when it may, a commit is requested only in COMMITTING, a
  policy verdict is asked for only in the CHECKING states.
"""

from __future__ import annotations

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from conformance.transcripts import FixedServices
from meta1.smtp import R, Reply
from meta1.smtps.session import CheckPolicy, Close, CommitContent, Outcome, Send, Session, Settings
from meta1.smtps.states import CHECKING_STATES, COMMAND_STATES, TABLE, Input, State

LINES = {
    Input.HELO: b"HELO client.example\r\n",
    Input.EHLO: b"EHLO client.example\r\n",
    Input.MAIL: b"MAIL FROM:<a@b.example>\r\n",
    Input.RCPT: b"RCPT TO:<c@d.example>\r\n",
    Input.DATA: b"DATA\r\n",
    Input.BDAT: b"BDAT 3\r\n",
    Input.RSET: b"RSET\r\n",
    Input.NOOP: b"NOOP\r\n",
    Input.QUIT: b"QUIT\r\n",
    Input.VRFY: b"VRFY someone\r\n",
    Input.HELP: b"HELP\r\n",
    Input.STARTTLS: b"STARTTLS\r\n",
    Input.AUTH: b"AUTH PLAIN\r\n",
    Input.UNKNOWN: b"XYZZY\r\n",
    Input.BAD_LINE: b"NOOP a\rb\r\n",
    Input.UNFRAMEABLE: b"NOOP\n",
}

#: Rows that exist for the spec and the next issues but whose command check refuses in
#: this version (no TLS, no SASL): the command is answered 502 and nothing fires.
REFUSED_BY_CHECK = {Input.STARTTLS, Input.AUTH}
#: States no input can reach in this version (entered by STARTTLS / AUTH).
UNREACHABLE = {State.TLS_HANDSHAKE, State.AUTH_EXCHANGE}


class Driver:
    """A session plus a record of what it did."""

    def __init__(self, max_errors: int = 1000, auto_policy: bool = True):
        self.auto_policy = auto_policy          # answer every CheckPolicy with OK at once
        self.checks: list[CheckPolicy] = []
        self.trace: list[dict] = []
        driver = self

        class Services(FixedServices):
            def policy(self, session, check):
                if driver.auto_policy:
                    return Outcome.OK, None
                driver.checks.append(check)
                return None

        self.session = Session(Settings(hostname="mx.test", eightbitmime=True, max_errors=max_errors,
                                        max_junk=1000),
                               Services(), client_address="192.0.2.1", client_port=1,
                               trace=self.trace.append)
        self.output = bytearray()
        self.closed = False
        self.commits_pending: list = []

    def apply(self, effects) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.output += effect.data
            elif isinstance(effect, Close):
                self.closed = True
            elif isinstance(effect, CommitContent):
                self.commits_pending.append(effect.transaction)

    def send(self, data: bytes) -> None:
        self.apply(self.session.receive(data))


ACCESS_DENIED = Reply(554, "5.7.1", ("Access denied",))
#: A CHECKING state: the lines answered at once, then the line whose check stays open.
CHECKS = {
    State.CHECKING_SENDER: ([LINES[Input.EHLO]], LINES[Input.MAIL]),
    State.CHECKING_FIRST_RCPT: ([LINES[Input.EHLO], LINES[Input.MAIL]], LINES[Input.RCPT]),
    State.CHECKING_RCPT: ([LINES[Input.EHLO], LINES[Input.MAIL], LINES[Input.RCPT]], LINES[Input.RCPT]),
}


def drive_to(state: State) -> Driver:
    d = Driver()
    if state is State.CONNECTED:
        return d
    if state in (State.CHECKING_CLIENT, State.REFUSED):
        d.auto_policy = False
        d.apply(d.session.start())
        if state is State.REFUSED:
            d.apply(d.session.policy_result(Outcome.REFUSED, ACCESS_DENIED))
    elif state in CHECKS:
        d.apply(d.session.start())
        answered, pending = CHECKS[state]
        for data in answered:
            d.send(data)
        d.auto_policy = False
        d.send(pending)
    if state in (State.CHECKING_CLIENT, State.REFUSED) or state in CHECKS:
        assert d.session.state is state, (d.session.state, state)
        d.trace.clear()
        return d
    d.apply(d.session.start())
    steps = {
        State.GREETED: [],
        State.READY: [LINES[Input.EHLO]],
        State.MAIL: [LINES[Input.EHLO], LINES[Input.MAIL]],
        State.RCPT: [LINES[Input.EHLO], LINES[Input.MAIL], LINES[Input.RCPT]],
        State.DATA: [LINES[Input.EHLO], LINES[Input.MAIL], LINES[Input.RCPT], b"DATA\r\nx\r\n"],
        State.CHUNKING: [LINES[Input.EHLO], LINES[Input.MAIL], LINES[Input.RCPT], b"BDAT 4\r\nab"],
        State.CHUNKED: [LINES[Input.EHLO], LINES[Input.MAIL], LINES[Input.RCPT], b"BDAT 2\r\nab"],
        State.COMMITTING: [LINES[Input.EHLO], LINES[Input.MAIL], LINES[Input.RCPT],
                           b"DATA\r\nx\r\n.\r\n"],
        State.CLOSING: [LINES[Input.QUIT]],
    }[state]
    for data in steps:
        d.send(data)
    assert d.session.state is state
    d.trace.clear()
    return d


def expressible(state: State, input: Input) -> bool:
    """Whether a client (or qmgr, or the clock) can present ``input`` in ``state``.

    Command lines are content in DATA/CHUNKING and wait in the buffer in COMMITTING;
    content inputs exist only in their content state; TLS_DONE/AUTH_DONE come with a
    later issue; TOO_MANY_ERRORS is raised by the session itself (transcripts errors, junk).
    LAST_CHUNK_END is covered by its own test (drive_to(CHUNKING) reads a non-LAST chunk).
    """
    if input is Input.START:
        return state is State.CONNECTED
    if input in LINES:
        return state in COMMAND_STATES or state is State.REFUSED
    if input in (Input.POLICY_OK, Input.POLICY_REFUSED, Input.POLICY_CLOSE):
        return state in CHECKING_STATES or state is State.CLOSING
    if input is Input.DATA_END:
        return state is State.DATA
    if input is Input.CHUNK_END:
        return state is State.CHUNKING
    return input not in (Input.LAST_CHUNK_END, Input.TLS_DONE, Input.AUTH_DONE,
                         Input.TOO_MANY_ERRORS)


def deliver(d: Driver, state: State, input: Input) -> None:
    s = d.session
    if input is Input.START:
        d.apply(s.start())
    elif input in LINES:
        d.send(LINES[input])
    elif input is Input.DATA_END:
        d.send(b".\r\n")
    elif input is Input.CHUNK_END:
        d.send(b"cd")
    elif input in (Input.COMMITTED, Input.COMMIT_FAILED):
        d.apply(s.commit_result(input is Input.COMMITTED))
    elif input is Input.POLICY_OK:
        d.apply(s.policy_result(Outcome.OK))
    elif input is Input.POLICY_REFUSED:
        d.apply(s.policy_result(Outcome.REFUSED, ACCESS_DENIED if state is State.CHECKING_CLIENT
                                else Reply(550, "5.7.1", ("Refused",))))
    elif input is Input.POLICY_CLOSE:
        d.apply(s.policy_result(Outcome.CLOSE, Reply(421, "4.7.0", ("Go away",))))
    elif input is Input.TIMEOUT:
        d.apply(s.timeout())
    elif input is Input.EOF:
        d.apply(s.eof())
    elif input is Input.SHUTDOWN:
        d.apply(s.shutdown())
    else:  # pragma: no cover
        raise AssertionError(input)


PAIRS = [(s, i) for s in State if s not in UNREACHABLE for i in Input if expressible(s, i)]


@pytest.mark.parametrize("state,input", PAIRS, ids=[f"{s.name}-{i.name}" for s, i in PAIRS])
def test_every_state_and_input(state, input):
    d = drive_to(state)
    deliver(d, state, input)
    row = TABLE.get((state, input))
    first = d.trace[0] if d.trace else None
    if row is None or (input in REFUSED_BY_CHECK and state in COMMAND_STATES
                       and not row.action.startswith("refuse_")):
        assert first is None or first["input"] != input.name or first["old"] != state.name
        if row is None and input in LINES:
            pytest.fail(f"command input {input.name} has no row in command state {state.name}")
        return
    assert first == {"daemon": "smtps", "machine": "smtps-session", "id": d.session.id,
                     "old": state.name, "input": input.name, "new": row.next.name,
                     "time": first["time"]}


def test_command_rows_are_complete():
    for state in COMMAND_STATES:
        for input in LINES:
            assert (state, input) in TABLE, (state, input)


def test_every_row_is_reachable_or_declared_for_later():
    actions = {row.action for row in TABLE.values()}
    import meta1.smtps.session as session_module
    for action in actions:
        assert hasattr(session_module.Session, "_do_" + action), action


def test_last_chunk_end_completes_the_transaction():
    d = drive_to(State.CHUNKED)
    d.send(b"BDAT 3 LAST\r\nxyz")
    assert [(r["old"], r["input"], r["new"]) for r in d.trace][:2] == [
        ("CHUNKED", "BDAT", "CHUNKING"), ("CHUNKING", "LAST_CHUNK_END", "COMMITTING")]
    assert len(d.commits_pending) == 1


# -- stateful exploration ---------------------------------------------------------------------

ACTIONS = [
    b"EHLO c.example\r\n", b"HELO c.example\r\n", b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<>\r\n", b"RCPT TO:<c@d.example>\r\n", b"RCPT TO:<bad\r\n", b"DATA\r\n",
    b"BDAT 3\r\n", b"BDAT 2 LAST\r\n", b"BDAT x\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n",
    b"VRFY x\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"XYZZY\r\n",
    b"NOOP a\rb\r\n", b"NOOP\n", b"abc", b".\r\n", b"\r\n.\r\n", b"line\r\n", b"\r", b"\n",
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
]


class SessionMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.d = Driver(max_errors=25, auto_policy=False)
        self.d.apply(self.d.session.start())

    @rule(outcome=st.sampled_from(list(Outcome)))
    def policy_answers(self, outcome):
        if self.d.checks:
            check = self.d.checks.pop()
            reply = {Outcome.REFUSED: Reply(554 if check.stage == "connect" else 550, "5.7.1", ("No",)),
                     Outcome.CLOSE: Reply(421, "4.7.0", ("Later",))}.get(outcome)
            self.d.apply(self.d.session.policy_result(outcome, reply))

    @rule(data=st.sampled_from(ACTIONS))
    def client_sends(self, data):
        if not self.d.closed:
            self.d.send(data)

    @rule(ok=st.booleans())
    def commit_answers(self, ok):
        if self.d.commits_pending:
            self.d.commits_pending.pop()
            self.d.apply(self.d.session.commit_result(ok))

    @rule()
    def client_hangs_up(self):
        if not self.d.closed:
            self.d.apply(self.d.session.eof())

    @rule()
    def timer_fires(self):
        if self.d.session.idle_timeout is not None:
            self.d.apply(self.d.session.timeout())

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
        assert s.wants_input == (s.state not in (State.COMMITTING, State.CLOSING, *CHECKING_STATES))
        assert bool(self.d.commits_pending) == (s.state is State.COMMITTING)
        assert len(self.d.checks) <= 1 and (bool(self.d.checks) == (s.state in CHECKING_STATES)
                                             or s.state is State.CLOSING)

    @invariant()
    def closed_means_closing(self):
        assert self.d.closed == (self.d.session.state is State.CLOSING)


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
