"""Access checks per stage (meta1/policy/access.py): the tags and their key orders, the
client resolution status, protectedrcpt: client lists (B22, B48), configuration data (B33,
B34)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, strategies as st

from meta1.maps.base import NOT_FOUND, MapResult, Status, found
from meta1.policy.access import (Check, ResolveStatus, client_in_list, client_resolution, client_steps,
                                 forward_names, parse_client_list, protected_steps, recipient_steps,
                                 sender_steps, smtpc_rcpt_conf, smtpc_session_conf, smtps_session_conf)
from meta1.policy.plan import run_steps
from meta1.policy.rhs import Action
from meta1.smar.plans import AddressResult, RecordsResult, Verdict


def run(steps, table: dict[str, object]):
    asked: list[str] = []

    def lookup(request):
        asked.append(request.key)
        value = table.get(request.key)
        if value is None:
            return NOT_FOUND
        return value if isinstance(value, MapResult) else found(value)
    return run_steps(steps, lookup), asked


def test_client_tags_in_order_and_the_first_entry_decides() -> None:
    check, asked = run(client_steps("access", "10.1.2.3", "host.example.org", ResolveStatus.OK),
                       {"cltname:.example.org": "RELAY", "cltresolve:ok": "REJECT"})
    assert asked == ["cltaddr:10.1.2.3", "cltaddr:10.1.2.", "cltaddr:10.1.", "cltaddr:10.",
                     "cltname:host.example.org", "cltname:.example.org"]
    assert check.entry.key == "cltname:.example.org" and check.rhs.action is Action.RELAY
    assert check.entry.tag == "cltname:"


def test_a_name_that_is_not_validated_is_not_looked_up() -> None:
    for status in (ResolveStatus.FORGED, ResolveStatus.FAIL, ResolveStatus.TEMP):
        check, asked = run(client_steps("access", "192.0.2.1", "host.example.org", status),
                           {f"cltresolve:{status.value}": "REJECT"})
        assert not any(k.startswith("cltname:") for k in asked)
        assert asked[-1] == f"cltresolve:{status.value}" and check.rhs.action is Action.REJECT


def test_failures_end_the_check() -> None:
    check, asked = run(client_steps("access", "192.0.2.1"), {"cltaddr:192.0.": MapResult(Status.TEMP, reason="down")})
    assert check.failed and "cltaddr:192.0.: TEMP down" in check.failure and len(asked) == 3
    check, _ = run(client_steps("access", "192.0.2.1"), {"cltaddr:192.0.2.1": "ACCEPT"})
    assert check.failed and "bad RHS" in check.failure and check.entry is None


def test_sender_and_recipient_keys() -> None:
    _, asked = run(sender_steps("access", ""), {})
    assert asked == ["from:<>"]
    check, asked = run(sender_steps("access", "Joe+List@Example.NET"), {"from:joe@": "OK"})
    assert asked == ["from:joe+list@example.net", "from:joe@example.net", "from:example.net", "from:.net",
                     "from:joe+list@", "from:joe@"]
    assert check.rhs.action is Action.OK
    _, asked = run(recipient_steps("access", "x@ours.test"), {})
    assert asked == ["to:x@ours.test", "to:ours.test", "to:.test", "to:x@"]
    assert run(recipient_steps(None, "x@ours.test"), {}) == (Check(), [])


def ptr(*names: str, verdict: Verdict = Verdict.OK) -> RecordsResult:
    return RecordsResult("x.in-addr.arpa", "PTR", verdict, "", "", names)


def addresses(*addrs: str, verdict: Verdict = Verdict.OK) -> AddressResult:
    return AddressResult("h", verdict, "", "", addrs)


@pytest.mark.parametrize("client, ptr_result, forward, status, name", [
    ("192.0.2.1", ptr("Mail.Example.org."), {"mail.example.org": addresses("192.0.2.1")}, ResolveStatus.OK,
     "mail.example.org"),
    ("192.0.2.1", ptr("a.example", "b.example"), {"a.example": addresses("192.0.2.9"),
                                                  "b.example": addresses("2001:db8::1", "192.0.2.1")},
     ResolveStatus.OK, "b.example"),
    ("2001:db8::1", ptr("v6.example"), {"v6.example": addresses("2001:DB8:0::1")}, ResolveStatus.OK, "v6.example"),
    ("::ffff:192.0.2.1", ptr("m.example"), {"m.example": addresses("192.0.2.1")}, ResolveStatus.OK, "m.example"),
    ("192.0.2.1", ptr("liar.example"), {"liar.example": addresses("198.51.100.1")}, ResolveStatus.FORGED, ""),
    ("192.0.2.1", ptr("liar.example"), {"liar.example": addresses(verdict=Verdict.PERMANENT)},
     ResolveStatus.FORGED, ""),
    ("192.0.2.1", ptr("slow.example"), {"slow.example": addresses(verdict=Verdict.TEMPORARY)},
     ResolveStatus.TEMP, ""),
    ("192.0.2.1", ptr("slow.example"), {}, ResolveStatus.TEMP, ""),
    ("192.0.2.1", ptr(verdict=Verdict.PERMANENT), {}, ResolveStatus.FAIL, ""),
    ("192.0.2.1", ptr(), {}, ResolveStatus.FAIL, ""),
    ("192.0.2.1", ptr(verdict=Verdict.TEMPORARY), {}, ResolveStatus.TEMP, ""),
])
def test_client_resolution(client, ptr_result, forward, status, name) -> None:
    assert client_resolution(client, ptr_result, forward) == (status, name)


def test_at_most_five_ptr_names_are_checked() -> None:
    assert len(forward_names(ptr(*[f"h{i}.example" for i in range(50)]))) == 5


@pytest.mark.parametrize("text, client, allowed", [
    ("192.0.2.10", "192.0.2.10", True),
    ("192.0.2.10", "192.0.2.100", False),
    ("10.1.", "10.1.200.3", True),
    ("10.1.", "10.10.0.1", False),
    ("010.001.", "10.1.0.1", True),
    ("198.51.100.0/24, 2001:db8::/32", "198.51.100.77", True),
    ("198.51.100.0/24, 2001:db8::/32", "2001:db8:ffff::1", True),
    ("198.51.100.0/24", "::ffff:198.51.100.1", True),
    ("2001:DB8:0::", "2001:db8::", True),            # B22: an IPv6 address
    ("2001:0db8:", "2001:db8:1::2", True),           # B22: a MeTA1 IPv6 prefix, leading zeros
    ("2001:db8:", "2001:db9::1", False),
    ("0.0.0.0/0", "2001:db8::1", False),             # an IPv4 network never matches IPv6
])
def test_client_lists(text, client, allowed) -> None:
    assert client_in_list(client, parse_client_list(text)) == allowed


@pytest.mark.parametrize("text", ["", "host.example", "10.1", "300.1.", "1.2.3.4.", "2001:xyz:", "10.0.0.0/33",
                                  "a:b:c:d:e:f:0:1:"])
def test_bad_client_lists(text) -> None:
    with pytest.raises(ValueError):
        parse_client_list(text)


@given(st.ip_addresses(), st.integers(0, 128))
def test_a_client_is_in_its_own_network(ip, prefix) -> None:
    # an IPv4-mapped IPv6 client is its IPv4 address, in IPv4 networks only
    assume(ip.version == 4 or ip.ipv4_mapped is None)
    prefix = min(prefix, ip.max_prefixlen)
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    assert client_in_list(str(ip), parse_client_list(str(network)))
    assert client_in_list(str(ip), parse_client_list(str(ip)))


def test_protected_recipient() -> None:
    table = {"protectedrcpt:boss@ours.test": "10.1. 2001:db8:"}
    assert run(protected_steps("access", "boss@ours.test", "10.1.2.3"), table)[0].allowed
    result, _ = run(protected_steps("access", "boss@ours.test", "10.2.2.3"), table)
    assert result.protected and not result.allowed and result.key == "protectedrcpt:boss@ours.test"
    result, _ = run(protected_steps("access", "other@ours.test", "10.2.2.3"), table)
    assert not result.protected and result.allowed
    result, _ = run(protected_steps("access", "boss@ours.test", "10.2.2.3"),
                    {"protectedrcpt:ours.test": MapResult(Status.TEMP)})
    assert result.failed and not result.protected


def test_configuration_data() -> None:
    text = "tls_requirements { cert_fps = { 00 }; } " * 100          # B34: 4000 octets, whole
    result, asked = run(smtpc_rcpt_conf("access", "u@big.example"), {"smtpc_rcpt_conf:.example": text})
    assert result.text == text and result.key == "smtpc_rcpt_conf:.example" and len(asked) == 3
    result, _ = run(smtpc_rcpt_conf("access", "u@x.example"), {"smtpc_rcpt_conf:u@": MapResult(Status.TEMP)})
    assert result.failed and result.text is None                       # B33: not "no configuration"
    result, asked = run(smtps_session_conf("access", "10.1.2.3", "h.example"), {})
    assert asked[-2:] == ["smtps_session_conf:h.example", "smtps_session_conf:.example"]
    assert result.text is None and not result.failed
    result, _ = run(smtpc_session_conf("access", "2001:db8::1"), {"smtpc_session_conf:2001:db8:": "x"})
    assert result.text == "x"
