"""Session options per peer (meta1/policy/sessionconf.py): what an ``smtps_session_conf:``
value may set (D-POL-26), how it is checked (the configuration file's schema and
messages), how it is laid over the smtps section, and how the connect stage reads it
(B33: a failure is a 421, never "no configuration"; B34: the value whole); the same for
``smtpc_session_conf:``, smtpc's reply timers per server address (D-POL-28)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from meta1.config import load_text
from meta1.config.schema import SMTPC, SMTPC_SESSION_CONF, SMTPS_SESSION_CONF
from meta1.ipc.records import SessionConf
from meta1.maps.base import NOT_FOUND, MapResult, Status, found, run_plan
from meta1.policy.plan import run_steps
from meta1.policy.service import PolicyService, Question
from meta1.policy.sessionconf import (NUMBER_OPTIONS, SessionConfError, SmtpcSessionConf, parse_session_conf,
                                     parse_smtpc_session_conf, session_conf_steps, smtpc_session_conf_steps)
from meta1.smtps.session import Settings

ENTRY = "flags = { dont_pipelining, 8bitmime }; max_rcpts_per_transaction = 10; IO_timeout = 30s;"


def test_the_options_a_session_may_set_are_the_records_fields() -> None:
    """One list (schema.SMTPS_SESSION_OPTIONS) says what may be set; the record carries each."""
    assert {o.key for o in SMTPS_SESSION_CONF.options} == set(NUMBER_OPTIONS) | {"flags"}
    assert "delay_checks" not in SMTPS_SESSION_CONF.option("flags").type.known


def test_an_entry_sets_what_it_names_and_nothing_else() -> None:
    conf = parse_session_conf(ENTRY)
    assert conf == SessionConf(flags_on=("8bitmime",), flags_off=("pipelining",), io_timeout=30,
                               max_rcpts_per_transaction=10)
    assert parse_session_conf("") == SessionConf()
    assert parse_session_conf("max_message_size = 2M; # less for this client\n").max_message_size == 2 << 20


SMTPS_MISTAKES = [
    ("max_sessions = 3;", "1:1: unknown option 'max_sessions' in section 'smtps_session_conf'"),
    ("flags = { dont_delay_checks };", "1:11: flags: unknown flag 'dont_delay_checks'"),
    ("listen_socket { port = 26; }", "1:1: unknown section 'listen_socket'"),
    ("IO_timeout = 0;", "1:14: IO_timeout: 0s is out of range"),
    ("flags = { dont_pipelining };\nmax_rcpts_per_transaction = ten;", "2:29: max_rcpts_per_transaction:"),
    ("flags = { dont_pipelining ", "1:27: expected '}'"),
    ("IO_timeout = 30s; IO_timeout = 60s;", "1:19: option 'IO_timeout' is set twice"),
]
SMTPC_MISTAKES = [                  # smtpc_session_conf: (D-POL-28)
    ("IO_timeout = soon;", "1:14: IO_timeout: 'soon' is not a time interval"),
    ("IO_timeout = 2h;", "1:14: IO_timeout: 2h is out of range"),
    ("remote_port = 26;", "1:1: unknown option 'remote_port' in section 'smtpc_session_conf'"),
    ("max_rcpts_per_transaction = 10;", "1:1: unknown option 'max_rcpts_per_transaction'"),
    ("tls { }", "1:1: unknown section 'tls'"),
    ("IO_timeout = 2s", "expected ';'"),
]


@pytest.mark.parametrize("parse, text, message", [(parse_session_conf, *m) for m in SMTPS_MISTAKES] +
                         [(parse_smtpc_session_conf, *m) for m in SMTPC_MISTAKES])
def test_anything_else_is_an_error_with_its_position(parse, text: str, message: str) -> None:
    with pytest.raises(SessionConfError) as error:
        parse(text)
    assert message in str(error.value)


def test_every_mistake_is_listed() -> None:
    with pytest.raises(SessionConfError) as error:
        parse_session_conf("max_sessions = 3; user = root;")
    assert "max_sessions" in str(error.value) and "'user'" in str(error.value)


def smtps_section(text: str = ""):
    return load_text(f"smtps {{ {text} }}", "test.conf").smtps[None]


def test_the_entry_is_laid_over_the_smtps_section() -> None:
    """Flags the entry does not name keep the section's values (dsn off here), others
    are the entry's; SMTPUTF8 (on in the section) needs 8BITMIME (RFC 6531 §3.1), which
    only the entry turns on."""
    node = smtps_section("flags = { dont_dsn }; max_message_size = 1M; max_errors_per_session = 3;")
    server = Settings.from_config(node, "mx.test")
    assert (server.smtputf8, server.eightbitmime, server.pipelining, server.dsn) == (False, False, True, False)
    session = Settings.from_config(node, "mx.test", parse_session_conf(ENTRY))
    assert dataclasses.replace(server, pipelining=False, eightbitmime=True, smtputf8=True, max_rcpts=10,
                               io_timeout=30.0) == session
    assert Settings.from_config(node, "mx.test", SessionConf()) == server


# -- the connect stage: lookup and parse ----------------------------------------------------------

def lookups(table: dict[str, object]):
    def lookup(request):
        value = table.get(request.key)
        if value is None:
            return NOT_FOUND
        return value if isinstance(value, MapResult) else found(value)
    return lookup


def test_the_lookup_tries_the_address_then_the_validated_name() -> None:
    asked: list[str] = []

    def lookup(request):
        asked.append(request.key)
        return lookups({"smtps_session_conf:.example.org": ENTRY})(request)
    result = run_steps(session_conf_steps("acc", "10.1.2.3", "mx.example.org"), lookup)
    assert asked == ["smtps_session_conf:10.1.2.3", "smtps_session_conf:10.1.2.", "smtps_session_conf:10.1.",
                     "smtps_session_conf:10.", "smtps_session_conf:mx.example.org", "smtps_session_conf:.example.org"]
    assert result.key == "smtps_session_conf:.example.org" and result.conf == parse_session_conf(ENTRY)
    assert run_steps(session_conf_steps("acc", "10.1.2.3"), lookups({})).conf is None
    assert run_steps(session_conf_steps(None, "10.1.2.3"), lookups({ENTRY: ENTRY})).conf is None


def test_a_failed_lookup_or_a_bad_value_is_a_failure_naming_map_and_key_b33() -> None:
    temp = run_steps(session_conf_steps("acc", "10.1.2.3"),
                     lookups({"smtps_session_conf:10.1.": MapResult(Status.TEMP, reason="ldap down")}))
    assert temp.failed and temp.conf is None
    assert temp.failure == "map acc: smtps_session_conf:10.1.: TEMP ldap down"
    bad = run_steps(session_conf_steps("acc", "10.1.2.3"), lookups({"smtps_session_conf:10.": "max_sessions = 1;"}))
    assert bad.failed and bad.failure.startswith("map acc: smtps_session_conf:10.: 1:1: unknown option")


def test_a_long_value_is_read_whole_b34() -> None:
    text = "max_junk_commands = 5; /* " + "x" * 5000 + " */ max_rcpts_per_transaction = 3;"
    result = run_steps(session_conf_steps("acc", "10.1.2.3"), lookups({"smtps_session_conf:10.1.2.3": text}))
    assert (result.conf.max_junk_commands, result.conf.max_rcpts_per_transaction) == (5, 3)


class DictMaps:
    """A map driver over a dictionary, answering at once."""

    def __init__(self, table: dict[str, object]):
        self.table = table
        self.asked: list[str] = []

    def run(self, plan, on_done) -> bool:
        lookup = lookups(self.table)

        def recorded(request):
            self.asked.append(request.key)
            return lookup(request)
        run_plan(plan, recorded)
        return True


def service(table: dict[str, object], smtps_flags: str = "8bitmime") -> tuple[PolicyService, DictMaps]:
    config = load_text(f"smtps {{ flags = {{ {smtps_flags} }}; }}\n"
                       "smar { map acc { type = inline; entries = { \"x y\" }; } access_map { name = acc; } }",
                       "test.conf")
    maps = DictMaps(table)
    return PolicyService(config, "mx.test", driver=maps), maps


def ask(policy: PolicyService, stage: str = "connect", client: str = "192.0.2.1", session: str = "S1"):
    answers: list = []
    policy.ask(Question(session, stage, client, sender="a@b.test"),
               lambda outcome, reply, routes=(), session_conf=None: answers.append((outcome, reply, session_conf)))
    (answer,) = answers
    return answer


def test_the_connect_verdict_carries_the_parsed_entry() -> None:
    policy, _ = service({"smtps_session_conf:192.0.2.": ENTRY, "cltaddr:192.0.2.9": "DISCARD"})
    assert ask(policy) == ("ok", None, parse_session_conf(ENTRY))
    assert ask(policy, client="192.0.2.9", session="S2") == ("discard", None, parse_session_conf(ENTRY))
    assert ask(policy, client="198.51.100.1", session="S3") == ("ok", None, None)


def test_a_refused_client_is_not_looked_up_and_a_held_one_is() -> None:
    policy, maps = service({"cltaddr:192.0.2.1": "REJECT", "smtps_session_conf:192.0.2.1": ENTRY})
    assert ask(policy)[0] == "refused"
    assert not any(key.startswith("smtps_session_conf:") for key in maps.asked)
    delayed, _ = service({"cltaddr:192.0.2.1": "REJECT", "smtps_session_conf:192.0.2.1": ENTRY},
                         smtps_flags="delay_checks")
    assert ask(delayed) == ("ok", None, parse_session_conf(ENTRY))        # held until RCPT


def test_a_failure_closes_the_session_with_421_and_is_logged_b33(caplog) -> None:
    policy, _ = service({"smtps_session_conf:192.0.2.1": MapResult(Status.TEMP, reason="ldap down"),
                         "smtps_session_conf:198.51.100.1": "flags = { dont_pipelining }; max_sessions = 2;"})
    with caplog.at_level(logging.ERROR, logger="meta1.policy"):
        outcome, reply, conf = ask(policy)
        assert (outcome, reply.code, reply.status, conf) == ("close", 421, "4.3.0", None)
        outcome, reply, conf = ask(policy, client="198.51.100.1", session="S2")
        assert (outcome, reply.code, reply.status, conf) == ("close", 421, "4.3.0", None)
    refused = "session configuration unusable, session refused: map acc: smtps_session_conf:"
    assert f"S1: {refused}192.0.2.1: TEMP ldap down" in caplog.text
    assert f"S2: {refused}198.51.100.1: 1:30: unknown option 'max_sessions'" in caplog.text


def test_a_session_smar_forgot_is_checked_again_without_its_entry() -> None:
    """After a restart of smar the client is checked again (delay_checks), but the session
    took its settings at its start: the entry is not read again, nor can it fail it."""
    policy, maps = service({"smtps_session_conf:192.0.2.1": MapResult(Status.TEMP)})
    assert ask(policy, stage="mail")[0] == "ok"
    assert not any(key.startswith("smtps_session_conf:") for key in maps.asked)


# -- smtpc_session_conf: (D-POL-28) ----------------------------------------------------------------

def test_an_smtpc_entry_may_set_the_reply_timers_with_the_smtpc_sections_types() -> None:
    """The options are smtpc's own, with the same types and bounds; the record has a field each."""
    assert [o.key for o in SMTPC_SESSION_CONF.options] == [f.name for f in dataclasses.fields(SmtpcSessionConf)]
    for option in SMTPC_SESSION_CONF.options:
        assert option.type == SMTPC.option(option.key).type
    assert parse_smtpc_session_conf("IO_timeout = 2s; final_dot_timeout = 20m;") == SmtpcSessionConf(2, 1200)
    assert parse_smtpc_session_conf("final_dot_timeout = 1h; # a slow filter there\n") == \
        SmtpcSessionConf(final_dot_timeout=3600)
    assert parse_smtpc_session_conf("") == SmtpcSessionConf()


def test_the_smtpc_lookup_tries_the_servers_ip_keys_and_names_the_key_on_failure_b33() -> None:
    asked: list[str] = []

    def lookup(request):
        asked.append(request.key)
        return lookups({"smtpc_session_conf:2001:db8:": "IO_timeout = 30s;"})(request)
    result = run_steps(smtpc_session_conf_steps("conf", "2001:db8::25"), lookup)
    assert asked[0] == "smtpc_session_conf:2001:db8:0:0:0:0:0:25" and asked[-1] == "smtpc_session_conf:2001:db8:"
    assert (result.key, result.conf) == ("smtpc_session_conf:2001:db8:", SmtpcSessionConf(io_timeout=30))
    assert run_steps(smtpc_session_conf_steps("conf", "192.0.2.1"), lookups({})) == type(result)()
    temp = run_steps(smtpc_session_conf_steps("conf", "192.0.2.1"),
                     lookups({"smtpc_session_conf:192.0.2.": MapResult(Status.TEMP, reason="down")}))
    assert (temp.failure, temp.conf) == ("smtpc_session_conf:192.0.2.: TEMP down", None)
    bad = run_steps(smtpc_session_conf_steps("conf", "192.0.2.1"),
                    lookups({"smtpc_session_conf:192.0.2.1": "IO_timeout = 0;"}))
    assert bad.failure == "smtpc_session_conf:192.0.2.1: 1:14: IO_timeout: 0s is out of range (1s..1h)"


def test_a_long_smtpc_entry_is_read_whole_b34() -> None:
    text = "IO_timeout = 2s; /* " + "x" * 5000 + " */ final_dot_timeout = 3m;"
    result = run_steps(smtpc_session_conf_steps("conf", "192.0.2.1"), lookups({"smtpc_session_conf:192.0.2.": text}))
    assert result.conf == SmtpcSessionConf(2, 180) and result.text == text
