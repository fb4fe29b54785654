"""Recipient routing (meta1/policy/route.py): mailertable values, alias lists, flags, and a
Hypothesis property: alias expansion ends, for any alias graph, with every route unique and
no route that is not a user, a remote address or an allowed file/program."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meta1.maps.base import NOT_FOUND, MapResult, Status, found
from meta1.policy.plan import Plan
from meta1.policy.relay import LocalDomains
from meta1.policy.route import (ESMTP, LMTP, MapUse, Resolution, Route, RoutingSettings, parse_mailertable,
                                route_steps, split_targets)

LOCAL = LocalDomains("mx.ours.test", ["ours.test"])


def resolve(settings: RoutingSettings, local: str, domain: str, maps: dict[str, dict[str, object]]) -> Resolution:
    plan = Plan(route_steps(settings, local, domain))
    while (request := plan.next_lookup()) is not None:
        value = maps.get(request.map, {}).get(request.key)
        plan.lookup_result(NOT_FOUND if value is None else value if isinstance(value, MapResult) else found(value))
    return plan.result


@pytest.mark.parametrize("value, route", [
    ("esmtp:mx.partner.example", Route(ESMTP, "mx.partner.example", "u@d.example")),
    ("SMTP:MX.Partner.Example.", Route(ESMTP, "mx.partner.example", "u@d.example")),
    ("esmtp:", Route(ESMTP, "d.example", "u@d.example")),
    ("esmtp:[relay.example]", Route(ESMTP, "[relay.example]", "u@d.example")),
    ("esmtp:[192.0.2.5]", Route(ESMTP, "[192.0.2.5]", "u@d.example")),
    ("esmtp:[2001:db8::5]", Route(ESMTP, "[ipv6:2001:db8::5]", "u@d.example")),
    ("esmtp:[IPv6:2001:DB8::5]", Route(ESMTP, "[ipv6:2001:db8::5]", "u@d.example")),
    ("lmtp:/run/lmtp.sock", Route(LMTP, "/run/lmtp.sock", "u@d.example")),
    ("lmtp:", Route(LMTP, "lmtpsock", "u@d.example")),
])
def test_mailertable_values(value: str, route: Route) -> None:
    assert parse_mailertable(value, "D.example", "u@d.example", "lmtpsock") == route


@pytest.mark.parametrize("value", ["relay.example", "uucp:host", "esmtp:bad_host", "esmtp:-x.example",
                                   "lmtp:[host]", "lmtp:/a b", "esmtp:a..b", ":host", "esmtp:[not valid]"])
def test_bad_mailertable_values(value: str) -> None:
    with pytest.raises(ValueError):
        parse_mailertable(value, "d.example", "u@d.example")


def test_route_properties() -> None:
    assert Route(ESMTP, "d.example", "u@d.example").mx and Route(ESMTP, "d.example", "u").nexthop == "d.example"
    assert not Route(ESMTP, "[192.0.2.1]", "u").mx
    assert Route(LMTP, "/s", "u").nexthop == "lmtp:/s" and Route("program", "", "|x").nexthop == "program:"


def test_split_targets() -> None:
    assert split_targets(' a, b@c ,,"x,y"@d, <e@f>, "q\\"," ') == ["a", "b@c", '"x,y"@d', "<e@f>", '"q\\","']


def test_aliases_for_any_domain_without_local_domains() -> None:
    settings_ = RoutingSettings(LOCAL, aliases=MapUse("al"))
    result = resolve(settings_, "Info", "Virtual.Example", {"al": {"info@virtual.example": "bob@ours.test"}})
    assert result.routes == (Route(LMTP, "", "bob@ours.test"),)
    settings_ = RoutingSettings(LOCAL, aliases=MapUse("al", frozenset({"local_domains"})))
    result = resolve(settings_, "info", "virtual.example", {"al": {"info@virtual.example": "bob@ours.test"}})
    assert result.routes == (Route(ESMTP, "virtual.example", "info@virtual.example"),)


def test_failures() -> None:
    users = RoutingSettings(LOCAL, local_user_map=MapUse("u", frozenset({"localpart"})),
                            aliases=MapUse("al", frozenset({"localpart"})))
    result = resolve(users, "x", "ours.test", {"u": {"x": MapResult(Status.TEMP, reason="ldap")}})
    assert result.reply.code == 451 and result.temporary and not result.ok
    result = resolve(users, "x", "ours.test", {"al": {"x": MapResult(Status.PERM)}})
    assert result.reply.code == 451
    result = resolve(users, "list", "ours.test", {"al": {"list": "alice, nobody"}, "u": {"alice": "1"}})
    assert result.ok and result.routes == (Route(LMTP, "", "alice@mx.ours.test"),)
    assert [f.reply.status for f in result.failures] == ["5.1.1"]        # kept for a DSN
    result = resolve(users, "list", "ours.test", {"al": {"list": " , "}})
    assert result.reply.code == 451                                       # an alias with no target


def test_the_expansion_is_bounded() -> None:
    chain = {f"a{i}": f"a{i + 1}" for i in range(50)}
    result = resolve(RoutingSettings(LOCAL, aliases=MapUse("al", frozenset({"localpart"})), max_alias_depth=20),
                     "a0", "ours.test", {"al": chain})
    assert result.reply.status == "5.4.6"
    wide = {"all": ", ".join(f"u{i}@remote.example" for i in range(30))}
    result = resolve(RoutingSettings(LOCAL, aliases=MapUse("al", frozenset({"localpart"})), max_routes=10),
                     "all", "ours.test", {"al": wide})
    assert len(result.routes) == 10 and result.ok and result.failures[0].reply.status == "5.4.6"


NAMES = ["a", "b", "c", "d", "e"]
TARGET = st.sampled_from(NAMES) | st.sampled_from(NAMES).map(lambda n: f"{n}@remote.example") \
    | st.sampled_from(["/var/mail/x", "|/bin/prog"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES), st.lists(TARGET, min_size=1, max_size=4), max_size=5),
       st.sets(st.sampled_from(NAMES)), st.sampled_from(NAMES), st.booleans())
def test_alias_expansion_ends_and_routes_are_sound(aliases, users, start, allow_files) -> None:
    flags = frozenset({"localpart", "file", "program"} if allow_files else {"localpart"})
    settings_ = RoutingSettings(LOCAL, local_user_map=MapUse("u", frozenset({"localpart"})),
                                aliases=MapUse("al", flags))
    maps = {"al": {k: ", ".join(v) for k, v in aliases.items()}, "u": {u: "1" for u in users}}
    result = resolve(settings_, start, "ours.test", maps)
    assert len(set(result.routes)) == len(result.routes)
    for route in result.routes:
        if route.mailer == LMTP:
            assert route.address.split("@")[0] in users          # local routes are users only
        elif route.mailer == ESMTP:
            assert route.address.endswith("@remote.example")
        else:
            assert allow_files
    assert result.ok or result.reply is not None
