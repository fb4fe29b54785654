"""Local domains and the relay rule (meta1/policy/relay.py; B41, B42, reliability S8, T26,
T28): tables, and Hypothesis properties over any address form — an untrusted client never
gets mail routed to a domain that is not ours."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings, strategies as st

from conformance.scenarios import SCENARIOS, Maps
from meta1.maps.base import NOT_FOUND, found
from meta1.policy.access import NO_ENTRY
from meta1.policy.checks import connect_plan, mail_plan, rcpt_plan
from meta1.policy.relay import LocalDomains, RelayGrants, canonical_domain, relay_allowed
from meta1.policy.route import ESMTP, RoutingSettings
from meta1.policy.session import SessionChecks
from meta1.policy.settings import PolicySettings
from meta1.smtp.address import AddressError, parse_forward_path

LOCAL = LocalDomains("MX.Ours.Test.", ["ours.test", ".sub.ours.test", "[192.0.2.25]", "[IPv6:2001:db8::25]"])


@pytest.mark.parametrize("domain, local", [
    ("mx.ours.test", True), ("MX.OURS.TEST", True), ("mx.ours.test.", True), ("localhost", True),
    ("LocalHost", True), ("", True), ("ours.test", True), ("a.sub.ours.test", True), ("a.b.sub.ours.test", True),
    ("sub.ours.test", False), ("other.ours.test", False), ("ours.test.evil.example", False),
    ("evilours.test", False), ("[192.0.2.25]", True), ("[192.0.2.26]", False), ("[127.0.0.1]", False),
    ("[IPv6:2001:DB8:0::25]", True), ("[ipv6:2001:db8::26]", False), ("[2001:db8::25]", False),
    ("[ipv6:192.0.2.25]", False), ("[.sub.ours.test]", False),
])
def test_local_domains(domain: str, local: bool) -> None:
    assert (domain in LOCAL) == local


def test_canonical_domain() -> None:
    assert canonical_domain("Example.ORG.") == "example.org"
    assert canonical_domain("[IPv6:2001:0DB8::0001]") == "[ipv6:2001:db8::1]"
    assert canonical_domain("[010.0.0.1]") == "[010.0.0.1]"     # not an address: as written


@pytest.mark.parametrize("domain, rcpt_relay, grants, allowed", [
    ("remote.example", False, RelayGrants(), False),                     # B41
    ("remote.example", True, RelayGrants(), True),
    ("remote.example", False, RelayGrants(client=True), True),           # B42
    ("remote.example", False, RelayGrants(auth=True), True),
    ("remote.example", False, RelayGrants(tls=True), True),
    ("ours.test", False, RelayGrants(), True),
])
def test_relay_rule(domain, rcpt_relay, grants, allowed) -> None:
    assert relay_allowed(domain, LOCAL, rcpt_relay=rcpt_relay, grants=grants) == allowed
    assert RelayGrants(auth=True).authenticated and not RelayGrants(client=True).authenticated


def test_the_nmap_battery_accepts_none_of_its_16_tests() -> None:
    cases = tomllib.loads((SCENARIOS / "open-relay.toml").read_text())["case"]
    assert len(cases) >= 16
    assert [c["expect"][0] for c in cases[:16]] == ["5"] * 16       # the scenario checks each reply


# --- properties ---------------------------------------------------------------------------

SETTINGS = PolicySettings(hostname="mx.ours.test", local=LOCAL, routing=RoutingSettings(LOCAL))
LOCAL_NAMES = ["mx.ours.test", "ours.test", "a.sub.ours.test", "localhost", "[192.0.2.25]"]
REMOTE_NAMES = ["remote.example", "ours.test.evil.example", "sub.ours.test", "[192.0.2.26]",
                "[IPv6:2001:db8::26]", "other.example"]
ATOM = st.text("abcXYZ019.-_%!+=/&'*", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)
QUOTED = st.text("ab@%!:,<> .\"\\", min_size=1, max_size=12).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
DOMAIN = st.sampled_from(LOCAL_NAMES + REMOTE_NAMES + [d.upper() for d in LOCAL_NAMES])
ROUTE = st.lists(st.sampled_from(["@relay.test", "@ours.test", "@mx.ours.test", "@a.example"]),
                 max_size=3).map(lambda hops: ",".join(hops) + ":" if hops else "")


@st.composite
def forward_paths(draw) -> str:
    local = draw(ATOM | QUOTED)
    extra = draw(st.sampled_from(["", "", "@" + draw(DOMAIN)]))       # a@b@c forms too
    return f"<{draw(ROUTE)}{local}{extra}@{draw(DOMAIN)}>"


def lookup_nothing(request):
    return NOT_FOUND


@settings(max_examples=600, deadline=None)
@given(forward_paths())
def test_an_untrusted_client_never_gets_a_route_to_a_domain_not_ours(text: str) -> None:
    try:
        mailbox = parse_forward_path(text, smtputf8=False).mailbox
    except AddressError:
        return                                        # refused by the parser: nothing to relay
    assert mailbox is not None
    plan = rcpt_plan(SETTINGS, mailbox, "198.51.100.66", RelayGrants())
    while (request := plan.next_lookup()) is not None:
        plan.lookup_result(lookup_nothing(request))
    session = SessionChecks(client_addr="198.51.100.66", hostname="mx.ours.test")
    session.connect(NO_ENTRY)
    session.mail("a@example.net", NO_ENTRY)
    verdict = session.rcpt(plan.result)
    if verdict.accepted:
        assert mailbox.domain in LOCAL
        assert all(route.mailer != ESMTP for route in verdict.routes)
    else:
        assert verdict.reply.code == 550 and verdict.reply.status in ("5.7.1", "5.1.1")
    if mailbox.domain not in LOCAL:
        assert verdict.reply.status == "5.7.1" and verdict.routes == ()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REMOTE_NAMES), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_relaying_needs_a_grant_or_a_to_relay_entry(domain, client, auth, tls, rcpt_relay) -> None:
    mailbox = parse_forward_path(f"<u@{domain}>", smtputf8=False).mailbox
    settings_ = PolicySettings(hostname="mx.ours.test", local=LOCAL, routing=RoutingSettings(LOCAL),
                               access_map="access")
    table = {f"to:{canonical_domain(domain)}": "RELAY"} if rcpt_relay else {}
    if client:
        table["cltaddr:198.51.100.66"] = "RELAY"
    maps = Maps({"access": {k: found(v) for k, v in table.items()}}, {})
    session = SessionChecks(client_addr="198.51.100.66", hostname="mx.ours.test")
    session.connect(maps.run(connect_plan(settings_, "198.51.100.66")))
    if auth or tls:
        session.grant(auth=auth, tls=tls)
    session.mail("a@example.net", maps.run(mail_plan(settings_, "a@example.net")))
    verdict = session.rcpt(maps.run(rcpt_plan(settings_, mailbox, "198.51.100.66", session.grants)))
    assert verdict.accepted == (client or auth or tls or rcpt_relay)
