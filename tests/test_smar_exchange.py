"""The nameserver exchange plan (meta1.smar.exchange), without sockets.

Each scenario feeds the plan a scripted reaction per send ("answer", "timeout",
"servfail", ...) and checks which servers it asked, over which transport, and the
outcome. Replies are real DNS messages built with dnspython from the plan's own query.
"""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.machine import ProtocolViolation
from meta1.smar.exchange import ExchangePlan, Question, Status, format_server
from meta1.smar.states import TABLE, WAITING, Input, State

NS1, NS2, NS3 = ("127.0.0.1", 53), ("127.0.0.2", 5353), ("::1", 53)
QUESTION = Question.make("example.test", "MX")


def reply(wire: bytes, rcode: int = dns.rcode.NOERROR, *, tc: bool = False, records: bool = True) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if tc:
        response.flags |= dns.flags.TC
    elif records and rcode == dns.rcode.NOERROR:
        response.answer.append(dns.rrset.from_text("example.test.", 300, "IN", "MX", "10 mx.example.test."))
    return response.to_wire()


def react(plan: ExchangePlan, wire: bytes, what: str) -> None:
    if what == "answer":
        assert plan.received(reply(wire))
    elif what == "nodata":
        assert plan.received(reply(wire, records=False))
    elif what in ("servfail", "refused", "nxdomain", "formerr", "notimp"):
        assert plan.received(reply(wire, dns.rcode.from_text(what.upper())))
    elif what == "truncated":
        assert plan.received(reply(wire, tc=True))
    elif what == "timeout":
        plan.timed_out()
    elif what == "unreachable":
        plan.unreachable("Connection refused")
    elif what == "garbage":
        tcp = plan.machine.state is State.TCP_WAIT
        assert plan.received(b"\x00" * 5) is tcp   # ignored over UDP, MALFORMED over TCP
    else:
        raise AssertionError(what)


def run(script: list[str], servers=(NS1, NS2), attempts: int = 2) -> tuple[list[str], ExchangePlan]:
    plan = ExchangePlan(QUESTION, servers, timeout=1.5, attempts=attempts, rng=random.Random(7))
    sends = []
    for what in script:
        send = plan.next_send()
        assert send is not None, f"plan stopped before {what!r}; sends so far {sends}"
        assert send.timeout == 1.5
        sends.append(f"{format_server(send.server)}/{'tcp' if send.tcp else 'udp'}")
        react(plan, send.wire, what)
    assert plan.next_send() is None
    assert plan.done and plan.outcome is not None
    return sends, plan


SCENARIOS = [
    # (script, expected sends, status)
    (["answer"], ["127.0.0.1:53/udp"], Status.ANSWER),
    (["nodata"], ["127.0.0.1:53/udp"], Status.ANSWER),
    (["nxdomain"], ["127.0.0.1:53/udp"], Status.NXDOMAIN),
    (["timeout", "answer"], ["127.0.0.1:53/udp", "127.0.0.2:5353/udp"], Status.ANSWER),
    (["unreachable", "answer"], ["127.0.0.1:53/udp", "127.0.0.2:5353/udp"], Status.ANSWER),
    (["truncated", "answer"], ["127.0.0.1:53/udp", "127.0.0.1:53/tcp"], Status.ANSWER),
    (["truncated", "nxdomain"], ["127.0.0.1:53/udp", "127.0.0.1:53/tcp"], Status.NXDOMAIN),
    # TC over TCP is nonsense: that server is dropped, the next one asked over UDP.
    (["truncated", "truncated", "answer"], ["127.0.0.1:53/udp", "127.0.0.1:53/tcp", "127.0.0.2:5353/udp"],
     Status.ANSWER),
    (["truncated", "timeout", "answer"], ["127.0.0.1:53/udp", "127.0.0.1:53/tcp", "127.0.0.2:5353/udp"],
     Status.ANSWER),
    # Timeouts and SERVFAIL keep the server for round 2; two rounds, then a temporary failure.
    (["timeout", "timeout", "timeout", "timeout"],
     ["127.0.0.1:53/udp", "127.0.0.2:5353/udp", "127.0.0.1:53/udp", "127.0.0.2:5353/udp"], Status.TEMPFAIL),
    (["servfail", "servfail", "servfail", "answer"],
     ["127.0.0.1:53/udp", "127.0.0.2:5353/udp", "127.0.0.1:53/udp", "127.0.0.2:5353/udp"], Status.ANSWER),
    # REFUSED, FORMERR, NOTIMP and I/O errors drop the server for the rest of the question.
    (["refused", "timeout", "timeout"], ["127.0.0.1:53/udp", "127.0.0.2:5353/udp", "127.0.0.2:5353/udp"],
     Status.TEMPFAIL),
    (["formerr", "servfail", "answer"], ["127.0.0.1:53/udp", "127.0.0.2:5353/udp", "127.0.0.2:5353/udp"],
     Status.ANSWER),
    (["notimp", "unreachable"], ["127.0.0.1:53/udp", "127.0.0.2:5353/udp"], Status.TEMPFAIL),
    (["unreachable", "unreachable"], ["127.0.0.1:53/udp", "127.0.0.2:5353/udp"], Status.TEMPFAIL),
]


@pytest.mark.parametrize("script,sends,status", SCENARIOS, ids=["-".join(s[0]) for s in SCENARIOS])
def test_scenarios(script, sends, status):
    got, plan = run(script)
    assert got == sends
    assert plan.outcome.status is status
    assert (plan.outcome.message is None) == (status is Status.TEMPFAIL)


def test_attempts_bound_the_rounds():
    got, plan = run(["timeout"] * 3, servers=(NS1, NS2, NS3), attempts=1)
    assert got == ["127.0.0.1:53/udp", "127.0.0.2:5353/udp", "[::1]:53/udp"]
    assert plan.outcome.status is Status.TEMPFAIL
    assert plan.outcome.detail == ("example.test. MX: 127.0.0.1:53/udp timeout; 127.0.0.2:5353/udp timeout; "
                                   "[::1]:53/udp timeout")


def test_failure_detail_names_each_try():
    _, plan = run(["servfail", "refused", "unreachable"])
    assert plan.outcome.detail == ("example.test. MX: 127.0.0.1:53/udp SERVFAIL; 127.0.0.2:5353/udp REFUSED; "
                                   "127.0.0.1:53/udp Connection refused")


def test_no_nameserver_is_an_immediate_temporary_failure():
    plan = ExchangePlan(QUESTION, [], timeout=1, attempts=2, rng=random.Random(1))
    assert plan.next_send() is None
    assert plan.outcome.status is Status.TEMPFAIL
    assert "no nameserver" in plan.outcome.detail


def test_duplicate_servers_are_asked_once_per_round():
    got, _ = run(["timeout", "timeout"], servers=(NS1, NS1), attempts=2)
    assert got == ["127.0.0.1:53/udp", "127.0.0.1:53/udp"]


def test_answer_is_the_reply_message():
    _, plan = run(["answer"])
    message = plan.outcome.message
    assert message.answer[0].rdtype == dns.rdatatype.MX
    assert plan.outcome.detail == "example.test. MX: 127.0.0.1:53/udp ANSWER"


# -- matching replies to the query (spoofing) ----------------------------------------------


def _plan() -> tuple[ExchangePlan, bytes]:
    plan = ExchangePlan(QUESTION, [NS1, NS2], timeout=1, attempts=1, rng=random.Random(3))
    return plan, plan.next_send().wire


def _with_id(wire: bytes, new_id: int) -> bytes:
    return new_id.to_bytes(2, "big") + wire[2:]


def test_udp_reply_with_another_id_is_ignored():
    plan, wire = _plan()
    good = reply(wire)
    query_id = int.from_bytes(wire[:2], "big")
    assert plan.received(_with_id(good, (query_id + 1) & 0xFFFF)) is False
    assert plan.waiting
    assert plan.received(good) is True
    assert plan.outcome.status is Status.ANSWER


def test_udp_reply_to_another_question_is_ignored():
    plan, wire = _plan()
    query_id = int.from_bytes(wire[:2], "big")
    other = dns.message.make_response(dns.message.make_query("other.test", "MX", id=query_id))
    other.answer.append(dns.rrset.from_text("other.test.", 300, "IN", "MX", "10 evil.test."))
    assert plan.received(other.to_wire()) is False
    assert plan.waiting


@pytest.mark.parametrize("junk", [b"", b"\x00", b"x" * 11, b"\xff" * 40])
def test_udp_garbage_is_ignored(junk):
    plan, wire = _plan()
    assert plan.received(junk) is False
    # garbage with the right id and QR set, but undecodable, too
    assert plan.received(wire[:2] + b"\x80\x00" + b"\x00\x01" + b"\xff" * 20) is False
    assert plan.waiting


def test_a_query_echoed_back_is_not_a_reply():
    plan, wire = _plan()
    assert plan.received(wire) is False   # QR not set


def test_tcp_mismatch_drops_the_server():
    plan, wire = _plan()
    assert plan.received(reply(wire, tc=True))
    tcp = plan.next_send()
    assert tcp.tcp and tcp.server == NS1
    assert plan.received(b"\x00\x01garbage") is True
    udp = plan.next_send()
    assert (udp.server, udp.tcp) == (NS2, False)


def test_truncated_reply_that_does_not_parse_still_goes_to_tcp():
    plan, wire = _plan()
    cut = reply(wire, tc=True)[:14]
    cut = cut[:2] + (int.from_bytes(cut[2:4], "big") | dns.flags.TC).to_bytes(2, "big") + cut[4:]
    assert plan.received(cut) is True
    assert plan.next_send().tcp


def test_each_send_has_a_fresh_id():
    plan = ExchangePlan(QUESTION, [NS1, NS2], timeout=1, attempts=3, rng=random.Random(5))
    ids = []
    while (send := plan.next_send()) is not None:
        ids.append(int.from_bytes(send.wire[:2], "big"))
        plan.timed_out()
    assert len(ids) == 6 and len(set(ids)) == 6


def test_query_is_recursive_with_edns():
    plan, wire = _plan()
    query = dns.message.from_wire(wire)
    assert query.flags & dns.flags.RD
    assert query.edns == 0 and query.payload == 1232
    assert query.question[0].name.to_text() == "example.test."


# -- misuse and the table --------------------------------------------------------------------


def test_reporting_without_a_send_is_a_bug():
    plan = ExchangePlan(QUESTION, [NS1], timeout=1, attempts=1, rng=random.Random(1))
    with pytest.raises(RuntimeError):
        plan.timed_out()
    plan.next_send()
    with pytest.raises(RuntimeError):
        plan.next_send()


def test_every_waiting_state_handles_every_network_input():
    network = set(Input) - {Input.SEND, Input.EXHAUSTED}
    for state in WAITING:
        missing = {i for i in network if (state, i) not in TABLE}
        assert missing == ({Input.MALFORMED} if state is State.UDP_WAIT else set())


def test_trace_records_every_transition():
    records = []
    plan = ExchangePlan(QUESTION, [NS1], timeout=1, attempts=1, rng=random.Random(1), trace=records.append)
    send = plan.next_send()
    plan.received(reply(send.wire, tc=True))
    send = plan.next_send()
    plan.received(reply(send.wire))
    assert [(r["old"], r["input"], r["new"]) for r in records] == [
        ("CHOOSING", "SEND", "UDP_WAIT"), ("UDP_WAIT", "TRUNCATED", "TCP_READY"),
        ("TCP_READY", "SEND", "TCP_WAIT"), ("TCP_WAIT", "ANSWER", "DONE")]
    assert records[0]["machine"] == "smar-exchange" and records[0]["daemon"] == "smar"


def test_protocol_violation_is_impossible_from_outside():
    plan = ExchangePlan(QUESTION, [NS1], timeout=1, attempts=1, rng=random.Random(1))
    with pytest.raises(ProtocolViolation):
        plan.machine.fire(Input.ANSWER)


REACTIONS = ["answer", "nodata", "nxdomain", "servfail", "refused", "formerr", "truncated",
             "timeout", "unreachable", "garbage"]


@settings(deadline=None, max_examples=200)
@given(servers=st.integers(1, 3), attempts=st.integers(1, 3),
       reactions=st.lists(st.sampled_from(REACTIONS), min_size=0, max_size=40))
def test_any_sequence_ends_within_the_bound(servers, attempts, reactions):
    """Whatever the servers do, the plan ends after at most 2 sends per server and round."""
    plan = ExchangePlan(QUESTION, [NS1, NS2, NS3][:servers], timeout=1, attempts=attempts,
                        rng=random.Random(0))
    sends = 0
    for what in reactions + ["timeout"] * (2 * servers * attempts + 1):
        send = plan.next_send()
        if send is None:
            break
        sends += 1
        react(plan, send.wire, what)
        if what == "garbage" and plan.waiting:
            plan.timed_out()
    assert plan.next_send() is None
    assert sends <= 2 * servers * attempts
    assert plan.outcome.status in (Status.ANSWER, Status.NXDOMAIN, Status.TEMPFAIL)
