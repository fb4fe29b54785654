"""The schema's rules beyond single values: cross-field checks, references, defaults."""

from __future__ import annotations

import pytest

from meta1.config import ConfigError, load_text
from meta1.config.schema import NOT_SET


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "f")
    return [f"{d.position}: {d.message}" for d in info.value.diagnostics]


def test_empty_file_is_the_documented_defaults() -> None:
    config = load_text("", "f")
    assert config.qmgr.aq_max_entries == 8192
    assert config.smtps[None].listen_socket.port == 25
    assert config.smtps[None].listen_socket.address is NOT_SET
    assert config.smtps[None].flags["8bitmime"] is False  # B36: off unless named
    assert config.smar.nameserver is NOT_SET
    assert config.smtps[None].tls is None and config.smar.map == {}


def test_log_level_is_inherited_from_the_global_section_wherever_it_is_written() -> None:
    config = load_text("smtps { } smar { Log_Level = 3; } Log_Level = 12;", "f")
    assert (config.smtps[None].log_level, config.smar.log_level, config.mcp.log_level) == (12, 3, 12)


def test_named_smtps_servers() -> None:
    config = load_text("smtps { } smtps sub { listen_socket { port = 587; } }", "f")
    assert set(config.smtps) == {None, "sub"}
    assert config.smtps["sub"].listen_socket.port == 587
    assert list(load_text("smtps sub { }", "f").smtps) == ["sub"]
    assert errors("smtps a { } smtps a { }") == ["1:13: section 'smtps a' is declared twice (first at line 1)"]


def test_sections_may_not_repeat_unless_declared_repeatable() -> None:
    assert errors("qmgr { }\nqmgr { }") == ["2:1: section 'qmgr' appears twice (first at line 1)"]


@pytest.mark.parametrize("text, message", [
    ("smtps { listen_socket { type = unix; } }", "1:9: a unix socket needs a path"),
    ("smtps { listen_socket { type = unix; path = s; port = 1; } }", "1:48: port is for type = inet; a unix socket has a path"),
    ("smtps { listen_socket { path = s; } }", "1:25: path is for type = unix; an inet socket has address and port"),
    ("smtps { policy_milter { } }", "1:9: policy_milter needs a socket section"),
    ("smtps { policy_milter { socket { type = inet; address = 127.0.0.1; } } }", "1:25: an inet socket needs a port"),
    ("smtps { tls { cert_file = c; } }", "1:9: a server tls section needs cert_file and key_file"),
    ("smtpc { tls { key_file = k; } }", "1:9: cert_file and key_file go together"),
    ("qmgr { restart_dependencies = { qmgr }; }", "1:8: qmgr lists itself in restart_dependencies"),
    ("qmgr { restart_dependencies = { mcp }; }",
     "1:8: restart_dependencies: service 'mcp' is not declared (services: lmtpd, qmgr, smar, smtpc, smtps)"),
    ("qmgr { min_queue_delay = 2h; }", "1:8: min_queue_delay is larger than max_queue_delay"),
    ("qmgr { smtpc { initial_connections = 30; } }", "1:16: initial_connections is larger than max_connections"),
    ("smar { nameserver = { 127.0.0.1 }; flags = { use_resolvconf }; }",
     "1:8: nameserver and the flag use_resolvconf exclude each other"),
    ("smar { nameserver = { }; }", "1:21: nameserver: the list needs at least 1 item(s)"),
    ("smar { greylisting { min_delay = 5h; } }", "1:22: min_delay must be shorter than max_delay"),
    ("smtps { start_action = start; }", "1:24: start_action: 'start' is not one of: wait, pass"),
])
def test_cross_field_rules(text: str, message: str) -> None:
    assert errors(text) == [message]


@pytest.mark.parametrize("text, message", [
    ("smar { map m { } }", "1:8: section 'map' needs the option type"),
    ("smar { map m { type = hash; } }", "1:8: a map of type hash needs file"),
    ("smar { map m { type = passwd; file = x; } }", "1:31: file is not an option of a map of type passwd"),
    ("smar { map m { type = socket; } }", "1:8: a socket map needs either path (unix) or address and port (inet)"),
    ("smar { map m { type = socket; port = 1; } }", "1:8: an inet socket map needs both address and port"),
    ("smar { map m { type = sequence; maps = { m }; } }", "1:33: sequence map 'm' contains itself"),
    ("smar { map a { type = sequence; maps = { b }; } map b { type = sequence; maps = { a }; } }",
     "1:33: sequence maps contain each other: a -> b -> a"),
    ("smar { map a { type = sequence; maps = { nope }; } }", "1:33: maps: map 'nope' is not declared (maps: a)"),
    ("smar { aliases { name = stdal; } }", "1:18: name: map 'stdal' is not declared (maps: none)"),
    ("smar { aliases { flags = { localpart }; } }", "1:8: section 'aliases' needs the option name"),
    ("qmgr { config_map = conf; }", "1:8: config_map: map 'conf' is not declared (maps: none)"),
])
def test_map_rules(text: str, message: str) -> None:
    assert errors(text) == [message]


def test_socket_map_defaults_follow_its_name() -> None:
    config = load_text("smar { map userdb { type = socket; path = s; } }", "f")
    m = config.smar.map["userdb"]
    assert (m.mapname, m.timeout, m.max_connections, m.file) == ("userdb", 5, 4, NOT_SET)


def test_queue_directory_tilde_means_home() -> None:
    assert load_text('queue_directory = "~/q";', "f", home="/home/u").queue_directory == "/home/u/q"
    assert errors('queue_directory = "~/q";') == ["1:19: queue_directory: '~/' needs a home directory"]


def test_errors_from_all_layers_come_together_in_position_order() -> None:
    text = "qmgr { AQ_max_entries = 0; }\nbad = = 1;\nsmar { aliases { name = x; } }\n"
    assert errors(text) == [
        "1:25: AQ_max_entries: 0 is out of range (1..1000000)",
        "2:7: expected a value or '{', found '='",
        "3:18: name: map 'x' is not declared (maps: none)",
    ]


def test_lmtpd_is_absent_unless_declared_and_may_be_a_restart_dependency() -> None:
    assert load_text("", "f").lmtpd is None
    config = load_text("lmtpd { } smtpc { restart_dependencies = { lmtpd }; }", "f")
    assert (config.lmtpd.socket, config.lmtpd.mail_directory) == ("lmtpd/lmtpsock", "mail")
    assert (config.lmtpd.start_action, config.lmtpd.restart_dependencies) == ("wait", ())
    assert config.smtpc.restart_dependencies == ("lmtpd",)
    assert errors("lmtpd { restart_dependencies = { lmtpd }; }") == [
        "1:9: lmtpd lists itself in restart_dependencies"]
