"""Reliability of the delivery path, end to end: DNS outcomes (T47), the null sender
(T13), remote replies at every stage (T61 with smtp-sink's fault injection), MX fallback,
8-bit and SMTPUTF8 to peers without them (T12), and kill -9 of smtpc, smar and qmgr
(reliability.md §4.2).

Every test runs the real daemons (``tests/mta.py``) against a DNS server on loopback and
real receiving peers (``tests/delivery_support.py``), and checks what the peers got, the
DSNs, DEFEDB and the logs. Deferral tests set ``min_queue_delay`` to an hour so nothing
is retried while they look; retry tests set it to one second.
"""

from __future__ import annotations

import random
import threading
import time
import smtplib

import pytest

from delivery_support import WAIT, dsn_reports, world  # noqa: F401 (fixture)
from dnsserver import Fault
from mta import body_of, wait_for
from test_smtpc_interop import needs_sink

MESSAGE = b"From: sender@home.test\r\nTo: rcpt@far.test\r\nSubject: faults\r\n\r\nbody\r\n.dot line\r\n"
SENDER = "sender@home.test"


def home_and_far(world, far_address: str = "127.0.0.1") -> None:  # noqa: F811
    """home.test (the senders: DSNs go there) at ::1, far.test (recipients) at ``far_address``."""
    world.zone("home.test", "::1")
    world.zone("far.test", far_address)


def only_dsn(peer, count: int = 1):
    """The ``count`` transactions at ``peer``, each a DSN to SENDER from <>."""
    transactions = peer.wait(count)
    assert len(transactions) == count, transactions
    for transaction in transactions:
        assert transaction.mail.split()[0] == "<>" and transaction.rcpts == [f"<{SENDER}>"]
    return transactions


# --- T47: resolution outcomes -------------------------------------------------------------

def test_t47_servfail_and_timeout_defer_without_a_bounce(world) -> None:  # noqa: F811
    home = world.peer(host="::1")
    world.zone("home.test", "::1")
    world.dns.add("servfail.test", "MX", "10 mx.servfail.test")
    world.dns.add("silent.test", "MX", "10 mx.silent.test")
    world.dns.fault("servfail.test", Fault.SERVFAIL)
    world.dns.fault("silent.test", Fault.DROP)
    world.start(dns_timeout=1)
    world.send(SENDER, ["a@servfail.test", "b@silent.test"], MESSAGE)
    wait_for(lambda: len(world.deferred()) == 2, timeout=WAIT, what="both recipients in DEFEDB")
    assert world.deferred() == [("a@servfail.test", 1, 451, "4.4.3"), ("b@silent.test", 1, 451, "4.4.3")]
    assert world.dns.count("silent.test", "MX") >= 2          # asked again before giving up
    entries = world.mta.mailq()
    assert len(entries) == 1 and world.mta.content_files()
    assert "DSN" not in world.qmgr_log() and home.transactions == [] and home.connections == 0


def test_t47_nxdomain_null_mx_implicit_mx_and_cnames(world) -> None:  # noqa: F811
    """One message, five next hops: two bounce in one DSN, three are delivered; the null
    MX domain costs no address lookup and no connection."""
    peer = world.peer(host="127.0.0.1")
    home = world.peer(host="::1")
    world.zone("home.test", "::1")
    world.dns.add("nullmx.test", "MX", "0 .")
    world.dns.add("nullmx.test", "A", "127.0.0.1")            # must not be used
    world.dns.add("implicit.test", "A", "127.0.0.1")          # no MX: the domain itself
    world.dns.add("alias.test", "CNAME", "real.test")         # the domain is an alias
    world.zone("real.test", "127.0.0.1")
    world.dns.add("mxalias.test", "MX", "10 mxname.mxalias.test")
    world.dns.add("mxname.mxalias.test", "CNAME", "host.real.test")   # MX → CNAME (RFC 5321 §5.1 says don't; tolerated)
    world.dns.add("host.real.test", "A", "127.0.0.1")
    world.start()
    recipients = ["a@gone.test", "b@nullmx.test", "c@implicit.test", "d@alias.test", "e@mxalias.test"]
    world.send(SENDER, recipients, MESSAGE)
    [dsn] = only_dsn(home)
    reports = {r["final-recipient"]: r for r in dsn_reports(dsn.content)}
    assert set(reports) == {"rfc822; a@gone.test", "rfc822; b@nullmx.test"}
    assert reports["rfc822; a@gone.test"]["status"] == "5.1.2"
    assert reports["rfc822; b@nullmx.test"]["status"] == "5.1.10"
    assert all(r["action"] == "failed" for r in reports.values())
    delivered = peer.wait(3)
    assert sorted(r for t in delivered for r in t.rcpts) == ["<c@implicit.test>", "<d@alias.test>",
                                                            "<e@mxalias.test>"]
    assert all(body_of(t.content) == MESSAGE for t in delivered)
    world.wait_empty()
    assert len(peer.transactions) == 3 and len(home.transactions) == 1
    # Null MX: nothing beyond the MX question was asked, and nobody connected for it.
    assert {(q.name, q.rdtype) for q in world.dns.log() if q.name == "nullmx.test"} == {("nullmx.test", "MX")}
    assert all("nullmx" not in c for c in peer.commands + home.commands if c.startswith("RCPT"))


# --- T13: the null sender ----------------------------------------------------------------

@needs_sink
def test_t13_null_sender_refused_remotely_is_dropped_without_a_dsn(world) -> None:  # noqa: F811
    far = world.sink("-f", "RCPT")
    home = world.peer(host="::1")
    home_and_far(world)
    mta = world.start()
    assert world.send("", ["nobody@far.test"], MESSAGE) == {}        # accepted
    world.wait_qmgr("bounced: 500 5.3.0")                             # logged only
    world.wait_empty()
    assert " DSN " not in world.qmgr_log()
    assert mta.mailq() == [] and world.deferred() == []
    assert far.messages() == [] and home.connections == 0



@needs_sink
def test_t13_the_log_says_why_no_dsn_was_sent(world) -> None:  # noqa: F811
    world.sink("-f", "RCPT")
    home_and_far(world)
    world.start()
    world.send("", ["nobody@far.test"], MESSAGE)
    world.wait_qmgr("bounced: 500 5.3.0")
    world.wait_empty()
    assert "no DSN" in world.qmgr_log()

# --- T61: the remote reply at each stage -----------------------------------------------------

BOUNCED, DEFERRED = "bounced", "deferred"
STAGES = [
    (("-r", "MAIL"), DEFERRED, "450 4.3.0"),
    (("-f", "MAIL"), BOUNCED, "500 5.3.0"),
    (("-f", "RCPT"), BOUNCED, "500 5.3.0"),
    (("-f", "DATA"), BOUNCED, "500 5.3.0"),
    (("-r", "."), DEFERRED, "450 4.3.0"),
    (("-f", "."), BOUNCED, "500 5.3.0"),
    (("-Q", "."), DEFERRED, "421 4."),          # 421 after the dot, then the close
    (("-q", "RCPT"), DEFERRED, "451 4.4.2"),    # closed without a reply: local 4xx
]


@needs_sink
@pytest.mark.parametrize("options, outcome, reply", STAGES, ids=[" ".join(s[0]) for s in STAGES])
def test_t61_remote_reply_per_stage(world, options, outcome, reply) -> None:  # noqa: F811
    far = world.sink(*options)
    home = world.peer(host="::1")
    home_and_far(world)
    world.start()
    world.send(SENDER, ["x@far.test", "y@far.test"], MESSAGE)
    if outcome == DEFERRED:
        wait_for(lambda: len(world.deferred()) == 2, timeout=WAIT, what="both recipients in DEFEDB")
        code, status = int(reply[:3]), reply[4:]
        assert [(a, n) for a, n, _, _ in world.deferred()] == [("x@far.test", 1), ("y@far.test", 1)]
        assert all(c == code and s.startswith(status) for _, _, c, s in world.deferred()), world.deferred()
        assert len(world.mta.mailq()) == 1 and home.connections == 0
    else:
        [dsn] = only_dsn(home)
        reports = dsn_reports(dsn.content)
        assert [r["final-recipient"] for r in reports] == ["rfc822; x@far.test", "rfc822; y@far.test"]
        for report in reports:
            assert report["action"] == "failed" and report["status"] == reply[4:]
            assert report["diagnostic-code"].startswith(f"smtp; {reply}")
        world.wait_empty()
        assert world.deferred() == []
    # smtp-sink dumps a transaction when the dot arrives, before its reply to the dot.
    assert len(far.messages()) == (1 if options[1] == "." else 0)


def test_t61_per_recipient_mix_in_one_transaction(world) -> None:  # noqa: F811
    """250 / 450 / 550 to three RCPTs of one transaction: delivered, deferred, bounced."""
    far = world.peer(host="127.0.0.1")
    home = world.peer(host="::1")
    home_and_far(world)
    world.start()
    world.send(SENDER, ["ok@far.test", "r450-later@far.test", "r550-never@far.test"], MESSAGE)
    [delivered] = far.wait(1)
    assert delivered.rcpts == ["<ok@far.test>"] and body_of(delivered.content) == MESSAGE
    [dsn] = only_dsn(home)
    [report] = dsn_reports(dsn.content)
    assert report["final-recipient"] == "rfc822; r550-never@far.test" and report["status"] == "5.1.1"
    assert report["diagnostic-code"].startswith("smtp; 550 5.1.1")
    wait_for(lambda: world.deferred() == [("r450-later@far.test", 1, 450, "4.1.0")], timeout=WAIT,
             what="the 450 recipient in DEFEDB")
    assert [e["id"] for e in world.mta.mailq()] and len(far.transactions) == 1


def test_t61_dsn_for_a_remote_refusal_names_the_remote_mta(world) -> None:  # noqa: F811
    """RFC 3464 §2.3.5: a DSN about an attempt over SMTP names the MTA that answered."""
    world.peer(host="127.0.0.1")
    home = world.peer(host="::1")
    home_and_far(world)
    world.start()
    world.send(SENDER, ["r550-never@far.test"], MESSAGE)
    [dsn] = only_dsn(home)
    [report] = dsn_reports(dsn.content)
    assert report["remote-mta"] == "dns; mx.far.test"
    assert report["diagnostic-code"].startswith("smtp; 550 ")
    assert "mx.far.test said: 550 " in dsn.content.decode()


def test_a_delay_warning_is_sent_once_and_the_recipient_stays_queued(world) -> None:  # noqa: F811
    """qmgr ``delay_warning``: the sender of a recipient still deferred when the message is
    that old gets one "delayed" DSN (RFC 3464 Action: delayed, headers only, the remote MTA
    and the retry deadline named); later deferrals send no second one."""
    world.peer(host="127.0.0.1")
    home = world.peer(host="::1")
    home_and_far(world)
    world.start(qmgr="min_queue_delay = 1s; max_queue_delay = 1s; delay_warning = 1s;")
    world.send(SENDER, ["r450-later@far.test"], MESSAGE)
    [warning] = only_dsn(home)
    [report] = dsn_reports(warning.content)
    assert report["action"] == "delayed" and report["status"] == "4.1.0"
    assert report["remote-mta"] == "dns; mx.far.test" and "will-retry-until" in report
    assert b"text/rfc822-headers" in warning.content and MESSAGE not in warning.content
    wait_for(lambda: [n for _, n, _, _ in world.deferred()] in ([3], [4], [5]), timeout=WAIT,
             what="two more deferrals after the warning")
    assert len(home.transactions) == 1 and len(world.mta.mailq()) == 1
    assert world.mta.log("qmgr").count("delay warning") == 1


# --- MX fallback -----------------------------------------------------------------------------

FIRST_MX = {"dead": None, "disconnect at MAIL": ("-q", "MAIL"), "421 greeting": ("-Q", "CONNECT")}


@needs_sink
@pytest.mark.parametrize("first", list(FIRST_MX))
def test_mx_fallback_to_the_second_preference(world, first) -> None:  # noqa: F811
    """The first MX (::1) is dead, drops the connection, or says 421: the second gets it once."""
    primary = world.sink(*FIRST_MX[first], host="::1") if FIRST_MX[first] else None
    secondary = world.sink()
    world.zone("home.test", "127.0.0.1")
    world.dns.add("far.test", "MX", "10 mx1.far.test", "20 mx2.far.test")
    world.dns.add("mx1.far.test", "AAAA", "::1")
    world.dns.add("mx2.far.test", "A", "127.0.0.1")
    mta = world.start()
    world.send(SENDER, ["x@far.test"], MESSAGE)
    [(fields, content)] = secondary.wait(1)
    assert fields["X-Rcpt-Args"] == ["<x@far.test>"] and body_of(content) == MESSAGE
    world.wait_empty()
    assert len(secondary.messages()) == 1 and (primary is None or primary.messages() == [])
    assert f"relay=mx2.far.test [127.0.0.1]:{world.port} code=250" in mta.log("smtpc")
    if primary is None:
        assert f"connect to mx1.far.test [::1]:{world.port} failed" in mta.log("smtpc")


# --- T12: 8-bit and SMTPUTF8 to peers without them -------------------------------------------

EIGHT_BIT = "From: sender@home.test\r\nSubject: 8bit\r\n\r\ncaf\u00e9 \u20ac\r\n".encode()


@needs_sink
@pytest.mark.parametrize("case", ["8bitmime", "smtputf8"])
def test_t12_never_sent_raw_to_a_peer_without_the_extension(world, case) -> None:  # noqa: F811
    """(a) BODY=8BITMIME to smtp-sink -8: DSN 5.6.3. (c) SMTPUTF8 to smtp-sink (which never
    offers it): DSN 5.6.7. The far peer gets no transaction either way."""
    far = world.sink("-8") if case == "8bitmime" else world.sink()
    home = world.peer(host="::1", extensions=("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"))
    home_and_far(world)
    world.start()
    options = ["BODY=8BITMIME"] if case == "8bitmime" else ["BODY=8BITMIME", "SMTPUTF8"]
    world.send(SENDER, ["x@far.test"], EIGHT_BIT, mail_options=options)
    [dsn] = only_dsn(home)
    [report] = dsn_reports(dsn.content)
    status = "5.6.3" if case == "8bitmime" else "5.6.7"
    assert report["final-recipient"] == "rfc822; x@far.test" and report["status"] == status
    world.wait_empty()
    assert far.messages() == []
    assert not any(c.startswith("MAIL") and "x@far.test" in c for c in home.commands)


# --- kill -9 (reliability.md §4.2) -----------------------------------------------------------

@needs_sink
@pytest.mark.parametrize("window", ["before the dot", "after the dot (W3)"])
def test_smtpc_killed_mid_delivery_keeps_the_recipient_and_delivers_later(world, window) -> None:  # noqa: F811
    """smtpc dies while the server delays its reply to DATA (nothing sent yet) or to the dot
    (the server has the message: W3). The recipient stays queued; once smtpc is back the
    message arrives — at most one extra copy, and only in W3."""
    slow = world.sink(*(("-w", "30") if window == "before the dot" else ("-W", ".:30")))
    world.zone("home.test", "::1")
    world.zone("far.test", "127.0.0.1")
    mta = world.start(qmgr="min_queue_delay = 1s;")
    world.send(SENDER, ["x@far.test"], MESSAGE)
    if window == "before the dot":   # the dump file is opened with the transaction
        wait_for(lambda: any(slow.dump.iterdir()), timeout=WAIT, what="the transaction at the sink")
    else:
        slow.wait(1)                 # the whole message is dumped before the reply to the dot
    mta.kill("smtpc")
    world.wait_qmgr("deferred (attempt 1): 451 4.3.0 the delivery agent stopped")
    assert [e["id"] for e in mta.mailq()] and " DSN " not in world.qmgr_log()
    copies_before = len(slow.complete())
    slow.stop()
    fresh = world.sink()
    mta.spawn("smtpc")
    [(fields, content)] = fresh.wait(1)
    assert fields["X-Rcpt-Args"] == ["<x@far.test>"] and body_of(content) == MESSAGE
    world.wait_empty()
    assert copies_before == (0 if window == "before the dot" else 1)
    assert len(fresh.messages()) == 1


@needs_sink
def test_smar_killed_during_a_lookup_defers_and_delivers_when_back(world) -> None:  # noqa: F811
    """T51 / §4.2 "kill -9 SMAR mid-lookup": a temporary failure, never a bounce."""
    far = world.sink()
    home_and_far(world)
    world.dns.fault("far.test", Fault.DELAY, rdtype="MX", delay=30, count=1)
    mta = world.start(qmgr="min_queue_delay = 1s;")
    world.send(SENDER, ["x@far.test"], MESSAGE)
    assert world.dns.wait_for(lambda log: any(q.name == "far.test" for q in log), timeout=WAIT)
    mta.kill("smar")
    world.wait_qmgr("deferred (attempt 1): 451 4.4.3")
    assert "bounced" not in world.qmgr_log() and mta.mailq()
    mta.spawn("smar")
    [(fields, content)] = far.wait(1)
    assert fields["X-Rcpt-Args"] == ["<x@far.test>"] and body_of(content) == MESSAGE
    world.wait_empty()
    assert len(far.messages()) == 1 and " DSN " not in world.qmgr_log()


def _stream_sender(world, far, count: int, acked: dict[int, bool], flowing: threading.Event,  # noqa: F811
                   stop: threading.Event) -> None:
    """Send messages 0..count-1, each until smtps answers 250 (qmgr may be down: 451),
    while ``flowing`` is set, keeping at most two ahead of the sink so that the kills
    land while mail is in flight."""
    for seq in range(count):
        wait_for(lambda: stop.is_set() or (flowing.is_set() and len(_sequence_numbers(far)) >= seq - 2),
                 timeout=WAIT, what="the sink to catch up")
        message = MESSAGE.replace(b"Subject: faults", f"Subject: faults\r\nX-Test-Seq: {seq}".encode())
        while not stop.is_set():
            try:
                world.send(SENDER, ["x@far.test"], message)
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)             # qmgr is restarting: a retry back-off
                continue
            acked[seq] = True
            break


@needs_sink
def test_qmgr_killed_at_random_moments_loses_nothing(world) -> None:  # noqa: F811
    """kill -9 qmgr three times while a stream of messages flows; after each restart the
    queue is replayed. Every acknowledged message arrives at least once and at most twice
    (one kill can catch it in W1 or W2; the stream pauses after each restart until the
    queue is empty, so no message sees two kills)."""
    far = world.sink()
    home_and_far(world)
    mta = world.start(qmgr="min_queue_delay = 1s;")
    count, acked, flowing, stop = 15, {}, threading.Event(), threading.Event()
    flowing.set()
    sender = threading.Thread(target=_stream_sender, args=(world, far, count, acked, flowing, stop), daemon=True)
    sender.start()
    rng = random.Random(4)
    try:
        for kill in range(3):
            # Just after a message reached the sink: its done record may not be durable (W2).
            wait_for(lambda: len(far.complete()) >= 2 + 4 * kill, timeout=WAIT, what="more messages delivered")
            time.sleep(rng.uniform(0.0, 0.02))    # a random moment, not a condition
            mta.kill("qmgr")
            mta.spawn("qmgr")
            flowing.clear()
            wait_for(lambda: mta.mailq() == [], timeout=WAIT, what="the queue to drain after the restart")
            flowing.set()
        sender.join(WAIT)
        assert not sender.is_alive() and sorted(acked) == list(range(count))
        wait_for(lambda: _sequence_numbers(far) >= set(range(count)), timeout=WAIT,
                 what="every acknowledged message at the sink")
        wait_for(lambda: mta.mailq() == [], timeout=WAIT, what="an empty queue")
    finally:
        stop.set()
    copies = [_sequence_number(content) for _, content in far.messages()]
    assert all(1 <= copies.count(seq) <= 2 for seq in range(count)), sorted(copies)
    # Content files left are those of transactions smtps never acknowledged (qmgr died
    # before the commit): orphans that qmgr removes after ORPHAN_GRACE, never delivered.
    smtps_log = "".join(p.read_text() for p in world.base.glob("smtps.*.log"))
    for ta_id in mta.content_files():
        assert f"ta={ta_id} not accepted" in smtps_log, ta_id


def _sequence_number(content: bytes) -> int:
    return int(content.split(b"X-Test-Seq: ", 1)[1].split(b"\r\n", 1)[0])


def _sequence_numbers(far) -> set[int]:
    return {_sequence_number(content) for _, content in far.messages()}
