"""The path of a policy check: smtps → qmgr → smar and back (records 60/61).

With a configuration that gives smar something to check (here an access map), every
session's client, sender and recipients are checked by smar through qmgr; without smar a
check is a temporary failure, never "ok" (421 at connect, 451 at MAIL/RCPT). qmgr's relay
is also tested on its own: request ids mapped, verdicts back to the asking link,
answers when smar is gone."""

from __future__ import annotations

import socket

from meta1.ipc.records import PolicyCheck, PolicyVerdict, SessionConf
from meta1.qmgr.policy import UNAVAILABLE, UNAVAILABLE_AT_CONNECT, PolicyRelay
from mta import MTA, SMTPClient, wait_for

# With an access map the map decides who relays, loopback clients too (D-POL-19).
WITH_ACCESS_MAP = ('smar { nameserver = { 127.0.0.1:9 }; map acc { type = inline; entries = { "cltaddr:127. RELAY" }; }'
                   ' access_map { name = acc; } }')


def test_checks_go_to_smar_and_without_it_are_temporary_failures(tmp_path) -> None:
    with MTA(tmp_path, extra_global=WITH_ACCESS_MAP) as mta:      # qmgr and smtps, no smar
        with socket.create_connection(("127.0.0.1", mta.port), timeout=10) as sock:
            greeting = sock.recv(200)
        assert greeting.startswith(b"421 4.3.0 policy service not available")
        mta.spawn("smar")
        mta.wait_log("qmgr", "connected to smar")
        with SMTPClient(mta.port) as client:
            assert client.reply()[0] == 220
            for command in (b"EHLO c.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>", b"DATA"):
                client.send(command + b"\r\n")
                assert client.reply()[0] in (250, 354), command
            client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            assert client.reply()[0] == 250
        assert len(mta.mailq()) == 1
        mta.kill("smar")
        mta.wait_log("qmgr", "connection to smar lost")
        with socket.create_connection(("127.0.0.1", mta.port), timeout=10) as sock:
            assert sock.recv(200).startswith(b"421 4.3.0")


class FakeLink:
    def __init__(self):
        self.sent: list[object] = []
        self.closed = False
        self.ready = True

    def send(self, record) -> None:
        self.sent.append(record)


def check(request_id: int, stage: str) -> PolicyCheck:
    return PolicyCheck(request_id, "S0000000000000000100", stage, "192.0.2.1", 1234, "c.test", "a@b.test",
                       "c@d.test" if stage == "rcpt" else None, False, "")


def test_qmgr_relays_with_its_own_ids_and_answers_for_a_lost_smar() -> None:
    smar, first, second = FakeLink(), FakeLink(), FakeLink()
    relay = PolicyRelay(smar)
    relay.check(first, check(7, "mail"))
    relay.check(second, check(7, "rcpt"))
    relay.check(first, check(0, "end"))
    ids = [r.request_id for r in smar.sent[:2]]
    assert len(set(ids)) == 2 and smar.sent[2].stage == "end"
    relay.verdict(PolicyVerdict(ids[1], "refused", "550 5.7.1 Relaying denied"))
    assert second.sent == [PolicyVerdict(7, "refused", "550 5.7.1 Relaying denied")]
    relay.smar_lost()
    assert first.sent == [PolicyVerdict(7, "refused", UNAVAILABLE)]
    smar.ready = False
    relay.check(first, check(8, "connect"))
    assert first.sent[-1] == PolicyVerdict(8, "close", UNAVAILABLE_AT_CONNECT)
    relay.verdict(PolicyVerdict(12345, "ok", ""))        # not asked: logged, dropped


def test_qmgr_passes_the_verdict_on_whole() -> None:
    """What smar put in a verdict (routes, the session's options: D-POL-21, D-POL-26)
    reaches smtps as it was, with smtps's request id."""
    smar, smtps = FakeLink(), FakeLink()
    relay = PolicyRelay(smar)
    relay.check(smtps, check(9, "connect"))
    conf = SessionConf(flags_off=("pipelining",), max_rcpts_per_transaction=2)
    relay.verdict(PolicyVerdict(smar.sent[0].request_id, "ok", "", (), conf))
    assert smtps.sent == [PolicyVerdict(9, "ok", "", (), conf)]
