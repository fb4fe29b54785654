"""The policy options of the schema (local_domains, dnsbl, aliases flags) and the settings
the cores get from a loaded configuration (meta1/policy/settings.py)."""

from __future__ import annotations

import pytest

from meta1.config import ConfigError, load_text
from meta1.policy.settings import PolicySettings
from meta1.policy.route import MapUse


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "f")
    return [f"{d.position}: {d.message}" for d in info.value.diagnostics]


@pytest.mark.parametrize("text, message", [
    ("smar { local_domains = { bad_name }; }", "1:8: local_domains: 'bad_name' is not a domain name"),
    ("smar { local_domains = { a..b }; }", "1:8: local_domains: 'a..b' is not a domain name"),
    ('smar { local_domains = { "[300.1.1.1]" }; }', "1:8: local_domains: '[300.1.1.1]' is not an address literal"),
    ("smar { dnsbl zen { } }", "1:8: section 'dnsbl' needs the option domain"),
    ("smar { dnsbl { domain = zen.example; } }", "1:8: section 'dnsbl' needs a name"),
    ("smar { dnsbl zen { domain = .zen.example; } }", "1:20: domain must be a DNS domain name"),
    ("smar { dnsbl zen { domain = zen.example; codes = { 127.0.0.2, nope }; } }",
     "1:42: codes: 'nope' is not an address or a network"),
    ('smar { dnsbl zen { domain = zen.example; reply = "250 ok"; } }', "1:42: reply: not OK, RELAY"),
    ('smar { dnsbl zen { domain = zen.example; reply = OK; } }', "1:42: reply: a 4xx or 5xx reply, REJECT or TEMPFAIL"),
    ('smar { dnsbl zen { domain = zen.example; reply = "554 5.7.1 ${x}"; } }', "1:42: reply: unknown macro"),
    ("smar { map m { type = hash; file = m.db; } local_user_map { name = m; flags = { file }; } }",
     "1:81: flags: unknown flag 'file'"),
])
def test_schema_rules(text: str, message: str) -> None:
    found = errors(text)
    assert any(e.startswith(message) for e in found), found


def test_settings_from_a_configuration() -> None:
    config = load_text("""
        hostname = mx.ours.test;
        qmgr { config_map = conf; }
        smtps { flags = { delay_checks }; }
        smtps submission { listen_socket { port = 587; } }
        smtpc { LMTP_socket = lmtpsock; }
        smar {
          local_domains = { ours.test, .sub.ours.test };
          map conf { type = hash; file = conf.db; }
          map access { type = hash; file = access.db; }
          map users { type = passwd; }
          access_map { name = access; }
          local_user_map { name = users; flags = { localpart }; }
          aliases { name = access; flags = { localpart, local_domains, program }; }
          mailertable { name = conf; flags = { full_address }; }
          greylisting { min_delay = 1m; }
          dnsbl b { domain = b.example; }
          dnsbl a { domain = a.example; codes = { 127.0.0.2 }; }
        }""", "f")
    settings = PolicySettings.from_config(config, "mx.ours.test")
    assert settings.delay_checks and not PolicySettings.from_config(config, "mx", "submission").delay_checks
    assert "x.sub.ours.test" in settings.local and "mx.ours.test" in settings.local
    assert settings.access_map == "access" and settings.config_map == "conf"
    routing = settings.routing
    assert routing.local_user_map == MapUse("users", frozenset({"localpart"}))
    assert routing.aliases == MapUse("access", frozenset({"localpart", "local_domains", "program"}))
    assert routing.mailertable == MapUse("conf", frozenset({"full_address"})) and routing.lmtp_socket == "lmtpsock"
    assert settings.greylisting.min_delay == 60 and settings.greylisting.ipv6_prefix == 64
    assert [d.name for d in settings.dnsbl] == ["b", "a"] and settings.dnsbl[1].codes == ("127.0.0.2",)


def test_an_empty_configuration_has_no_policy_maps() -> None:
    settings = PolicySettings.from_config(load_text("", "f"), "host.example")
    assert settings.access_map is None and settings.greylisting is None and settings.dnsbl == ()
    assert settings.routing.local_user_map is None and not settings.delay_checks
    assert "host.example" in settings.local and "localhost" in settings.local
