"""Routing through the real daemons (D-POL-21): smar resolves each recipient at RCPT —
aliases, local users, the mailertable — smtps queues one recipient per copy with its next
hop, and qmgr delivers each copy where smar said: lmtpd's socket for local users, a peer's
MX, ``[host]`` without an MX lookup, another LMTP socket from the mailertable.

The world (``delivery_support``): a DNS server on loopback serving the test zones, the
four daemons plus lmtpd, and a scripted SMTP peer on 127.0.0.1 that records what it got.
"""

from __future__ import annotations

import os

from delivery_support import dsn_reports, world  # noqa: F401  (fixture)
from mta import SMTPClient

MESSAGE = b"From: a@far.test\r\nSubject: routed\r\n\r\nbody\r\n"

ROUTING = """
  map users { type = inline; entries = { "alice x", "carol x", "dave x" }; }
  map al { type = inline; entries = {
      "team alice, bob@far.test, carol",
      "loop1 loop2", "loop2 loop1",
      "dave dave, archive",
      "archive bob@far.test",
      "gone r550-gone@far.test",
      "mixed alice, nobody",
      "file /var/mail/file-target" }; }
  map mt { type = inline; entries = {
      "literal.test esmtp:[127.0.0.1]",
      "direct.test esmtp:[relay.far.test]",
      "box.test lmtp:lmtpd/lmtpsock" }; }
  local_user_map { name = users; flags = { localpart, local_domains }; }
  aliases { name = al; flags = { localpart, local_domains }; }
  mailertable { name = mt; }
"""


def start(world):
    world.zone("far.test", "127.0.0.1")
    world.dns.add("relay.far.test", "A", "127.0.0.1")      # an A record only: no MX for it
    peer = world.peer()
    mta = world.start(smar=ROUTING, smtpc="LMTP_socket = lmtpd/lmtpsock;", extra="lmtpd { }\n")
    mta.spawn("lmtpd")
    mta.wait_log("qmgr", "connected to smar")       # the checks go to smar: until then 421
    return mta, peer


def maildir(mta, user: str) -> list[bytes]:
    directory = mta.queue / "mail" / user / "new"
    return [path.read_bytes() for path in sorted(directory.iterdir())] if directory.exists() else []


def test_aliases_local_users_and_the_mailertable_route_each_copy_b31_b47_b63(world) -> None:
    mta, peer = start(world)
    with SMTPClient(mta.port) as client:
        client.reply()
        client.command("EHLO client.test")
        assert client.command("MAIL FROM:<a@far.test>")[0] == 250
        replies = {rcpt: client.command(f"RCPT TO:<{rcpt}>")
                   for rcpt in ("team@mx.test", "nobody@mx.test", "loop1@mx.test", "file@mx.test",
                                "dave@mx.test", "x@literal.test", "y@direct.test", "carol@box.test")}
        assert client.command("DATA")[0] == 354
        client.send(MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert client.reply()[0] == 250
    assert {rcpt: (code, text.split()[0]) for rcpt, (code, text) in replies.items()} == {
        "team@mx.test": (250, "2.1.5"), "dave@mx.test": (250, "2.1.5"),
        "x@literal.test": (250, "2.1.5"), "y@direct.test": (250, "2.1.5"), "carol@box.test": (250, "2.1.5"),
        "nobody@mx.test": (550, "5.1.1"),          # B47: neither a user nor an alias
        "loop1@mx.test": (550, "5.4.6"),           # an alias loop, found at RCPT
        "file@mx.test": (550, "5.7.1")}            # an alias to a file, not allowed (D-POL-12)
    world.wait_empty()
    # Local users through lmtpd: alice and carol once each from the team (carol@box.test
    # went to the same socket by the mailertable), dave once for "dave: dave, archive".
    assert [len(maildir(mta, user)) for user in ("alice", "carol", "dave")] == [1, 2, 1]
    # The peer: bob once (team and dave's archive both reach him: one copy per address
    # and next hop), the [127.0.0.1] and [relay.far.test] routes without an MX record
    # for their domains.
    rcpts = sorted(r for t in peer.transactions for r in t.rcpts)
    assert rcpts == ["<bob@far.test>", "<x@literal.test>", "<y@direct.test>"]
    log = world.qmgr_log()
    assert "via literal.test" not in log and "to [127.0.0.1]" in log and "to [relay.far.test]" in log


def test_a_copy_that_fails_bounces_naming_the_alias_as_original_recipient(world) -> None:
    mta, peer = start(world)
    assert world.send("a@far.test", ["gone@mx.test"], MESSAGE) == {}
    [dsn] = peer.wait(1)
    assert dsn.mail == "<>" and dsn.rcpts == ["<a@far.test>"]
    [report] = dsn_reports(dsn.content)
    assert report["final-recipient"] == "rfc822; r550-gone@far.test"
    assert report["original-recipient"] == "rfc822; gone@mx.test"
    assert report["action"] == "failed" and report["status"] == "5.1.1"
    world.wait_empty()


def test_a_target_that_fails_at_rcpt_bounces_while_the_others_are_delivered(world) -> None:
    """"mixed: alice, nobody": RCPT is accepted for alice's sake; nobody is no user, so
    that copy is queued to be bounced (next hop ``error:``), with the alias as the
    original recipient."""
    mta, peer = start(world)
    assert world.send("a@far.test", ["mixed@mx.test"], MESSAGE) == {}
    [dsn] = peer.wait(1)
    [report] = dsn_reports(dsn.content)
    assert (report["final-recipient"], report["original-recipient"]) == ("rfc822; nobody@mx.test",
                                                                         "rfc822; mixed@mx.test")
    assert report["action"] == "failed" and report["status"] == "5.1.1"
    world.wait_empty()
    assert len(maildir(mta, "alice")) == 1


def test_a_queue_written_by_an_older_meta1_stops_qmgr_and_mailq_d_q_15(tmp_path) -> None:
    from mta import MTA
    mta = MTA(tmp_path)
    (mta.queue / "ibdb").mkdir(parents=True)
    old = mta.queue / "ibdb" / f"{1:016d}.ibdb"
    old.write_bytes(b"M1IBDB\0\1")
    process = mta.spawn("qmgr", wait=False)
    assert process.wait(timeout=30) == 78
    assert "written in format 1 by an earlier meta1" in mta.log("qmgr")
    assert old.exists() and not mta.quarantined()            # not damage: left as it is
    result = mta.meta1("mailq", "-f", str(mta.config))
    assert result.returncode == 1 and "format 1" in result.stderr
    assert os.path.getsize(old) == 8
