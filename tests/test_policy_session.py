"""The session check machine and SessionChecks (meta1/policy/states.py, session.py):
the table's shape, DISCARD, greylisting after the verdict, and the rules of
delay_checks (B43-B46) over every combination of entries: nothing is refused before RCPT
unless QUICK or without delay_checks, held rejections give way to to: OK/RELAY and relay
grants only, and a recipient's own rejection always applies."""

from __future__ import annotations

import itertools

import pytest

from meta1.machine import ProtocolViolation
from meta1.policy.access import NO_ENTRY, Check, Entry, Protection
from meta1.policy.checks import RecipientResult
from meta1.policy.dnsbl import DnsblList, DnsblVerdict
from meta1.policy.greylist import GreyDecision, State as GreyState
from meta1.policy.rhs import parse_rhs
from meta1.policy.route import LMTP, Resolution, Route
from meta1.policy.session import SessionChecks
from meta1.policy.states import HELD_STATES, SESSION_STATES, TABLE, TRANSACTION_STATES, Input, State


def entry(key: str, rhs: str) -> Check:
    return Check(Entry(key, parse_rhs(rhs)))


def local_rcpt(address: str = "x@ours.test", check: Check = NO_ENTRY) -> RecipientResult:
    return RecipientResult(address, check, Protection(), True, False,
                           Resolution(address, (Route(LMTP, "", address),)))


def test_every_state_is_reachable_from_new() -> None:
    reached, frontier = {State.NEW}, [State.NEW]
    while frontier:
        state = frontier.pop()
        for (s, _), row in TABLE.items():
            if s is state and row.next not in reached:
                reached.add(row.next)
                frontier.append(row.next)
    assert reached == set(State)


def test_transactions_end_where_they_began() -> None:
    began = {row.next: s for (s, i), row in TABLE.items() if i.name.startswith("SENDER") and row.next in TRANSACTION_STATES}
    for state in TRANSACTION_STATES:
        assert TABLE[(state, Input.END)].next is began[state]
        assert TABLE[(state, Input.RCPT)].next is state
        assert (TABLE[(state, Input.RCPT)].action == "check_recipient_held") == (state in HELD_STATES)
    for state in SESSION_STATES:
        assert TABLE[(state, Input.GRANT)].next is state and (state, Input.RCPT) not in TABLE


def test_commands_out_of_order_are_protocol_errors() -> None:
    session = SessionChecks(client_addr="192.0.2.1")
    with pytest.raises(ProtocolViolation):
        session.mail("a@b", NO_ENTRY)
    session.connect(NO_ENTRY)
    with pytest.raises(ProtocolViolation):
        session.rcpt(local_rcpt())
    with pytest.raises(ProtocolViolation):
        session.connect(NO_ENTRY)


def test_discard_at_each_stage() -> None:
    session = SessionChecks(client_addr="192.0.2.1")
    assert session.connect(entry("cltaddr:192.0.2.1", "DISCARD")) is None
    session.mail("a@b", NO_ENTRY)
    assert session.rcpt(local_rcpt()).discard
    session = SessionChecks(client_addr="192.0.2.1")
    session.connect(NO_ENTRY)
    session.mail("a@b", entry("from:a@b", "DISCARD"))
    assert session.rcpt(local_rcpt()).discard
    session.end()
    session.mail("c@d", NO_ENTRY)
    verdict = session.rcpt(local_rcpt())
    assert verdict.accepted and not verdict.discard
    verdict = session.rcpt(local_rcpt(check=entry("to:x@ours.test", "QUICK:DISCARD")))
    assert verdict.accepted and verdict.discard


def test_greylisting_comes_after_the_verdict() -> None:
    session = SessionChecks(client_addr="192.0.2.1", greylisting=True)
    session.connect(NO_ENTRY)
    session.mail("a@b", NO_ENTRY)
    verdict = session.rcpt(local_rcpt())
    assert verdict.accepted and verdict.greylist
    refused = verdict.with_greylisting(GreyDecision(False, GreyState.WAITING, "record_first_attempt", 300))
    assert refused.reply.code == 450 and "retry in 300s" in refused.reason
    passed = verdict.with_greylisting(GreyDecision(True, GreyState.PASSED, "pass_triplet"))
    assert passed.accepted and not passed.greylist and passed.routes == verdict.routes
    assert not session.rcpt(local_rcpt(check=entry("to:x@ours.test", "OK"))).greylist


def test_a_cltresolve_relay_entry_grants_nothing() -> None:
    session = SessionChecks(client_addr="192.0.2.1")
    session.connect(entry("cltresolve:ok", "RELAY"))
    assert not session.grants.any and session.client_accepted


def test_a_listing_is_held_with_its_reply() -> None:
    listing = DnsblVerdict(DnsblList("zen", "zen.example"), ("127.0.0.2",))
    session = SessionChecks(client_addr="192.0.2.1", delay_checks=True)
    session.connect(NO_ENTRY, listing)
    assert session.state is State.LISTED_HELD
    assert session.mail("a@b", NO_ENTRY) is None and session.state is State.TX_LISTED_HELD
    assert session.rcpt(local_rcpt()).reply.code == 554


# --- delay_checks as a property ----------------------------------------------------------

RHS = ["", "OK", "RELAY", "REJECT", "TEMPFAIL", "QUICK:REJECT", "QUICK:OK", "550 5.7.1 no", "DISCARD", "FAIL"]


def check_of(tag: str, rhs: str) -> Check:
    if rhs == "":
        return NO_ENTRY
    if rhs == "FAIL":
        return Check(failure=f"{tag}x: TEMP")
    return entry(f"{tag}x", rhs)


def test_delay_checks_over_every_combination() -> None:
    """Every combination of client, sender and recipient entry, delay_checks, a DNS
    listing and AUTH (8000 sessions): the rules of the module documentation hold."""
    for combination in itertools.product(RHS, RHS, RHS, (False, True), (False, True), (False, True)):
        one_session(*combination)


def one_session(client, sender, rcpt, delay, listed, auth) -> None:
    session = SessionChecks(client_addr="192.0.2.1", delay_checks=delay)
    listing = DnsblVerdict(DnsblList("zen", "zen.example"), ("127.0.0.2",)) if listed else DnsblVerdict()
    client_check = check_of("cltaddr:", client)
    if client_check.entry is not None or client_check.failed:
        listing = DnsblVerdict()                       # the lists are asked only without an entry
    listed = listing.listed
    greeting = session.connect(client_check, listing)
    client_rejects = client == "FAIL" or (client_check.rhs is not None and client_check.rhs.rejects)
    if greeting is not None:
        assert client_rejects and (not delay or client.startswith("QUICK:"))
        assert session.refused
        return
    assert not client_rejects or (delay and not client.startswith("QUICK:"))
    if auth:
        session.grant(auth=True)
    sender_check = check_of("from:", sender)
    sender_rejects = sender == "FAIL" or (sender_check.rhs is not None and sender_check.rhs.rejects)
    refusal = session.mail("a@b", sender_check)
    if refusal is not None:
        quick = sender.startswith("QUICK:")
        listed_now = listed and not delay and not (sender in ("OK", "RELAY", "QUICK:OK") or auth)
        assert (sender_rejects and (not delay or quick)) or listed_now
        return
    verdict = session.rcpt(local_rcpt(check=check_of("to:", rcpt)))
    rcpt_check = check_of("to:", rcpt)
    rcpt_accepts = rcpt_check.rhs is not None and rcpt_check.rhs.accepts
    if rcpt == "FAIL" or (rcpt_check.rhs is not None and rcpt_check.rhs.rejects):
        assert not verdict.accepted                   # a recipient's own rejection always applies
    elif rcpt_accepts or auth or client == "RELAY":
        assert verdict.accepted                       # to: OK/RELAY and relay grants override what is held
    else:
        held = (delay and (client_rejects or sender_rejects or listed and sender not in ("OK", "RELAY", "QUICK:OK")))
        assert verdict.accepted == (not held)
