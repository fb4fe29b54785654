"""The policy through the real daemons: smtps asks, qmgr passes on, smar decides over its
maps (inline and socket maps), its DNS (DNS lists on a loopback DNS server) and its
greylisting database. Clients come from other loopback addresses (127.0.0.2, …) that the
access map names, so that they are not the local programs D-POL-19 lets relay."""

from __future__ import annotations

import pytest

from dnsserver import DnsServer
from mta import MTA, SMTPClient, wait_for
from sockmap_support import SockmapServer

ORDINARY = "127.0.0.2"      # the access map says OK: accepted, no relay grant (D-POL-19:
                            # with an access map, loopback clients are ordinary clients)
REJECTED = "127.0.0.3"
LISTED = "127.0.0.4"        # on the DNS list


def config(dns, *, entries: list[str], smtps: str = "", smar: str = "", access_map: str = "acc") -> str:
    host, port = dns.address
    listed = ", ".join(f'"{e}"' for e in entries)
    return (f"smar {{ nameserver = {{ {host}:{port} }}; DNS_timeout = 2;\n"
            f"  map acc {{ type = inline; entries = {{ {listed} }}; }}\n"
            f"  access_map {{ name = {access_map}; }}\n{smar} }}\n")


@pytest.fixture
def policy_mta(tmp_path):
    made = []

    def make(entries: list[str], *, smtps_flags: str = "8bitmime", smar: str = "", zones=None,
             access_map: str = "acc") -> MTA:
        dns = DnsServer(zones or {}).__enter__()
        made.append(dns)
        mta = MTA(tmp_path, extra_global=config(dns, entries=entries, smar=smar, access_map=access_map),
                  smtps_flags=smtps_flags)
        made.append(mta)
        mta.start()
        mta.spawn("smar")
        mta.wait_log("qmgr", "connected to smar")
        return mta

    yield make
    for thing in reversed(made):
        thing.__exit__(None, None, None)


def session(mta: MTA, source: str) -> SMTPClient:
    client = SMTPClient(mta.port, source=source)
    return client


def test_relaying_is_decided_on_the_client_and_the_domain_b41_b42(policy_mta) -> None:
    mta = policy_mta([f"cltaddr:{ORDINARY} OK", "cltaddr:127.0.0.5 RELAY"])
    with session(mta, ORDINARY) as client:
        assert client.reply()[0] == 220
        client.command("EHLO c.test")
        assert client.command("MAIL FROM:<a@b.test>")[0] == 250
        code, text = client.command("RCPT TO:<x@far.test>")
        assert (code, text.split()[0]) == (550, "5.7.1")                  # B41: no relaying
        assert client.command("RCPT TO:<postmaster@mx.test>")[0] == 250   # a local domain is fine
        assert client.command("RCPT TO:<user%far.test@mx.test>")[0] == 550  # S8: the %-hack
    with session(mta, "127.0.0.5") as client:                               # B42: cltaddr RELAY
        client.reply()
        client.command("EHLO c.test")
        client.command("MAIL FROM:<a@b.test>")
        assert client.command("RCPT TO:<x@far.test>")[0] == 250


def test_a_rejected_client_gets_554_then_only_quit_b43(policy_mta) -> None:
    mta = policy_mta([f"cltaddr:{REJECTED} REJECT"])
    with session(mta, REJECTED) as client:
        code, _ = client.reply()
        assert code == 554
        assert client.command("EHLO c.test")[0] == 503
        assert client.command("QUIT")[0] == 221
    assert "refused" in mta.log("smtps")


def test_delay_checks_hold_the_rejection_until_rcpt_where_to_ok_overrides_it_b43_b46(policy_mta) -> None:
    mta = policy_mta([f"cltaddr:{REJECTED} REJECT", "to:postmaster@mx.test OK", "cltaddr:127.0.0.6 QUICK:REJECT"],
                     smtps_flags="8bitmime, delay_checks")
    with session(mta, REJECTED) as client:
        assert client.reply()[0] == 220
        client.command("EHLO c.test")
        assert client.command("MAIL FROM:<a@b.test>")[0] == 250
        assert client.command("RCPT TO:<someone@mx.test>")[0] == 550      # held until here
        assert client.command("RCPT TO:<postmaster@mx.test>")[0] == 250   # to: OK overrides
    with session(mta, "127.0.0.6") as client:
        assert client.reply()[0] == 554                                    # QUICK: at once (B46)


def test_a_sender_entry_refuses_mail(policy_mta) -> None:
    mta = policy_mta([f"cltaddr:{ORDINARY} OK", "from:spam@bad.test REJECT",
                      "from:bad.test 550 5.7.1 ${sender} is not welcome here"])
    with session(mta, ORDINARY) as client:
        client.reply()
        client.command("EHLO c.test")
        assert client.command("MAIL FROM:<spam@bad.test>")[0] == 550
        code, text = client.command("MAIL FROM:<other@bad.test>")
        assert code == 550 and text == "5.7.1 other@bad.test is not welcome here"


def test_unknown_local_users_get_550_5_1_1_b47(policy_mta) -> None:
    mta = policy_mta([], smar="map users { type = inline; entries = { \"alice alice\" }; }\n"
                              "local_user_map { name = users; flags = { localpart, local_domains }; }")
    with session(mta, "127.0.0.1") as client:
        client.reply()
        client.command("EHLO c.test")
        client.command("MAIL FROM:<a@b.test>")
        assert client.command("RCPT TO:<alice@mx.test>")[0] == 250
        code, text = client.command("RCPT TO:<bob@mx.test>")
        assert code == 550 and text.startswith("5.1.1")
        assert client.command("RCPT TO:<postmaster@mx.test>")[0] == 250   # always exists


def test_a_dns_listing_refuses_and_from_ok_overrides_it_b45(policy_mta) -> None:
    zones = {"4.0.0.127.bl.test": {"A": ["127.0.0.2"]}}
    mta = policy_mta(["from:friend@good.test OK"], zones=zones,
                     smar='dnsbl bl { domain = bl.test; reply = "554 5.7.1 listed at bl.test"; }')
    with session(mta, LISTED) as client:
        assert client.reply()[0] == 220
        client.command("EHLO c.test")
        code, text = client.command("MAIL FROM:<a@b.test>")
        assert code == 554 and "listed at bl.test" in text
        assert client.command("MAIL FROM:<friend@good.test>")[0] == 250    # from: OK clears it
    with session(mta, ORDINARY) as client:                                # not listed
        client.reply()
        client.command("EHLO c.test")
        assert client.command("MAIL FROM:<a@b.test>")[0] == 250


def test_greylisting_first_450_then_250_and_greyprint_greyrm_b49(policy_mta, tmp_path) -> None:
    mta = policy_mta([], smar="greylisting { min_delay = 0s; max_delay = 1h; }")

    def attempt() -> int:
        with session(mta, "127.0.0.7") as client:          # unnamed: not exempt from greylisting
            client.reply()
            client.command("EHLO c.test")
            client.command("MAIL FROM:<a@b.test>")
            return client.command("RCPT TO:<someone@mx.test>")[0]

    assert attempt() == 450
    assert attempt() == 250
    printed = mta.meta1("greyprint", "-f", str(mta.config))
    assert printed.returncode == 0 and "a@b.test" in printed.stdout and "someone@mx.test" in printed.stdout
    removed = mta.meta1("greyrm", "-f", str(mta.config), "--sender", "a@b.test")
    assert removed.returncode == 0
    assert "a@b.test" not in mta.meta1("greyprint", "-f", str(mta.config)).stdout
    assert attempt() == 450                                # forgotten: greylisted again


def test_a_map_that_fails_temporarily_gives_451_never_accept_b27(policy_mta, tmp_path) -> None:
    dead = tmp_path / "no-sockmap"
    mta = policy_mta([], smar=f'map users {{ type = socket; path = "{dead}"; timeout = 2s; }}\n'
                              "local_user_map { name = users; flags = { localpart, local_domains }; }")
    with session(mta, "127.0.0.1") as client:
        client.reply()
        client.command("EHLO c.test")
        client.command("MAIL FROM:<a@b.test>")
        code, text = client.command("RCPT TO:<alice@mx.test>")
        assert code == 451 and text.startswith("4.3.0")


def ehlo_keywords(client: SMTPClient) -> list[str]:
    code, text = client.command("EHLO c.test")
    assert code == 250
    return [line.split()[0] for line in text.splitlines()[1:]]


def test_a_client_gets_its_own_smtps_settings_from_smtps_session_conf_d_pol_25(policy_mta) -> None:
    """The entry's options hold for that client's sessions only: no PIPELINING, two
    recipients (the third gets 452 4.5.3). smtpc_*_conf: entries in the access map change
    nothing, even when their text would not parse: smtpc_session_conf: is read from qmgr's
    configuration map (D-POL-28), smtpc_rcpt_conf: not yet (D-POL-27)."""
    mta = policy_mta(["cltaddr:127. OK",
                      f"smtps_session_conf:{ORDINARY} flags = {{ dont_pipelining }}; max_rcpts_per_transaction = 2;",
                      "smtpc_session_conf:127. tls { broken", "smtpc_rcpt_conf:mx.test IO_timeout = never;"])
    with session(mta, ORDINARY) as client:
        assert client.reply()[0] == 220
        keywords = ehlo_keywords(client)
        assert "PIPELINING" not in keywords and "SIZE" in keywords
        # Pipelined anyway (RFC 2920 §3 says a client must not): answered in order.
        client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<one@mx.test>\r\nRCPT TO:<two@mx.test>\r\n"
                    b"RCPT TO:<three@mx.test>\r\n")
        replies = [client.reply() for _ in range(4)]
        assert [code for code, _ in replies] == [250, 250, 250, 452]
        assert replies[3][1].startswith("4.5.3")
        assert client.command("DATA")[0] == 354
        code, _ = client.command(b"Subject: x\r\n\r\nbody\r\n.")
        assert code == 250
    with session(mta, "127.0.0.4") as client:                              # no entry: the server's
        client.reply()
        assert "PIPELINING" in ehlo_keywords(client)
        client.command("MAIL FROM:<a@b.test>")
        assert [client.command(f"RCPT TO:<r{n}@mx.test>")[0] for n in range(3)] == [250, 250, 250]
    assert "session configuration from smtps_session_conf:127.0.0.2" in mta.log("smar")


def test_a_bad_smtps_session_conf_value_refuses_the_session_d_pol_25(policy_mta) -> None:
    mta = policy_mta(["cltaddr:127. OK", f"smtps_session_conf:{ORDINARY} max_sessions = 5;"])
    with session(mta, ORDINARY) as client:
        code, text = client.reply()
        assert code == 421 and text.startswith("4.3.0")
    log = mta.log("smar")
    assert f"map acc: smtps_session_conf:{ORDINARY}: 1:1: unknown option 'max_sessions'" in log


def test_a_socket_map_failing_for_smtps_session_conf_refuses_the_session_b33(policy_mta, tmp_path) -> None:
    """TEMP for the configuration is not "no configuration": 421 4.3.0, for that client;
    the check of the client itself went through."""
    def handler(mapname: str, key: str):
        return "TEMP directory down" if key == f"smtps_session_conf:{ORDINARY}" else "NOTFOUND"

    with SockmapServer(handler, unix=str(tmp_path / "smap.sock")) as server:
        mta = policy_mta([], smar=f'map sm {{ type = socket; path = "{server.path}"; }}', access_map="sm")
        with session(mta, ORDINARY) as client:
            code, text = client.reply()
            assert code == 421 and text.startswith("4.3.0")
        assert ("sm", f"cltaddr:{ORDINARY}") in server.requests
        with session(mta, "127.0.0.4") as client:
            assert client.reply()[0] == 220
    refusal = next(line for line in mta.log("smar").splitlines() if "session refused" in line)
    assert f"map sm: smtps_session_conf:{ORDINARY}: TEMP" in refusal and "directory down" in refusal


def meta1_lookup(tmp_path, smar: str, extra: str = ""):
    """``meta1 lookup -f FILE TAG KEY`` with ``smar`` in the smar section and ``extra``
    sections; the completed process of each call."""
    conf = tmp_path / "meta1.conf"
    conf.write_text(f'queue_directory = "{tmp_path / "queue"}";\n{extra}'
                    f'smar {{ nameserver = {{ 127.0.0.1 }};\n{smar} }}\n')
    from mta import MTA
    mta = MTA.__new__(MTA)                  # only its meta1() runner
    return lambda tag, key: MTA.meta1(mta, "lookup", "-f", str(conf), tag, key)


def test_meta1_lookup_prints_every_key_tried_b17_b18(tmp_path) -> None:
    """The teaching view of the lookup orders: cltaddr:10. matches 10.1.2.3 after the
    more specific keys; cltaddr:10 (without the delimiter) is never tried."""
    lookup = meta1_lookup(tmp_path, 'map acc { type = inline; entries = { "cltaddr:10. REJECT", "cltaddr:10 OK", '
                                    '"from:.example.com OK" }; }\naccess_map { name = acc; }')
    result = lookup("cltaddr:", "10.1.2.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["acc: cltaddr:10.1.2.3: not found", "acc: cltaddr:10.1.2.: not found",
                                          "acc: cltaddr:10.1.: not found", "acc: cltaddr:10.: found: REJECT"]
    result = lookup("from", "Someone@Mail.Example.com")
    assert result.stdout.splitlines()[-1] == "acc: from:.example.com: found: OK"
    missing = lookup("to:", "x@y.test")
    assert missing.returncode == 1 and missing.stdout.count("not found") == 4


def test_meta1_lookup_asks_qmgrs_configuration_map_for_smtpc_session_conf_d_pol_28(tmp_path) -> None:
    """A tag qmgr reads is looked up where qmgr reads it, as oct: is: the access map's entry
    of the same key is not the one that counts."""
    qmgrs = 'map conf { type = inline; entries = { "smtpc_session_conf:127.0. IO_timeout = 2s;" }; }\n'
    access = 'map acc { type = inline; entries = { "smtpc_session_conf:127.0.0.1 IO_timeout = 1h;" }; }\n'
    lookup = meta1_lookup(tmp_path, qmgrs + access + "access_map { name = acc; }",
                          extra="qmgr { config_map = conf; }\n")
    result = lookup("smtpc_session_conf:", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["conf: smtpc_session_conf:127.0.0.1: not found",
                                          "conf: smtpc_session_conf:127.0.0.: not found",
                                          "conf: smtpc_session_conf:127.0.: found: IO_timeout = 2s;",
                                          "  sets: io_timeout = 2"]


def test_meta1_lookup_shows_what_a_session_conf_entry_sets_or_its_mistake(tmp_path) -> None:
    """The entry as the daemon reads it: the options set, or the mistake with its position
    and exit 75 (the daemon answers 4xx for it, B33)."""
    lookup = meta1_lookup(tmp_path, 'map acc { type = inline; entries = { '
                                    '"smtps_session_conf:10. max_rcpts_per_transaction = 5; flags = { dont_pipelining };", '
                                    '"smtps_session_conf:10.9. timeout = soon;" }; }\naccess_map { name = acc; }')
    good = lookup("smtps_session_conf", "10.1.2.3")
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1] == "  sets: flags_off = pipelining, max_rcpts_per_transaction = 5"
    bad = lookup("smtps_session_conf", "10.9.8.7")
    assert bad.returncode == 75
    assert bad.stdout.splitlines()[-1].startswith("  invalid: 1:")
