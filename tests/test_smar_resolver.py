"""The resolver (meta1.smar.resolver) on meta1's event loop against real DNS servers on loopback.

Every test waits on a condition (``loop.run_until``); timeouts are short (the resolver's
``timeout`` is what a test of timeouts waits for) and nothing sleeps.
"""

from __future__ import annotations

import random
import socket

import pytest

from dnsserver import DnsServer, Fault, dead_port
from meta1.config import load_text
from meta1.eventloop import EventLoop
from meta1.smar.cache import TtlCache
from meta1.smar.nameservers import resolver_settings
from meta1.smar.plans import Verdict
from meta1.smar.resolver import Resolver

ZONES = {
    "example.test": {"MX": ["20 mx2.example.test", "10 mx1.example.test"]},
    "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": ["127.0.0.2"]},
    "implicit.test": {"A": ["127.0.1.1"]},
    "null.test": {"MX": ["0 ."]},
    "alias.test": {"CNAME": ["example.test"]},
    "b60.test": {"MX": ["10 noaddr.test", "20 mx2.example.test"]},
    "noaddr.test": {"TXT": ['"exists"']},
    "big.test": {"A": [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(120)]},
    "txt.test": {"TXT": ['"hello " "world"']},
    "2.0.0.127.in-addr.arpa": {"PTR": ["mx2.example.test"]},
    "short.test": {"A": (30, ["127.0.0.5"])},
}

WAIT = 10.0  # seconds a test waits for its condition at most


@pytest.fixture
def server():
    with DnsServer(ZONES) as s:
        yield s
        assert s.errors == []


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


class Clock:
    """A manual microsecond clock for the cache."""

    def __init__(self) -> None:
        self.now = 2**41

    def __call__(self) -> int:
        return self.now


def make(loop, servers, **kw) -> Resolver:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("rng", random.Random(11))
    return Resolver(loop, servers, **kw)


def wait(loop, results, n=1):
    assert loop.run_until(lambda: len(results) >= n, WAIT), f"only {len(results)} of {n} results"
    return results


def mx(loop, resolver, domain):
    results = []
    resolver.resolve_mx(domain, results.append)
    return wait(loop, results)[0]


def test_mx_in_preference_order(loop, server):
    result = mx(loop, make(loop, [server.address]), "example.test")
    assert result.verdict is Verdict.OK
    assert [(x.preference, x.name, x.addresses) for x in result.exchangers] == [
        (10, "mx1.example.test", ("::1", "127.0.0.1")), (20, "mx2.example.test", ("127.0.0.2",))]


def test_implicit_null_nxdomain(loop, server):
    resolver = make(loop, [server.address])
    results = {}
    for domain in ("implicit.test", "null.test", "nowhere.test"):
        resolver.resolve_mx(domain, lambda r: results.__setitem__(r.domain, r))
    wait(loop, results, 3)
    assert results["implicit.test"].implicit and results["implicit.test"].usable[0].addresses == ("127.0.1.1",)
    assert (results["null.test"].verdict, results["null.test"].status) == (Verdict.PERMANENT, "5.1.10")
    assert (results["nowhere.test"].verdict, results["nowhere.test"].status) == (Verdict.PERMANENT, "5.1.2")
    # null MX: no address lookups, no connection to anything
    assert server.count("null.test") == 1 and len([q for q in server.log() if q.name == "."]) == 0


def test_first_nameserver_dead_falls_back_at_once(loop, server):
    # Nothing listens on the first port: ECONNREFUSED, not a timeout.
    resolver = make(loop, [dead_port(), server.address], timeout=30)
    result = mx(loop, resolver, "example.test")
    assert result.verdict is Verdict.OK


def test_first_nameserver_silent_falls_back_after_the_timeout(loop, server):
    with DnsServer(ZONES) as silent:
        silent.fault("*", Fault.DROP)
        resolver = make(loop, [silent.address, server.address], timeout=0.2)
        result = mx(loop, resolver, "example.test")
        assert result.verdict is Verdict.OK
        assert silent.count("example.test", "MX") == 1 and server.count("example.test", "MX") == 1


def test_servfail_everywhere_is_temporary(loop, server):
    server.fault("example.test", Fault.SERVFAIL)
    with DnsServer(ZONES) as other:
        other.fault("*", Fault.SERVFAIL)
        result = mx(loop, make(loop, [server.address, other.address], attempts=2), "example.test")
    assert (result.verdict, result.status) == (Verdict.TEMPORARY, "4.4.3")
    assert "SERVFAIL" in result.reason
    assert server.count("example.test", "MX") == 2   # two rounds


def test_timeout_everywhere_is_temporary(loop, server):
    server.fault("*", Fault.DROP)
    result = mx(loop, make(loop, [server.address], timeout=0.1, attempts=2), "example.test")
    assert (result.verdict, result.status) == (Verdict.TEMPORARY, "4.4.3")
    assert "timeout" in result.reason
    assert server.count("example.test", "MX", "udp") == 2


def test_refused_moves_on(loop, server):
    with DnsServer(ZONES) as refusing:
        refusing.fault("*", Fault.REFUSED)
        result = mx(loop, make(loop, [refusing.address, server.address]), "example.test")
        assert result.verdict is Verdict.OK
        # Each question goes to the refusing server once, then to the next one.
        def asked(s):
            return sorted((q.name, q.rdtype) for q in s.log())

        assert asked(refusing) == asked(server) and len(asked(server)) == len(set(asked(server)))


def test_truncation_retries_over_tcp(loop, server):
    server.fault("example.test", Fault.TRUNCATE, rdtype="MX")
    result = mx(loop, make(loop, [server.address]), "example.test")
    assert result.verdict is Verdict.OK and len(result.exchangers) == 2
    assert server.count("example.test", "MX", "udp") == 1 and server.count("example.test", "MX", "tcp") == 1


def test_an_answer_too_big_for_udp_comes_over_tcp(loop, server):
    results = []
    make(loop, [server.address]).resolve_addresses("big.test", results.append)
    result = wait(loop, results)[0]
    assert len(result.addresses) == 120
    assert server.count("big.test", "A", "tcp") == 1


def test_tcp_failure_moves_to_the_next_server(loop, server):
    with DnsServer(ZONES) as broken:
        broken.fault("example.test", Fault.TRUNCATE, rdtype="MX")
        broken.fault("example.test", Fault.DROP, rdtype="MX")   # applies to the TCP query
        resolver = make(loop, [broken.address, server.address], timeout=0.3)
        result = mx(loop, resolver, "example.test")
        assert result.verdict is Verdict.OK
        assert broken.count("example.test", "MX", "tcp") == 1


def test_cname(loop, server):
    result = mx(loop, make(loop, [server.address]), "alias.test")
    assert [x.name for x in result.exchangers] == ["mx1.example.test", "mx2.example.test"]


def test_b60(loop, server):
    result = mx(loop, make(loop, [server.address]), "b60.test")
    assert result.verdict is Verdict.OK and [x.name for x in result.usable] == ["mx2.example.test"]


def test_b61(loop, server):
    server.add_extra("example.test", "answer", "example.test. 300 IN A 127.9.9.9")
    server.add_extra("example.test", "additional", "evil.test. 300 IN A 127.6.6.6")
    result = mx(loop, make(loop, [server.address]), "example.test")
    assert [x.name for x in result.exchangers] == ["mx1.example.test", "mx2.example.test"]


def test_spoofed_replies_are_ignored(loop, server):
    server.fault("example.test", Fault.SPOOF, rdtype="MX")
    result = mx(loop, make(loop, [server.address], timeout=5), "example.test")
    assert result.verdict is Verdict.OK and len(result.exchangers) == 2
    assert server.count("example.test", "MX") == 1


def test_nothing_blocks_a_slow_answer_does_not_hold_up_others(loop, server):
    server.fault("example.test", Fault.DELAY, rdtype="MX", delay=2.0)
    resolver = make(loop, [server.address], timeout=5)
    order = []
    resolver.resolve_mx("example.test", lambda r: order.append(r.domain))
    resolver.resolve_mx("implicit.test", lambda r: order.append(r.domain))
    wait(loop, order, 1)
    assert order == ["implicit.test"]
    wait(loop, order, 2)
    assert order == ["implicit.test", "example.test"]


def test_a_delay_beyond_the_timeout_moves_to_the_next_server(loop, server):
    with DnsServer(ZONES) as slow:
        slow.fault("*", Fault.DELAY, delay=3.0)
        result = mx(loop, make(loop, [slow.address, server.address], timeout=0.2), "example.test")
        assert result.verdict is Verdict.OK


def test_cache_answers_until_the_ttl_expires(loop, server):
    clock = Clock()
    resolver = make(loop, [server.address], cache=TtlCache(), now_us=clock)
    results = []
    resolver.resolve_addresses("short.test", results.append)
    wait(loop, results, 1)
    asked = server.count("short.test")
    clock.now += 29 * 1_000_000
    resolver.resolve_addresses("short.test", results.append)
    wait(loop, results, 2)
    assert server.count("short.test") == asked
    assert results[1] == results[0]
    clock.now += 1_000_000
    resolver.resolve_addresses("short.test", results.append)
    wait(loop, results, 3)
    assert server.count("short.test", "A") == 2


def test_negative_answers_are_cached(loop, server):
    resolver = make(loop, [server.address])
    first = mx(loop, resolver, "nowhere.test")
    second = mx(loop, resolver, "nowhere.test")
    assert first == second and first.status == "5.1.2"
    assert server.count("nowhere.test") == 1


def test_temporary_failures_are_not_cached(loop, server):
    server.fault("example.test", Fault.SERVFAIL, rdtype="MX", count=1)
    resolver = make(loop, [server.address], attempts=1)
    assert mx(loop, resolver, "example.test").verdict is Verdict.TEMPORARY
    assert mx(loop, resolver, "example.test").verdict is Verdict.OK


def test_concurrent_lookups_share_one_query(loop, server):
    resolver = make(loop, [server.address])
    results = []
    for _ in range(5):
        resolver.resolve_mx("example.test", results.append)
    wait(loop, results, 5)
    assert server.count("example.test", "MX") == 1 and server.count("mx1.example.test", "A") == 1
    assert len({r for r in results}) == 1


def test_callback_never_runs_inside_the_call(loop, server):
    resolver = make(loop, [server.address])
    mx(loop, resolver, "example.test")          # now everything is cached
    results = []
    resolver.resolve_mx("example.test", results.append)
    assert results == []
    wait(loop, results)
    results2 = []
    resolver.resolve_mx("a..b", results2.append)  # invalid: done at once, still deferred
    assert results2 == []
    assert wait(loop, results2)[0].verdict is Verdict.PERMANENT


def test_cancel(loop, server):
    server.fault("example.test", Fault.DELAY, rdtype="MX", delay=0.3)
    resolver = make(loop, [server.address], timeout=5)
    cancelled, kept = [], []
    lookup = resolver.resolve_mx("example.test", cancelled.append)
    resolver.resolve_mx("implicit.test", kept.append)
    lookup.cancel()
    wait(loop, kept)
    assert resolver.exchanges_in_flight == 0      # the MX exchange was abandoned
    assert loop.run_until(lambda: False, 0.5) is False
    assert cancelled == []


def test_close_drops_everything(loop, server):
    server.fault("*", Fault.DROP)
    resolver = make(loop, [server.address], timeout=0.2)
    results = []
    resolver.resolve_mx("example.test", results.append)
    loop.run_until(lambda: server.count() >= 1, WAIT)
    resolver.close()
    assert resolver.exchanges_in_flight == 0
    loop.run_until(lambda: False, 0.4)
    assert results == []
    with pytest.raises(RuntimeError):
        resolver.resolve_mx("example.test", results.append)


def test_ptr_and_txt(loop, server):
    resolver = make(loop, [server.address])
    results = []
    resolver.resolve_ptr("127.0.0.2", results.append)
    resolver.resolve_txt("txt.test", results.append)
    wait(loop, results, 2)
    by_type = {r.rdtype: r for r in results}
    assert by_type["PTR"].records == ("mx2.example.test",)
    assert by_type["TXT"].records == ("hello world",)


def test_from_settings(loop, server):
    host, port = server.address
    smar = load_text(f"smar {{ nameserver = {{ {host}:{port} }}; DNS_timeout = 2; }}", "t.conf").smar
    resolver = Resolver.from_settings(loop, resolver_settings(smar), rng=random.Random(1))
    assert (resolver.nameservers, resolver.timeout) == (((host, port),), 2.0)
    assert mx(loop, resolver, "example.test").verdict is Verdict.OK


def test_no_nameserver_is_refused(loop):
    with pytest.raises(ValueError):
        Resolver(loop, [])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_nameserver(loop):
    with DnsServer(ZONES, host="::1") as server6:
        server6.fault("example.test", Fault.TRUNCATE, rdtype="MX")
        result = mx(loop, make(loop, [dead_port("::1"), server6.address]), "example.test")
        assert result.verdict is Verdict.OK
        assert server6.count("example.test", "MX", "tcp") == 1


def test_sockets_are_closed(loop, server):
    created = []

    def factory(family, kind):
        sock = socket.socket(family, kind)
        created.append(sock)
        return sock

    resolver = make(loop, [dead_port(), server.address], socket_factory=factory)
    server.fault("example.test", Fault.TRUNCATE, rdtype="MX")
    mx(loop, resolver, "example.test")
    mx(loop, resolver, "nowhere.test")
    kinds = {sock.type for sock in created}
    assert kinds == {socket.SOCK_DGRAM, socket.SOCK_STREAM}
    assert all(sock.fileno() == -1 for sock in created)
