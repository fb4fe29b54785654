"""Value types: what each accepts, refuses, and how it prints back (meta1.config.types)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.config.tree import ListValue, Scalar
from meta1.config.types import (
    Endpoint, Enum, FlagChanges, Flags, Integer, Interval, Invalid, ListOf, Size, format_interval, format_size,
    parse_integer, parse_interval, parse_size,
)


@pytest.mark.parametrize("text, number", [("0", 0), ("42", 42), ("0755", 493), ("0x1F", 31), ("0X1f", 31), ("-7", -7)])
def test_integers(text: str, number: int) -> None:
    assert parse_integer(text) == number


@pytest.mark.parametrize("text", ["", "08", "0x", "1e3", "12a", "+1", " 1", "\u0661"])
def test_not_integers(text: str) -> None:
    with pytest.raises(Invalid):
        parse_integer(text)


@pytest.mark.parametrize("text, seconds", [
    ("6", 6), ("5m3s", 303), ("6m", 360), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("0s", 0), ("90s", 90)])
def test_intervals(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "3s5m", "1h1h", "m", "1.5h", "-1s", "\u0665s"])
def test_not_intervals(text: str) -> None:
    with pytest.raises(Invalid):
        parse_interval(text)


@pytest.mark.parametrize("text, size", [("100", 100), ("10K", 10240), ("10k", 10240), ("2M", 2 << 20), ("1G", 1 << 30)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@given(st.integers(0, 10**12))
@settings(deadline=None)
def test_interval_and_size_formats_read_back(n: int) -> None:
    assert parse_interval(format_interval(n)) == n
    assert parse_size(format_size(n)) == n


def test_ranges_are_checked() -> None:
    with pytest.raises(Invalid, match=r"out of range \(1s\.\.1h\)"):
        Interval(1, 3600).convert(Scalar("2h"))
    with pytest.raises(Invalid, match=r"out of range \(1K\.\.\)|out of range \(>= 1K\)"):
        Size(1024).convert(Scalar("1000"))
    with pytest.raises(Invalid, match="not a list"):
        Integer().convert(ListValue((Scalar("1"),)))


def test_enum_is_case_insensitive_and_canonical() -> None:
    assert Enum(("inet", "unix")).convert(Scalar("INET")) == "inet"
    with pytest.raises(Invalid, match="not one of: inet, unix"):
        Enum(("inet", "unix")).convert(Scalar("tcp"))


def test_endpoints() -> None:
    ep = Endpoint(53)
    assert ep.convert(Scalar("127.0.0.1")) == ("127.0.0.1", 53)
    assert ep.convert(Scalar("127.0.0.1:5353")) == ("127.0.0.1", 5353)
    assert ep.convert(Scalar("[::1]:5353")) == ("::1", 5353)
    assert ep.convert(Scalar("2001:DB8::1")) == ("2001:db8::1", 53)
    for value in (("127.0.0.1", 53), ("127.0.0.1", 5353), ("::1", 5353)):
        assert ep.convert(ep.format(value)) == value
    for bad in ("localhost", "1.2.3.4:x", "[::1]:0", "1.2.3.4:70000", "1.2.3.4:\u0665\u0663", "1.2.3.4:\u00b2"):
        with pytest.raises(Invalid):
            ep.convert(Scalar(bad))


def test_a_single_value_is_a_one_item_list() -> None:
    assert ListOf(Integer()).convert(Scalar("3")) == (3,)


def test_list_item_errors_point_at_the_item() -> None:
    from meta1.config.errors import Position
    bad = Scalar("x", Position(3, 9))
    with pytest.raises(Invalid) as info:
        ListOf(Integer()).convert(ListValue((Scalar("1"), bad)))
    assert info.value.pos == Position(3, 9)
    with pytest.raises(Invalid, match="listed twice"):
        ListOf(Integer()).convert(ListValue((Scalar("1"), Scalar("01"))))


FLAGS = Flags({"a": True, "b": False, "x": True, "y": False}, exclusive=(("x", "y"),))


def test_flags_defaults_negation_and_exclusive_groups() -> None:
    convert = lambda *words: FLAGS.convert(ListValue(tuple(Scalar(w) for w in words)))  # noqa: E731
    assert convert() == {"a": True, "b": False, "x": True, "y": False}
    assert convert("dont_a", "B") == {"a": False, "b": True, "x": True, "y": False}
    assert convert("y") == {"a": True, "b": False, "x": False, "y": True}
    for words, message in ((("c",), "unknown flag 'c'"), (("a", "dont_a"), "more than once"),
                           (("x", "y"), "exclude each other"), (("dont_x",), "must be on")):
        with pytest.raises(Invalid, match=message):
            convert(*words)


@given(st.sampled_from([(), ("dont_a",), ("b",), ("y",), ("dont_a", "b", "y"), ("x", "dont_y")]))
def test_flags_print_back_to_the_same_value(words) -> None:
    value = FLAGS.convert(ListValue(tuple(Scalar(w) for w in words)))
    assert FLAGS.convert(FLAGS.format(value)) == value


def test_flag_changes_are_only_the_flags_named() -> None:
    """Flags laid over a loaded section (an smtps_session_conf: entry, D-POL-26): what is
    not named is no change, whatever its default; the words and mistakes are Flags'."""
    changes = FlagChanges({"a": True, "b": False})
    words = ListValue((Scalar("dont_a"), Scalar("B")))
    assert changes.convert(words) == {"a": False, "b": True}
    assert changes.convert(ListValue(())) == {} and changes.convert(Scalar("b")) == {"b": True}
    assert changes.convert(changes.format({"a": False, "b": True})) == {"a": False, "b": True}
    with pytest.raises(Invalid, match="unknown flag 'c'"):
        changes.convert(Scalar("c"))
    with pytest.raises(ValueError):
        FlagChanges({"x": True, "y": False}, exclusive=(("x", "y"),))
