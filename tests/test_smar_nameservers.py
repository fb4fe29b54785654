"""smar's nameserver settings (meta1.smar.nameservers): options, resolv.conf, B62."""

from __future__ import annotations

import pytest

from meta1.config import load_text
from meta1.smar.nameservers import (
    NoNameserverError, ResolvConf, load_resolver_settings, parse_resolv_conf, resolver_settings,
)


def smar(text: str = ""):
    return load_text(f"smar {{ {text} }}", "test.conf").smar


def test_nameserver_option_in_order_with_ports():
    settings = resolver_settings(smar('nameserver = { 127.0.0.1:5353, "[::1]:53", 10.0.0.9 }; DNS_timeout = 3;'))
    assert settings.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.9", 53))
    assert (settings.timeout, settings.attempts, settings.source) == (3.0, 2, "option nameserver")


def test_default_is_127_0_0_1():
    settings = resolver_settings(smar())
    assert settings.nameservers == (("127.0.0.1", 53),)
    assert settings.timeout == 5.0


def test_use_resolvconf_reads_the_file(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch example.test\nnameserver 127.0.0.53\n; other\n"
                    "nameserver ::1\noptions edns0 attempts:3 timeout:1\n")
    settings = load_resolver_settings(smar("flags = { use_resolvconf };"), str(path))
    assert settings.nameservers == (("127.0.0.53", 53), ("::1", 53))
    assert settings.attempts == 3 and settings.timeout == 5.0   # DNS_timeout, not timeout:1
    assert settings.source == str(path)


def test_the_file_is_not_read_without_the_flag(tmp_path):
    settings = load_resolver_settings(smar(), str(tmp_path / "absent"))
    assert settings.nameservers == (("127.0.0.1", 53),)


@pytest.mark.parametrize("content", ["", "# nameserver 127.0.0.1\n", "nameserver\nnameserver not-an-ip\n",
                                     "domain example.test\n"])
def test_b62_resolv_conf_without_nameserver_is_refused(tmp_path, content):
    path = tmp_path / "resolv.conf"
    path.write_text(content)
    with pytest.raises(NoNameserverError) as info:
        load_resolver_settings(smar("flags = { use_resolvconf };"), str(path))
    message = str(info.value)
    assert "use_resolvconf" in message and "nameserver" in message and str(path) in message


def test_b62_unreadable_resolv_conf_is_refused(tmp_path):
    path = tmp_path / "missing.conf"
    with pytest.raises(NoNameserverError, match=r"use_resolvconf .*missing\.conf cannot be read"):
        load_resolver_settings(smar("flags = { use_resolvconf };"), str(path))
    with pytest.raises(NoNameserverError, match="cannot be read"):
        resolver_settings(smar("flags = { use_resolvconf };"), None, str(path))


def test_empty_nameserver_list_given_directly_is_refused():
    class Node:
        nameserver = ()
        DNS_timeout = 5
        flags = {"use_resolvconf": False}

    with pytest.raises(NoNameserverError, match="option nameserver"):
        resolver_settings(Node())


@pytest.mark.parametrize("text,expected", [
    ("nameserver 192.0.2.1\nnameserver 192.0.2.1\n", ResolvConf((("192.0.2.1", 53),))),
    ("nameserver 192.0.2.1 extra words\n", ResolvConf((("192.0.2.1", 53),))),
    ("nameserver fe80::1%eth0\n", ResolvConf((("fe80::1%eth0", 53),))),
    ("  nameserver\t2001:db8::53  \n", ResolvConf((("2001:db8::53", 53),))),
    ("options attempts:9\n", ResolvConf((), 5)),
    ("options attempts:0 rotate\n", ResolvConf((), 1)),
    ("options attempts:x\n", ResolvConf((), None)),
    ("nameserver 192.0.2.1:5353\n", ResolvConf(())),   # resolv.conf has no ports
])
def test_parse_resolv_conf(text, expected):
    assert parse_resolv_conf(text) == expected
