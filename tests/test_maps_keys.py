"""Lookup orders (meta1.maps.keys): B17-B21 and the domain and address orders, as data,
and Hypothesis properties: an entry matches an address exactly when it is one of the
keys derived from it."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meta1.maps.keys import address_keys, domain_keys, ip_keys, local_part_keys, tagged, uncompressed_ipv6

CASES = [
    (ip_keys, "10.1.2.3", ["10.1.2.3", "10.1.2.", "10.1.", "10."]),                       # B17
    (ip_keys, "::ffff:10.1.2.3", ["10.1.2.3", "10.1.2.", "10.1.", "10."]),
    (ip_keys, "2001:db8::1", ["2001:db8:0:0:0:0:0:1", "2001:db8:0:0:0:0:0:", "2001:db8:0:0:0:0:",
                              "2001:db8:0:0:0:", "2001:db8:0:0:", "2001:db8:0:", "2001:db8:", "2001:"]),  # B20, B21
    (ip_keys, "2001:DB8:00AB::0001", ["2001:db8:ab:0:0:0:0:1", "2001:db8:ab:0:0:0:0:", "2001:db8:ab:0:0:0:",
                                      "2001:db8:ab:0:0:", "2001:db8:ab:0:", "2001:db8:ab:", "2001:db8:", "2001:"]),
    (domain_keys, "Mail.Example.COM", ["mail.example.com", ".example.com", ".com"]),
    (domain_keys, "example.com.", ["example.com", ".com"]),
    (domain_keys, "[192.0.2.1]", ["[192.0.2.1]"]),
    (address_keys, "User+Box@Mail.Example.com", ["user+box@mail.example.com", "user@mail.example.com",
                                                 "mail.example.com", ".example.com", ".com", "user+box@", "user@"]),
    (address_keys, "user@example.com", ["user@example.com", "example.com", ".com", "user@"]),
    (address_keys, "postmaster", ["postmaster"]),
    (local_part_keys, "Root+Tag", ["root+tag", "root"]),
    (local_part_keys, "+tag", ["+tag"]),
]


@pytest.mark.parametrize("derive,value,keys", CASES, ids=[f"{c[0].__name__}({c[1]})" for c in CASES])
def test_lookup_orders(derive, value, keys) -> None:
    assert derive(value) == keys


def test_b18_an_entry_without_the_delimiter_matches_no_network() -> None:
    keys = tagged("cltaddr:", ip_keys("10.1.2.3"))
    assert "cltaddr:10." in keys and "cltaddr:10" not in keys
    assert "cltaddr:2001:db8" not in tagged("cltaddr:", ip_keys("2001:db8::1"))


def test_uncompressed_ipv6_has_no_double_colon() -> None:
    assert uncompressed_ipv6("::1") == "0:0:0:0:0:0:0:1"


@given(st.ip_addresses())
def test_every_key_of_an_ip_is_a_prefix_ending_in_the_delimiter(ip) -> None:
    keys = ip_keys(str(ip))
    delimiter = ":" if "." not in keys[0] else "."
    assert keys[0].count(delimiter) in (3, 7) and "::" not in keys[0]
    for shorter in keys[1:]:
        assert shorter.endswith(delimiter) and keys[0].startswith(shorter)
    assert len(keys) == len(set(keys)) == keys[0].count(delimiter) + 1


NETWORKS = (st.tuples(st.ip_addresses(v=4), st.integers(1, 3))
            | st.tuples(st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None), st.integers(1, 7)))


@given(NETWORKS, st.ip_addresses())
def test_a_network_entry_matches_exactly_the_addresses_inside_it(network, client) -> None:
    """For any entry made of the first n components (plus the delimiter) and any client:
    the entry is among the client's keys iff the client lies in that network."""
    address, components = network
    entry = ip_keys(str(address))[-components]          # n components kept
    client_keys = ip_keys(str(client))
    bits = components * (8 if address.version == 4 else 16)
    plain = client.ipv4_mapped if client.version == 6 and client.ipv4_mapped else client
    inside = plain.version == address.version and plain in ipaddress.ip_network(f"{address}/{bits}", strict=False)
    assert (entry in client_keys) == inside


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


@given(DOMAIN, DOMAIN)
def test_a_dotted_entry_matches_the_names_below_it_and_a_plain_one_only_itself(entry, name) -> None:
    keys = domain_keys(name)
    assert (entry in keys) == (entry == name)
    assert (("." + entry) in keys) == name.endswith("." + entry)


@given(st.from_regex(r"[a-z0-9._]{1,10}(\+[a-z0-9]{1,5})?", fullmatch=True), DOMAIN)
def test_an_address_entry_matches_with_or_without_its_detail(local, domain) -> None:
    keys = address_keys(f"{local}@{domain}")
    base = local.split("+")[0]
    assert f"{base}@{domain}" in keys and f"{base}@" in keys and domain in keys
    assert keys.index(f"{local}@{domain}") == 0 and keys[-1] == f"{base}@"
