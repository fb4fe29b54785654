"""DNS block lists (meta1/policy/dnsbl.py): RFC 5782 query names, listing codes (T49),
fail-open (T48), replies."""

from __future__ import annotations

import pytest

from meta1.policy.dnsbl import (AnswerStatus, DnsblAnswer, DnsblList, answer_from_records, dnsbl_verdict,
                                query_name)
from meta1.policy.rhs import Macros, RhsError
from meta1.smar.plans import RecordsResult, Verdict

ZEN = DnsblList("zen", "zen.example")
STRICT = DnsblList("strict", "strict.example", "550 5.7.1 ${client_addr} in ${dnsbl}", ("127.0.0.10", "127.0.1.0/24"))
MACROS = Macros(client_addr="192.0.2.99")


@pytest.mark.parametrize("client, name", [
    ("192.0.2.99", "99.2.0.192.zen.example"),                                  # RFC 5782 §2.1
    ("127.0.0.2", "2.0.0.127.zen.example"),
    ("::ffff:192.0.2.99", "99.2.0.192.zen.example"),
    ("2001:db8:1:2:3:4:567:89ab", "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.example"),  # §2.4
])
def test_query_name(client: str, name: str) -> None:
    assert query_name(client, "ZEN.example.") == name


@pytest.mark.parametrize("dnsbl, address, listed", [
    (ZEN, "127.0.0.2", True), (ZEN, "127.0.0.255", True), (ZEN, "127.0.0.1", False), (ZEN, "127.0.0.0", False),
    (ZEN, "127.255.255.254", False), (ZEN, "127.255.255.252", False), (ZEN, "10.0.0.1", False),
    (ZEN, "::1", False), (ZEN, "garbage", False),
    (STRICT, "127.0.0.10", True), (STRICT, "127.0.0.2", False), (STRICT, "127.0.1.1", True),
])
def test_listing_codes(dnsbl: DnsblList, address: str, listed: bool) -> None:
    assert dnsbl.lists(address) == listed


def test_the_first_list_that_lists_decides_and_failures_fail_open() -> None:
    verdict = dnsbl_verdict([ZEN, STRICT], {"zen": DnsblAnswer(AnswerStatus.FAILED, detail="timeout"),
                                            "strict": DnsblAnswer(AnswerStatus.ADDRESSES, ("127.0.0.10",))})
    assert verdict.listed_by is STRICT and verdict.codes == ("127.0.0.10",) and verdict.failed == ("zen: timeout",)
    assert verdict.reply(MACROS).lines == ("192.0.2.99 in strict.example",) and verdict.reply(MACROS).code == 550
    verdict = dnsbl_verdict([ZEN, STRICT], {"zen": DnsblAnswer(AnswerStatus.ADDRESSES, ("127.0.0.2",))})
    assert verdict.listed_by is ZEN
    reply = verdict.reply(MACROS)
    assert (reply.code, reply.status, reply.lines) == (554, "5.7.1", ("Client 192.0.2.99 is listed at zen.example",))
    verdict = dnsbl_verdict([ZEN], {})
    assert not verdict.listed and verdict.failed == ("zen: no answer",)


def test_error_codes_are_warned_about_not_listed() -> None:
    verdict = dnsbl_verdict([ZEN], {"zen": DnsblAnswer(AnswerStatus.ADDRESSES, ("127.255.255.254",))})
    assert not verdict.listed and "127.255.255.254" in verdict.warnings[0]


def test_reply_forms() -> None:
    listed = {"x": DnsblAnswer(AnswerStatus.ADDRESSES, ("127.0.0.2",))}
    assert dnsbl_verdict([DnsblList("x", "x.example", "REJECT")], listed).reply(MACROS).code == 554
    assert dnsbl_verdict([DnsblList("x", "x.example", "TEMPFAIL")], listed).reply(MACROS).code == 450
    assert dnsbl_verdict([DnsblList("x", "x.example", "451 4.7.1")], listed).reply(MACROS).lines == (
        "Client 192.0.2.99 is listed at x.example",)
    for bad in ("OK", "QUICK:REJECT", "250 fine", "550 ${nope}"):
        with pytest.raises(RhsError):
            DnsblList("x", "x.example", bad)
    with pytest.raises(ValueError):
        DnsblList("x", "x.example", codes=("not-an-address",))


def test_answers_from_smar_records() -> None:
    ok = RecordsResult("n", "A", Verdict.OK, "2.0.0", "", ("127.0.0.2",))
    assert answer_from_records(ok) == DnsblAnswer(AnswerStatus.ADDRESSES, ("127.0.0.2",))
    temp = RecordsResult("n", "A", Verdict.TEMPORARY, "4.4.3", "timeout")
    assert answer_from_records(temp).status is AnswerStatus.FAILED
    nx = RecordsResult("n", "A", Verdict.PERMANENT, "5.1.2", "NXDOMAIN")
    assert answer_from_records(nx).status is AnswerStatus.NOT_LISTED
