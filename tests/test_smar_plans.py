"""The lookup plans (meta1.smar.plans), without sockets.

The oracle is :meth:`dnsserver.DnsServer.answer` on an unstarted server: the same zones
and faults the socket tests use, answered in-process. A dropped query (``Fault.DROP``)
and SERVFAIL/REFUSED become a temporary failure, as the exchange plan would report them.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest

from dnsserver import DnsServer, Fault
from meta1.smar.exchange import Outcome, Question, Status
from meta1.smar.plans import (
    AddressPlan, LookupPlan, MxPlan, RecordsPlan, Verdict, ptr_plan, txt_plan,
)

BASE = {
    "example.test": {"MX": ["20 mx2.example.test", "10 mx1.example.test", "30 mx3.example.test"]},
    "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": ["127.0.0.2", "127.0.0.22"]},
    "mx3.example.test": {"AAAA": ["::3"]},
    "implicit.test": {"A": ["127.0.1.1"], "TXT": ['"v=spf1 -all"']},
    "bare.test": {"TXT": ['"no addresses here"']},
    "null.test": {"MX": ["0 ."]},
    "nullish.test": {"MX": ["0 .", "10 mx1.example.test"]},
    "alias.test": {"CNAME": ["example.test"]},
    "alias2.test": {"CNAME": ["alias.test"]},
    "loop1.test": {"CNAME": ["loop2.test"]},
    "loop2.test": {"CNAME": ["loop1.test"]},
    "dangling.test": {"CNAME": ["gone.test"]},
    "viacname.test": {"MX": ["10 mxalias.test"]},
    "mxalias.test": {"CNAME": ["mx2.example.test"]},
    "b60.test": {"MX": ["10 noaddr.test", "20 mx2.example.test"]},
    "noaddr.test": {"TXT": ['"exists"']},
    "lost.test": {"MX": ["10 missing1.test", "20 missing2.test"]},
    "twice.test": {"MX": ["30 mx1.example.test", "10 mx1.example.test", "20 mx2.example.test"]},
    "many.test": {"MX": [f"{i} mx1.example.test" if i == 0 else f"{i} m{i}.many.test" for i in range(15)]},
    "1.0.0.127.in-addr.arpa": {"CNAME": ["1.0/25.0.0.127.in-addr.arpa"]},
    "1.0/25.0.0.127.in-addr.arpa": {"PTR": ["localhost.test"]},
}


def outcome_of(response: dns.message.Message | None) -> Outcome:
    if response is None:
        return Outcome(Status.TEMPFAIL, None, "dropped")
    rcode = response.rcode()
    if rcode == dns.rcode.NOERROR:
        return Outcome(Status.ANSWER, response, "oracle")
    if rcode == dns.rcode.NXDOMAIN:
        return Outcome(Status.NXDOMAIN, response, "oracle NXDOMAIN")
    return Outcome(Status.TEMPFAIL, None, f"oracle {dns.rcode.to_text(rcode)}")


def run(plan: LookupPlan, server: DnsServer) -> list[list[str]]:
    """Drive ``plan`` to its end; the questions asked, batch by batch (one batch = in parallel)."""
    batches = []
    while not plan.done:
        batch = []
        while (question := plan.next_query()) is not None:
            batch.append(question)
        assert batch, "a plan that is not done must have a question outstanding"
        batches.append([str(q) for q in batch])
        for question in batch:
            query = dns.message.make_query(question.name, question.rdtype)
            plan.query_result(question, outcome_of(server.answer(query)))
    assert plan.next_query() is None
    return batches


@pytest.fixture
def server() -> DnsServer:
    return DnsServer(BASE)


def mx(server: DnsServer, domain: str, **kw):
    plan = MxPlan(domain, **kw)
    batches = run(plan, server)
    return plan.result, batches


# -- MX ------------------------------------------------------------------------------------


def test_exchangers_in_preference_order_with_their_addresses(server):
    result, batches = mx(server, "example.test")
    assert result.verdict is Verdict.OK and result.status == "2.0.0" and not result.implicit
    assert [(x.preference, x.name, x.addresses) for x in result.exchangers] == [
        (10, "mx1.example.test", ("::1", "127.0.0.1")),
        (20, "mx2.example.test", ("127.0.0.2", "127.0.0.22")),
        (30, "mx3.example.test", ("::3",)),
    ]
    # MX first, then every A/AAAA question at once.
    assert batches[0] == ["example.test. MX"]
    assert sorted(batches[1]) == sorted(f"mx{i}.example.test. {t}" for i in (1, 2, 3) for t in ("A", "AAAA"))
    assert len(batches) == 2


def test_ipv4_only(server):
    result, batches = mx(server, "example.test", want_ipv6=False)
    assert all(q.endswith(" A") or q.endswith(" MX") for b in batches for q in b)
    assert [x.addresses for x in result.exchangers] == [("127.0.0.1",), ("127.0.0.2", "127.0.0.22"), ()]
    assert result.usable == result.exchangers[:2]


def test_a_name_listed_twice_keeps_its_best_preference(server):
    result, _ = mx(server, "twice.test")
    assert [(x.preference, x.name) for x in result.exchangers] == [(10, "mx1.example.test"), (20, "mx2.example.test")]


def test_at_most_max_exchangers(server):
    result, batches = mx(server, "many.test", max_exchangers=4)
    assert [x.preference for x in result.exchangers] == [0, 1, 2, 3]
    assert len(batches[1]) == 8


def test_implicit_mx(server):
    result, batches = mx(server, "implicit.test")
    assert result.verdict is Verdict.OK and result.implicit
    assert [(x.preference, x.name, x.addresses) for x in result.exchangers] == [(0, "implicit.test", ("127.0.1.1",))]
    assert sorted(batches[1]) == ["implicit.test. A", "implicit.test. AAAA"]


def test_implicit_mx_without_address_is_permanent(server):
    result, _ = mx(server, "bare.test")
    assert (result.verdict, result.status, result.implicit) == (Verdict.PERMANENT, "5.4.4", True)
    assert "no MX and no address" in result.reason


def test_null_mx_is_permanent_without_address_lookups(server):
    result, batches = mx(server, "null.test")
    assert (result.verdict, result.status) == (Verdict.PERMANENT, "5.1.10")
    assert result.exchangers == () and "null MX" in result.reason
    assert batches == [["null.test. MX"]]


def test_a_root_exchanger_among_others_is_ignored(server):
    result, _ = mx(server, "nullish.test")
    assert result.verdict is Verdict.OK
    assert [x.name for x in result.exchangers] == ["mx1.example.test"]


def test_nxdomain_is_permanent(server):
    result, _ = mx(server, "nowhere.test")
    assert (result.verdict, result.status) == (Verdict.PERMANENT, "5.1.2")
    assert "not found" in result.reason


@pytest.mark.parametrize("fault", [Fault.SERVFAIL, Fault.DROP, Fault.REFUSED])
def test_mx_failure_is_temporary(server, fault):
    server.fault("example.test", fault, rdtype="MX")
    result, batches = mx(server, "example.test")
    assert (result.verdict, result.status) == (Verdict.TEMPORARY, "4.4.3")
    assert batches == [["example.test. MX"]]


def test_b60_one_mx_with_an_address_is_good_enough(server):
    result, _ = mx(server, "b60.test")
    assert result.verdict is Verdict.OK
    assert [(x.name, x.addresses) for x in result.exchangers] == [
        ("noaddr.test", ()), ("mx2.example.test", ("127.0.0.2", "127.0.0.22"))]
    assert result.exchangers[0].problem  # says why: no records
    assert [x.name for x in result.usable] == ["mx2.example.test"]


def test_b60_even_when_the_best_mx_fails_temporarily(server):
    server.fault("mx1.example.test", Fault.SERVFAIL)
    result, _ = mx(server, "example.test")
    assert result.verdict is Verdict.OK
    assert result.exchangers[0].addresses == () and "SERVFAIL" in result.exchangers[0].problem
    assert [x.name for x in result.usable] == ["mx2.example.test", "mx3.example.test"]


def test_no_exchanger_with_an_address(server):
    result, _ = mx(server, "lost.test")
    assert (result.verdict, result.status) == (Verdict.PERMANENT, "5.4.4")
    assert "no MX host has an address" in result.reason and "missing1.test" in result.reason


def test_no_address_and_a_temporary_failure_is_temporary(server):
    server.fault("missing2.test", Fault.DROP, rdtype="AAAA")
    result, _ = mx(server, "lost.test")
    assert (result.verdict, result.status) == (Verdict.TEMPORARY, "4.4.3")


def test_b61_only_mx_records_are_mx_entries(server):
    # Other records beside the MX records, in the answer and the additional section,
    # including an A record of the domain itself and an MX record of another name.
    server.add_extra("example.test", "answer", "example.test. 300 IN A 127.9.9.9")
    server.add_extra("example.test", "answer", "other.test. 300 IN MX 5 evil.test.")
    server.add_extra("example.test", "additional", "evil.test. 300 IN A 127.6.6.6")
    server.add_extra("example.test", "additional", "example.test. 300 IN AAAA ::9")
    result, _ = mx(server, "example.test")
    assert [x.name for x in result.exchangers] == ["mx1.example.test", "mx2.example.test", "mx3.example.test"]
    assert "127.9.9.9" not in str(result) and "127.6.6.6" not in str(result)


def test_addresses_from_the_additional_section_are_used(server):
    glued = DnsServer(BASE, additional=True)
    plan = MxPlan("example.test")
    batches = run(plan, glued)
    # mx1 has A and AAAA glue, mx2 only A (AAAA asked), mx3 only AAAA (A asked).
    assert sorted(batches[1]) == ["mx2.example.test. AAAA", "mx3.example.test. A"]
    assert plan.result.exchangers[0].addresses == ("::1", "127.0.0.1")


def test_glue_for_every_type_needs_no_second_round():
    zones = {"g.test": {"MX": ["10 mx.g.test"]}, "mx.g.test": {"A": ["127.0.0.5"], "AAAA": ["::5"]}}
    plan = MxPlan("g.test")
    assert run(plan, DnsServer(zones, additional=True)) == [["g.test. MX"]]
    assert plan.result.exchangers[0].addresses == ("::5", "127.0.0.5")


def test_domain_cname_chain_is_followed(server):
    result, batches = mx(server, "alias2.test")
    assert result.verdict is Verdict.OK and batches[0] == ["alias2.test. MX"]
    assert result.exchangers[0].name == "mx1.example.test"


def test_cname_chain_from_a_server_that_does_not_chase(server):
    plain = DnsServer(BASE, chase_cnames=False)
    plan = MxPlan("alias2.test")
    batches = run(plan, plain)
    assert batches[:3] == [["alias2.test. MX"], ["alias.test. MX"], ["example.test. MX"]]
    assert plan.result.verdict is Verdict.OK


def test_implicit_mx_through_a_cname_uses_the_canonical_name():
    zones = {"www.test": {"CNAME": ["host.test"]}, "host.test": {"A": ["127.0.2.2"]}}
    plan = MxPlan("www.test")
    run(plan, DnsServer(zones))
    assert plan.result.implicit and plan.result.exchangers[0].name == "host.test"
    assert plan.result.exchangers[0].addresses == ("127.0.2.2",)


def test_cname_loop_is_temporary(server):
    result, _ = mx(server, "loop1.test")
    assert (result.verdict, result.status) == (Verdict.TEMPORARY, "4.4.3")
    assert "CNAME" in result.reason


def test_too_long_cname_chain_is_temporary():
    zones = {f"c{i}.test": {"CNAME": [f"c{i + 1}.test"]} for i in range(12)}
    zones["c12.test"] = {"MX": ["10 mx.test"]}
    plan = MxPlan("c0.test", max_cnames=8)
    run(plan, DnsServer(zones, chase_cnames=False))
    assert plan.result.verdict is Verdict.TEMPORARY
    plan = MxPlan("c4.test", max_cnames=8)
    run(plan, DnsServer(zones, chase_cnames=False))
    assert plan.result.verdict is not Verdict.TEMPORARY


def test_dangling_cname_is_nxdomain(server):
    result, _ = mx(server, "dangling.test")
    assert (result.verdict, result.status) == (Verdict.PERMANENT, "5.1.2")


def test_exchanger_behind_a_cname(server):
    result, _ = mx(server, "viacname.test")
    assert result.exchangers[0].name == "mxalias.test"
    assert result.exchangers[0].addresses == ("127.0.0.2", "127.0.0.22")


@pytest.mark.parametrize("domain", ["", ".", "a..b", "x" * 64 + ".test", ("a" * 60 + ".") * 5 + "test"])
def test_invalid_domain_is_permanent_at_once(domain):
    plan = MxPlan(domain)
    assert plan.done and plan.next_query() is None
    assert (plan.result.verdict, plan.result.status) == (Verdict.PERMANENT, "5.1.2")


def test_a_question_the_plan_did_not_ask_is_refused(server):
    plan = MxPlan("example.test")
    plan.next_query()
    with pytest.raises(ValueError):
        plan.query_result(Question.make("other.test", "MX"), Outcome(Status.TEMPFAIL, None))


# -- addresses, PTR, TXT -------------------------------------------------------------------


@pytest.mark.parametrize("host,verdict,status,addresses", [
    ("mx1.example.test", Verdict.OK, "2.0.0", ("::1", "127.0.0.1")),
    ("mx2.example.test", Verdict.OK, "2.0.0", ("127.0.0.2", "127.0.0.22")),
    ("mxalias.test", Verdict.OK, "2.0.0", ("127.0.0.2", "127.0.0.22")),
    ("nowhere.test", Verdict.PERMANENT, "5.1.2", ()),
    ("noaddr.test", Verdict.PERMANENT, "5.4.4", ()),
    ("a..b", Verdict.PERMANENT, "5.1.2", ()),
])
def test_addresses(server, host, verdict, status, addresses):
    plan = AddressPlan(host)
    run(plan, server)
    assert (plan.result.verdict, plan.result.status, plan.result.addresses) == (verdict, status, addresses)


def test_addresses_one_family_failing_is_still_ok(server):
    server.fault("mx1.example.test", Fault.SERVFAIL, rdtype="AAAA")
    plan = AddressPlan("mx1.example.test")
    run(plan, server)
    assert plan.result.verdict is Verdict.OK and plan.result.addresses == ("127.0.0.1",)


def test_addresses_temporary(server):
    server.fault("mx2.example.test", Fault.SERVFAIL)
    plan = AddressPlan("mx2.example.test")
    run(plan, server)
    assert (plan.result.verdict, plan.result.status) == (Verdict.TEMPORARY, "4.4.3")


def test_ptr_through_a_classless_delegation_cname(server):
    plan = ptr_plan("127.0.0.1")
    run(plan, DnsServer(BASE, chase_cnames=False))
    assert plan.result.verdict is Verdict.OK and plan.result.records == ("localhost.test",)
    assert plan.result.name == "1.0.0.127.in-addr.arpa"


def test_ptr_of_an_ipv6_address_and_of_nonsense():
    plan = ptr_plan("::1")
    assert str(plan.next_query()).endswith(".ip6.arpa. PTR")
    with pytest.raises(ValueError):
        ptr_plan("not an address")


@pytest.mark.parametrize("name,verdict,records", [
    ("implicit.test", Verdict.OK, ("v=spf1 -all",)),
    ("mx1.example.test", Verdict.PERMANENT, ()),
    ("nowhere.test", Verdict.PERMANENT, ()),
])
def test_txt(server, name, verdict, records):
    plan = txt_plan(name)
    run(plan, server)
    assert (plan.result.verdict, plan.result.records) == (verdict, records)


def test_txt_strings_are_joined():
    plan = txt_plan("long.test")
    run(plan, DnsServer({"long.test": {"TXT": ['"part one, " "part two"']}}))
    assert plan.result.records == ("part one, part two",)


def test_records_temporary(server):
    server.fault("implicit.test", Fault.SERVFAIL)
    plan = RecordsPlan("implicit.test", "TXT")
    run(plan, server)
    assert (plan.result.verdict, plan.result.status) == (Verdict.TEMPORARY, "4.4.3")
