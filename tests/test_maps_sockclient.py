"""The socket-map client (meta1.maps.sockclient) on meta1's event loop against a real
sockmap server (tests/sockmap_support.py) on a UNIX socket and on 127.0.0.1.

Every test waits on a condition with a bound; the timeouts under test are short. A
condition on the server's side (its own threads) is polled between loop iterations of at
most 10 ms (:func:`until`): the loop has no event to wake it for those.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from meta1.eventloop import EventLoop
from meta1.maps.base import Status
from meta1.maps.sockclient import SocketMapClient
from sockmap_support import CLOSE, STALL, SockmapServer, frame, table_handler, until

WAIT = 10.0

ANSWERS = {
    "root": "OK root@domain.net",
    "missing": "NOTFOUND",
    "stop": "NOMORE",
    "temp": "TEMP database down",
    "slow": "TIMEOUT backend busy",
    "perm": "PERM no such table",
    "empty": "OK",
    "spaces": "OK a value  with spaces",
    "big": "OK " + "x" * 2000,                    # B34: long values are read whole
}


def answers(mapname: str, key: str):
    return ANSWERS.get(key, "NOTFOUND")


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture(params=["unix", "tcp"])
def transport(request, tmp_path):
    """Keyword arguments for a server and for a client to reach it."""
    def start(handler):
        if request.param == "unix":
            server = SockmapServer(handler, unix=str(tmp_path / "smap.sock"))
            return server, {"path": server.path}
        server = SockmapServer(handler, tcp=True)
        return server, {"address": server.address, "port": server.port}
    return start


def lookup_all(loop, client, keys, wait=WAIT):
    """Submit every key; wait for every answer; the results in key order."""
    results: dict[int, object] = {}
    for n, key in enumerate(keys):
        now = client.submit(key, lambda result, n=n: results.__setitem__(n, result))
        if now is not None:
            results[n] = now
    assert until(loop, lambda: len(results) == len(keys), wait), f"{len(results)} of {len(keys)} answered"
    return [results[n] for n in range(len(keys))]


def test_every_status(loop, transport) -> None:
    server, where = transport(answers)
    with server:
        client = SocketMapClient(loop, "aliases", mapname="aliasdb", **where)
        keys = list(ANSWERS) + ["nobody"]
        results = lookup_all(loop, client, keys)
        got = {key: (r.status, r.value, r.reason) for key, r in zip(keys, results)}
        assert got == {
            "root": (Status.FOUND, "root@domain.net", ""),                    # B24
            "missing": (Status.NOTFOUND, "", ""),                             # B25
            "stop": (Status.NOMORE, "", ""),                                  # B26
            "temp": (Status.TEMP, "", "database down"),                  # B27
            "slow": (Status.TEMP, "", "TIMEOUT backend busy"),
            "perm": (Status.PERM, "", "no such table"),                  # B28
            "empty": (Status.FOUND, "", ""),
            "spaces": (Status.FOUND, "a value  with spaces", ""),
            "big": (Status.FOUND, "x" * 2000, ""),
            "nobody": (Status.NOTFOUND, "", ""),
        }
        assert sorted(server.requests) == sorted(("aliasdb", key) for key in keys)    # B23: mapname sent
        assert client.connection_count <= client.max_connections
        client.close()
        assert server.errors == []


@pytest.mark.parametrize("raw", [
    b"x:OK,",                          # not a length
    b"2:OK;",                          # no comma
    b"2:OK,8:NOTFOUND,",               # a second, unsolicited reply
    b"7:MAYBE x,",                     # unknown status
    b"102401:",                        # longer than the bound
    b"4:OK \xff,",                     # not UTF-8
])
def test_b29_malformed_replies_are_temporary_and_drop_the_connection(loop, transport, raw) -> None:
    calls = []

    def handler(mapname, key):
        calls.append(key)
        return raw if key == "bad" else "OK fine"

    server, where = transport(handler)
    with server:
        client = SocketMapClient(loop, "m", timeout=2.0, **where)
        (result,) = lookup_all(loop, client, ["bad"])
        if raw == b"2:OK,8:NOTFOUND,":
            assert result.status is Status.FOUND     # the first reply answered; the rest ends it
        else:
            assert result.status is Status.TEMP and "malformed reply" in result.reason
        assert until(loop, lambda: server.open_now == 0 and client.connection_count == 0)
        (again,) = lookup_all(loop, client, ["good"])            # a fresh connection works
        assert (again.status, again.value) == (Status.FOUND, "fine")
        assert server.accepted == 2
        client.close()


def test_a_stalled_server_times_out_temporarily_and_loses_the_connection(loop, transport) -> None:
    server, where = transport(lambda m, k: STALL if k == "stall" else "OK quick")
    with server:
        client = SocketMapClient(loop, "m", timeout=0.3, **where)
        started = time.monotonic()
        (result,) = lookup_all(loop, client, ["stall"])
        assert time.monotonic() - started >= 0.29
        assert result.status is Status.TEMP and result.reason == "socket map m: no reply within the timeout"
        assert client.connection_count == 0
        (quick,) = lookup_all(loop, client, ["other"])
        assert quick.value == "quick"
        client.close()


def test_a_server_that_closes_without_answering_is_down_for_a_while(loop, transport) -> None:
    server, where = transport(lambda m, k: CLOSE if k == "die" else "OK alive")
    with server:
        client = SocketMapClient(loop, "m", reconnect_delays=(0.2,), **where)
        (result,) = lookup_all(loop, client, ["die"])
        assert result.status is Status.TEMP and "closed by the server" in result.reason
        now = client.submit("other", lambda r: pytest.fail("answered later"))
        assert now is not None and now.status is Status.TEMP and "unreachable" in now.reason   # fails fast
        assert until(loop, lambda: not client.down)
        (later,) = lookup_all(loop, client, ["other"])
        assert later.value == "alive"
        client.close()


def test_no_server_fails_at_once_then_fast(loop, tmp_path) -> None:
    client = SocketMapClient(loop, "m", path=str(tmp_path / "nobody.sock"), reconnect_delays=(30.0,))
    (result,) = lookup_all(loop, client, ["k"])
    assert result.status is Status.TEMP
    assert result.reason == f"socket map m: {tmp_path / 'nobody.sock'} unreachable (cannot connect: No such file or directory)"
    again = client.submit("k", lambda r: pytest.fail("answered later"))
    assert again is not None and again.status is Status.TEMP
    client.close()


def test_connection_refused_over_tcp(loop) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = SocketMapClient(loop, "m", address="127.0.0.1", port=port)
    (result,) = lookup_all(loop, client, ["k"])
    assert result.status is Status.TEMP and "Connection refused" in result.reason
    client.close()


def test_pool_limit_queues_lookups_and_serves_them_all(loop, transport) -> None:
    gate = threading.Event()

    def handler(mapname, key):
        gate.wait(WAIT)
        return f"OK value of {key}"

    server, where = transport(handler)
    with server:
        client = SocketMapClient(loop, "m", max_connections=3, timeout=WAIT, **where)
        results = {}
        for n in range(10):
            assert client.submit(f"k{n}", lambda r, n=n: results.__setitem__(n, r)) is None
        assert until(loop, lambda: len(server.requests) == 3)
        assert client.connection_count == 3 and len(client.queue) == 7
        gate.set()
        assert until(loop, lambda: len(results) == 10)
        assert [results[n].value for n in range(10)] == [f"value of k{n}" for n in range(10)]
        assert server.max_open == 3 and server.accepted == 3      # connections were reused
        client.close()


def test_a_lookup_waiting_for_a_connection_times_out_too(loop, transport) -> None:
    server, where = transport(lambda m, k: STALL)
    with server:
        client = SocketMapClient(loop, "m", max_connections=1, timeout=0.3, **where)
        first, second = lookup_all(loop, client, ["a", "b"])
        assert first.reason == "socket map m: no reply within the timeout"
        assert second.reason == "socket map m: no connection free within 0.3s"
        client.close()


def test_min_connections_are_opened_at_start_and_kept(loop, transport) -> None:
    server, where = transport(answers)
    with server:
        client = SocketMapClient(loop, "m", min_connections=2, max_connections=4, reconnect_delays=(0.05,), **where)
        client.start()
        assert until(loop, lambda: server.open_now == 2 and client.idle_count == 2)
        server.drop_connections()
        assert until(loop, lambda: server.accepted == 4 and client.idle_count == 2)
        (result,) = lookup_all(loop, client, ["root"])
        assert result.value == "root@domain.net" and server.accepted == 4
        client.close()
        assert until(loop, lambda: server.open_now == 0)


def test_connections_beyond_the_minimum_close_when_idle(loop, transport) -> None:
    server, where = transport(answers)
    with server:
        client = SocketMapClient(loop, "m", min_connections=1, max_connections=4, idle_timeout=0.1, **where)
        client.start()
        lookup_all(loop, client, ["root", "missing", "stop", "temp"])
        assert until(loop, lambda: client.connection_count == 1 and server.open_now == 1)
        client.close()


def test_a_lookup_lost_on_a_reused_connection_is_retried_once(loop, transport) -> None:
    seen: dict[str, int] = {}

    def handler(mapname, key):
        seen[key] = seen.get(key, 0) + 1
        if key.startswith("flaky") and seen[key] == 1:
            return CLOSE            # as if an idle connection were closed as we wrote
        return f"OK {key}"

    server, where = transport(handler)
    with server:
        client = SocketMapClient(loop, "m", max_connections=1, **where)
        first, flaky = lookup_all(loop, client, ["first", "flaky"])
        assert (first.value, flaky.status, flaky.value) == ("first", Status.FOUND, "flaky")
        assert [key for _, key in server.requests] == ["first", "flaky", "flaky"]
        client.close()
        fresh = SocketMapClient(loop, "m", **where)         # on a fresh connection: no retry
        (result,) = lookup_all(loop, fresh, ["flaky2"])
        assert result.status is Status.TEMP
        fresh.close()


def test_close_drops_pending_lookups_silently(loop, transport) -> None:
    server, where = transport(lambda m, k: STALL)
    with server:
        client = SocketMapClient(loop, "m", max_connections=1, **where)
        client.submit("a", lambda r: pytest.fail("called after close"))
        client.submit("b", lambda r: pytest.fail("called after close"))
        assert until(loop, lambda: len(server.requests) == 1)
        client.close()
        loop.run_once(0.05)
        assert client.submit("c", lambda r: None).status is Status.TEMP


def test_a_key_too_long_to_send_is_refused_at_once(loop, tmp_path) -> None:
    client = SocketMapClient(loop, "m", path=str(tmp_path / "s"))
    result = client.submit("x" * 200_000, lambda r: pytest.fail("called"))
    assert result.status is Status.PERM and "longer than" in result.reason
    assert client.connection_count == 0


def test_table_handler_helper_frames() -> None:
    assert frame("OK x") == b"4:OK x," and table_handler({"a": "b"})("m", "a") == "OK b"
