"""The TTL cache (meta1.smar.cache) on a manual clock."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsserver import DnsServer
from meta1.smar.cache import TtlCache, negative_ttl
from meta1.smar.exchange import Outcome, Question, Status

S = 1_000_000  # microseconds
T0 = 2**40     # a time far from 0 (and past 2038)

ZONES = {
    "short.test": {"A": (30, ["127.0.0.1"])},
    "long.test": {"A": (10 * 86_400, ["127.0.0.2"])},
    "zero.test": {"A": (0, ["127.0.0.3"])},
    "chain.test": {"CNAME": ["long.test"]},
    "txtonly.test": {"TXT": ['"x"']},
}


def outcome(question: Question, server: DnsServer | None = None) -> Outcome:
    server = server or DnsServer(ZONES, negative_ttl=120)
    response = server.answer(dns.message.make_query(question.name, question.rdtype))
    status = Status.NXDOMAIN if response.rcode() == 3 else Status.ANSWER
    return Outcome(status, response)


def q(name: str, rdtype: str = "A") -> Question:
    return Question.make(name, rdtype)


def test_positive_answer_lives_for_its_ttl():
    cache = TtlCache()
    question = q("short.test")
    assert cache.put(question, outcome(question), T0)
    assert cache.get(question, T0 + 29 * S) is not None
    assert cache.get(question, T0 + 30 * S) is None
    assert len(cache) == 0


def test_ttl_is_capped():
    cache = TtlCache(max_ttl=3600)
    question = q("long.test")
    cache.put(question, outcome(question), T0)
    assert cache.get(question, T0 + 3599 * S) is not None
    assert cache.get(question, T0 + 3600 * S) is None


def test_cname_chain_lives_as_long_as_its_shortest_link():
    server = DnsServer(ZONES)
    server.add("chain.test", "CNAME", "long.test", ttl=10)
    question = q("chain.test")
    cache = TtlCache()
    cache.put(question, outcome(question, server), T0)
    assert cache.get(question, T0 + 9 * S) is not None
    assert cache.get(question, T0 + 10 * S) is None


@pytest.mark.parametrize("name,rdtype", [("nowhere.test", "A"), ("txtonly.test", "A")])
def test_negative_answers_live_for_the_soa_minimum(name, rdtype):
    question = q(name, rdtype)
    result = outcome(question)
    assert negative_ttl(result.message) == 120
    cache = TtlCache()
    assert cache.put(question, result, T0)
    assert cache.get(question, T0 + 119 * S).status is result.status
    assert cache.get(question, T0 + 120 * S) is None


def test_negative_ttl_is_capped_and_needs_an_soa():
    question = q("nowhere.test")
    result = outcome(question, DnsServer(ZONES, negative_ttl=86_400))
    cache = TtlCache(max_negative_ttl=600)
    cache.put(question, result, T0)
    assert cache.get(question, T0 + 600 * S) is None
    bare = dns.message.make_response(dns.message.make_query("nowhere.test", "A"))
    bare.set_rcode(3)
    assert not cache.put(question, Outcome(Status.NXDOMAIN, bare), T0)


def test_soa_ttl_below_minimum_wins():
    message = dns.message.make_response(dns.message.make_query("x.test", "A"))
    message.authority.append(dns.rrset.from_text(".", 5, "IN", "SOA", "ns. host. 1 2 3 4 600"))
    assert negative_ttl(message) == 5


def test_temporary_failures_and_ttl_zero_are_not_cached():
    cache = TtlCache()
    assert not cache.put(q("a.test"), Outcome(Status.TEMPFAIL, None, "timeout"), T0)
    question = q("zero.test")
    assert not cache.put(question, outcome(question), T0)
    assert len(cache) == 0


def test_least_recently_used_goes_first():
    cache = TtlCache(max_entries=2)
    a, b, c = q("short.test"), q("long.test"), q("zero.test", "MX")
    cache.put(a, outcome(a), T0)
    cache.put(b, outcome(b), T0)
    cache.get(a, T0)                      # a is now the most recently used
    cache.put(c, outcome(q("nowhere.test")), T0)
    assert cache.get(b, T0) is None and cache.get(a, T0) is not None and len(cache) == 2


def test_expire_drops_dead_entries():
    cache = TtlCache()
    a, b = q("short.test"), q("long.test")
    cache.put(a, outcome(a), T0)
    cache.put(b, outcome(b), T0)
    assert cache.expire(T0 + 31 * S) == 1
    assert len(cache) == 1


@settings(deadline=None, max_examples=100)
@given(ops=st.lists(st.tuples(st.sampled_from(["short.test", "long.test", "nowhere.test", "txtonly.test"]),
                              st.integers(0, 200)), max_size=60),
       size=st.integers(1, 3))
def test_bounded_and_never_stale(ops, size):
    cache = TtlCache(max_entries=size)
    now = T0
    outcomes = {name: outcome(q(name)) for name in {name for name, _ in ops}}
    stored: dict[str, int] = {}
    for name, step in ops:
        now += step * S
        got = cache.get(q(name), now)
        if got is not None:
            assert now < stored[name]
        elif cache.put(q(name), outcomes[name], now):
            stored[name] = now + {"short.test": 30, "long.test": 86_400}.get(name, 120) * S
        assert len(cache) <= size
