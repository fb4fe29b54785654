"""qmgr's per-IP limits (meta1/policy/limits.py): the lookups and the admission (B56)."""

from __future__ import annotations

import pytest

from meta1.maps.base import NOT_FOUND, MapResult, Status, found
from meta1.policy.limits import Limits, admit_connection, limits_steps
from meta1.policy.plan import run_steps


def limits(table: dict[str, object], address: str = "192.0.2.5") -> Limits:
    def lookup(request):
        value = table.get(request.key)
        return NOT_FOUND if value is None else value if isinstance(value, MapResult) else found(value)
    return run_steps(limits_steps("conf", address), lookup)


def test_every_tag_by_ip_keys() -> None:
    result = limits({"icm:192.0.2.5": "2", "ocm:192.0.": "8", "oci:192.0.2.5": "1", "oct:2001:db8:": "30"})
    assert result.values == {"icm:": 2, "icr:": None, "oci:": 1, "ocm:": 8, "ocr:": None, "oct:": None}
    v6 = limits({"oct:2001:db8:": "30", "icm:2001:db8:0:0:0:0:0:": "0"}, "2001:db8::9")
    assert v6.get("oct:") == 30 and v6.get("icm:") is None                   # B70; 0 = no limit


@pytest.mark.parametrize("value", ["two", "-1", "1.5", "", "99999999", MapResult(Status.TEMP), MapResult(Status.PERM)])
def test_failures(value) -> None:
    assert limits({"icm:192.0.2.": value}).failed


@pytest.mark.parametrize("table, open_now, recent, code", [
    ({"icm:192.0.2.5": "2"}, 1, 0, None),
    ({"icm:192.0.2.5": "2"}, 2, 0, 421),                # B56: the third concurrent connection
    ({"icr:192.0.2.": "5"}, 0, 4, None),
    ({"icr:192.0.2.": "5"}, 0, 5, 421),
    ({"icm:192.0.2.": "0"}, 10_000, 0, None),
    ({"icm:192.0.2.": "x"}, 0, 0, 421),
    ({}, 10_000, 10_000, None),
])
def test_admission(table, open_now, recent, code) -> None:
    reply = admit_connection(limits(table), "192.0.2.5", open_now=open_now, recent=recent, hostname="mx")
    assert (reply.code if reply else None) == code
    if reply is not None:
        assert reply.status in ("4.7.0", "4.3.0")
