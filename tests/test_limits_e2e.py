"""qmgr's configuration map through the real daemons: incoming connection limits counted
by qmgr across smtps processes (icm:, icr:; B56), a failing map (421 4.3.0), a socket map
answered off qmgr's loop and cached, the outgoing limits per server address (ocm:,
B69; ocr:) seen at a peer that counts its connections, and smtpc's reply timer per server
address (smtpc_session_conf:, D-POL-28) seen at peers slower than it."""

from __future__ import annotations

import json
import threading
import time

from delivery_support import WAIT, ScriptedPeer, world  # noqa: F401 (fixture)
from mta import MTA, TRACE_FILE, SMTPClient, wait_for
from sockmap_support import SockmapServer, table_handler

MESSAGE = b"From: a@home.test\r\nSubject: limits\r\n\r\nbody\r\n"


def limits_mta(base, entries: list[str], *, smtps: str = "", smar: str = "", conf_map: str = "") -> MTA:
    """qmgr with ``config_map = conf``: an inline map of ``entries`` (or ``conf_map``, the
    map's own declaration), and smtps with ``smtps`` options."""
    listed = ", ".join(f'"{entry}"' for entry in entries)
    declaration = conf_map or f"map conf {{ type = inline; entries = {{ {listed} }}; }}"
    return MTA(base, extra_global=f"qmgr {{ config_map = conf; }}\nsmar {{ {declaration}\n{smar} }}\n",
               extra_smtps=smtps)


def greeting(mta: MTA, source: str | None = None) -> int:
    """Connect, read the greeting, leave politely: the greeting's code."""
    with SMTPClient(mta.port, source=source) as client:
        code, _ = client.reply()
        if code == 220:
            client.command("QUIT")
        return code


def admitted(mta: MTA) -> SMTPClient | None:
    """A new session that got its greeting (kept open), or None if it was refused."""
    client = SMTPClient(mta.port)
    if client.reply()[0] == 220:
        return client
    client.close()
    return None


def assert_refused(client: SMTPClient, status: str, text: str = "") -> None:
    code, reply = client.reply()
    assert (code, reply.split()[0]) == (421, status), reply
    assert text in reply
    assert client.sock.recv(1) == b""                      # and the connection is closed


def test_icm_refuses_the_third_concurrent_connection_across_smtps_processes_b56(tmp_path) -> None:
    with limits_mta(tmp_path, ["icm:127.0.0.1 2"], smtps="processes = 2;") as mta:
        wait_for(lambda: mta.log("smtps").count("connected to qmgr") >= 2, what="both smtps processes linked")
        first, second = SMTPClient(mta.port), SMTPClient(mta.port)
        assert first.reply()[0] == 220 and second.reply()[0] == 220
        with SMTPClient(mta.port) as third:
            assert_refused(third, "4.7.0", "too many connections from 127.0.0.1")
        assert greeting(mta, source="127.0.0.2") == 220       # counted per address
        assert first.command("QUIT")[0] == 221
        first.close()
        # The end reaches qmgr through whichever process served the first session; the
        # next connection may come through the other one: the slot frees once it has.
        with wait_for(lambda: admitted(mta), timeout=WAIT, what="the freed slot") as again:
            with SMTPClient(mta.port) as over:                # again and second: two open
                assert_refused(over, "4.7.0")
        second.close()
    assert "refused (2 open" in mta.log("qmgr")


def test_icr_refuses_new_connections_over_the_rate_with_smar_checking_the_client(tmp_path) -> None:
    """With an access map the connect check goes on to smar after the admission."""
    mta = limits_mta(tmp_path, ["icr:127.0.0.2 2"],
                     smar='nameserver = { 127.0.0.1 };\n'
                          'map acc { type = inline; entries = { "cltaddr:127.0.0.9 REJECT" }; }\n'
                          'access_map { name = acc; }')
    with mta:
        mta.spawn("smar")
        mta.wait_log("qmgr", "connected to smar")
        assert greeting(mta, source="127.0.0.2") == 220
        assert greeting(mta, source="127.0.0.2") == 220      # one after the other: the rate counts
        with SMTPClient(mta.port, source="127.0.0.2") as client:
            assert_refused(client, "4.7.0", "too many connections per minute")
        assert greeting(mta, source="127.0.0.3") == 220
        assert greeting(mta, source="127.0.0.9") == 554      # admitted, then smar's access map


def test_a_failing_configuration_map_refuses_for_now_never_admits(tmp_path) -> None:
    dead = tmp_path / "no-sockmap"
    with limits_mta(tmp_path, [], conf_map=f'map conf {{ type = socket; path = "{dead}"; timeout = 2s; }}') as mta:
        for _ in range(2):                  # failures are not cached: each connection asks
            with SMTPClient(mta.port) as client:
                assert_refused(client, "4.3.0")
    assert "configuration map" in mta.log("qmgr")


def test_a_socket_map_answers_off_the_loop_and_is_cached(tmp_path) -> None:
    path = tmp_path / "conf.sock"
    with SockmapServer(table_handler({"icm:127.0.0.1": "1"}), unix=str(path)) as server, \
            limits_mta(tmp_path, [], conf_map=f'map conf {{ type = socket; path = "{path}"; }}') as mta:
        with SMTPClient(mta.port) as first:
            assert first.reply()[0] == 220
            with SMTPClient(mta.port) as second:
                assert_refused(second, "4.7.0")
            assert first.command("QUIT")[0] == 221   # its end reaches qmgr before the next check
        asked = [key for _, key in server.requests]
        assert asked == ["icm:127.0.0.1", "icr:127.0.0.1", "icr:127.0.0.", "icr:127.0.", "icr:127."]
        assert greeting(mta) == 220         # the slot is free again, and nothing was asked again
        assert len(server.requests) == len(asked)


def held_peer_behind(world, entry: str, domains: list[str]) -> tuple[ScriptedPeer, threading.Event]:  # noqa: F811
    """meta1 with ``entry`` in qmgr's configuration map, sending ``domains`` to a peer on
    127.0.0.1 that holds its reply to each message until the event is set (its sessions
    pile up meanwhile). Without the entry up to eight deliveries would start at once."""
    for domain in domains:
        world.zone(domain, "127.0.0.1")
    hold = threading.Event()
    peer = world.peer(hold=hold)
    world.start(qmgr="min_queue_delay = 1h; config_map = conf; "
                     "smtpc { initial_connections = 8; max_connections = 8; }",
                smar=f'map conf {{ type = inline; entries = {{ "{entry}" }}; }}')
    return peer, hold


def test_ocm_limits_the_parallel_connections_to_a_server_b69(world) -> None:  # noqa: F811 (fixture)
    peer, hold = held_peer_behind(world, "ocm:127.0.0.1 2", ["far.test"])      # idle sessions stay open too
    try:
        for n in range(6):
            assert world.send("a@home.test", [f"r{n}@far.test"], MESSAGE) == {}
        # Every message is queued (each 250 came after qmgr handed it to the scheduler).
        wait_for(lambda: peer.open_now >= 2, timeout=WAIT, what="sessions held at the peer")
        assert peer.open_now == 2
    finally:
        hold.set()
    peer.wait(6)
    world.wait_empty()
    assert peer.max_open == 2


def recipients_through(world, step: str) -> set[str]:  # noqa: F811 (fixture)
    """The recipients qmgr's scheduler has moved by ``step`` (an input of the
    qmgr-recipient table), from the run's trace."""
    trace = world.mta.base / TRACE_FILE
    records = (json.loads(line) for line in trace.read_text().splitlines()) if trace.exists() else ()
    return {r["id"] for r in records if r.get("machine") == "qmgr-recipient" and r["input"] == step}


def test_ocr_limits_new_connections_per_minute_and_reuse_is_not_one(world) -> None:  # noqa: F811 (fixture)
    # Without the entry five deliveries would start at once, each on a new connection.
    peer, hold = held_peer_behind(world, "ocr:127.0.0.1 2", [f"d{n}.test" for n in range(5)])
    try:
        for n in range(5):
            assert world.send("a@home.test", [f"r{n}@d{n}.test"], MESSAGE) == {}
        # Every recipient has its route (and so its chance at a connection) ...
        wait_for(lambda: len(recipients_through(world, "ROUTED")) == 5, timeout=WAIT, what="five routes")
        wait_for(lambda: peer.open_now >= 2, timeout=WAIT, what="sessions held at the peer")
        # ... and two of them have one; the others wait in qmgr, never tried.
        assert len(recipients_through(world, "DISPATCH")) == 2 and peer.connections == 2
        waiting = [r for message in world.mta.mailq() for r in message["recipients"]]
        assert sorted((r["state"], r["attempts"]) for r in waiting) == [("queued", 0)] * 5
        # The log says why, once: the rate is what the others wait for.
        wait_for(lambda: "127.0.0.1: ocr: 2 new connections a minute used up" in world.qmgr_log(),
                 timeout=WAIT, what="the rate hold in qmgr's log")
        assert world.qmgr_log().count("ocr: 2 new connections a minute used up") == 1
    finally:
        hold.set()
    peer.wait(5)
    world.wait_empty()
    # The three that waited went over the two sessions smtpc kept open: no new connection.
    assert peer.connections == 2
    assert world.qmgr_log().count("(reusing a session)") == 3
    assert world.deferred() == []


def conf_world(world, entry: str) -> None:  # noqa: F811 (fixture)
    """meta1 on ``world`` with ``entry`` in qmgr's configuration map (smtpc's own
    IO_timeout is the world's 10 s)."""
    world.start(qmgr="min_queue_delay = 1h; config_map = conf;",
                smar=f'map conf {{ type = inline; entries = {{ "{entry}" }}; }}')


def test_smtpc_session_conf_gives_a_server_its_own_reply_timer_d_pol_28(world) -> None:  # noqa: F811
    """Two peers sit on their RCPT replies. The one on 127.0.0.1, whose entry says
    ``IO_timeout = 2s``, is given up on after 2 s: its recipient is deferred (451 4.4.2)
    long before smtpc's own 10 s. The one on [::1], without an entry, is still waited for
    when it answers after more than those 2 s, and its recipient is delivered."""
    world.zone("strict.test", "127.0.0.1")
    world.zone("patient.test", "::1")
    slow = threading.Event()
    strict, patient = world.peer(slow=slow), world.peer(host="::1", slow=slow)
    conf_world(world, "smtpc_session_conf:127.0.0.1 IO_timeout = 2s;")
    try:
        assert world.send("a@home.test", ["slow-1@strict.test", "slow-2@patient.test"], MESSAGE) == {}
        wait_for(lambda: strict.stalled_at, timeout=WAIT, what="the RCPT at 127.0.0.1")
        wait_for(world.deferred, timeout=WAIT, what="the recipient on 127.0.0.1 deferred")
        deferred_after = time.monotonic() - strict.stalled_at[0]
        assert [(a, code, status) for a, _, code, status in world.deferred()] == [("slow-1@strict.test", 451, "4.4.2")]
        assert 2 <= deferred_after < 10, deferred_after
        # [::1] has sat on its reply for longer than the entry's timer: still waited for.
        wait_for(lambda: patient.stalled_at and time.monotonic() - patient.stalled_at[0] > 2.5, timeout=WAIT,
                 what="[::1] slower than 2 s")
        assert patient.open_now == 1
    finally:
        slow.set()
    [delivered] = patient.wait(1)
    assert delivered.rcpts == ["<slow-2@patient.test>"]
    assert strict.transactions == [] and world.deferred()[0][0] == "slow-1@strict.test"
    assert "conversation timed out" in world.qmgr_log()


def test_a_broken_smtpc_session_conf_defers_the_route_and_keeps_the_mail_b33(world) -> None:  # noqa: F811
    """An entry that does not parse is a configuration failure: the route is deferred
    (451 4.3.0) with a log line naming the map, the key and the mistake; nothing is sent
    with timers the map did not give, and the message stays queued."""
    world.zone("far.test", "127.0.0.1")
    peer = world.peer()
    conf_world(world, "smtpc_session_conf:127.0. IO_timeout = soon;")
    assert world.send("a@home.test", ["r@far.test"], MESSAGE) == {}
    wait_for(world.deferred, timeout=WAIT, what="the deferral")
    assert [(a, code, status) for a, _, code, status in world.deferred()] == [("r@far.test", 451, "4.3.0")]
    assert ("far.test: route deferred: configuration map conf: smtpc_session_conf:127.0.: 1:14: IO_timeout: "
            "'soon' is not a time interval") in world.qmgr_log()
    assert peer.connections == 0 and world.mta.content_files()
