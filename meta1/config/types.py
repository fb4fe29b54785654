"""Value types of configuration options: reading a tree value, writing it back.

Every option in the schema has one of these types. A type does two things and they are
inverses of each other, which the round-trip tests check:

* ``convert(value)`` turns a tree value (:class:`Scalar` or :class:`ListValue`) into the
  Python value the daemons use, or raises :class:`Invalid` with a message and, when the
  culprit is one item of a list, that item's position;
* ``format(python_value)`` turns it back into a tree value in canonical form (intervals as
  ``1h30m``, sizes with the largest exact unit, flags spelled out), for ``meta1 config``.

``describe()`` is the one-line type description used in the generated option reference.

Lexical rules of values (decisions.md has the reasons): numbers are decimal, octal with a
leading ``0`` or hex with ``0x``; intervals are unit groups in descending order
(``1w2d3h4m5s``) or a plain decimal number of seconds; sizes are a decimal number with an
optional ``K``, ``M`` or ``G`` (powers of 1024, either case); a single value is accepted
where a list is expected and means a one-item list.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from meta1.config.errors import Position
from meta1.config.tree import ListValue, Scalar, Value


class Invalid(ValueError):
    """A value that its type refuses; ``pos`` names a list item when it is the culprit."""

    def __init__(self, message: str, pos: Position | None = None):
        super().__init__(message)
        self.pos = pos


class ValueType:
    """Base of all option types."""

    def convert(self, value: Value) -> Any:
        raise NotImplementedError

    def format(self, value: Any) -> Value:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _scalar(value: Value, what: str) -> str:
    if isinstance(value, ListValue):
        raise Invalid(f"expected {what}, not a list")
    return value.text


# No option needs a number this long; refusing it up front also keeps Python's int/str
# conversion limit (4300 digits, a ValueError) from ever being reached.
MAX_NUMBER_TEXT = 40


def _bounded(text: str, what: str) -> str:
    if len(text) > MAX_NUMBER_TEXT:
        raise Invalid(f"'{text[:20]}...' is too long for a {what} ({len(text)} characters)")
    return text


_INT_RE = re.compile(r"(-?)(?:0[xX]([0-9A-Fa-f]+)|(0[0-7]*)|([1-9][0-9]*))")


def parse_integer(text: str) -> int:
    """Decimal, octal (leading 0) or hex (0x) — as in C and MeTA1 (B16)."""
    m = _INT_RE.fullmatch(_bounded(text, "number"))
    if not m:
        raise Invalid(f"'{text}' is not a number (decimal, 0octal or 0xhex)")
    sign, hexa, octal, dec = m.groups()
    number = int(hexa, 16) if hexa else int(octal, 8) if octal else int(dec)
    return -number if sign else number


def _range_text(low: int | None, high: int | None, fmt=str) -> str:
    if low is not None and high is not None:
        return f"{fmt(low)}..{fmt(high)}"
    if low is not None:
        return f">= {fmt(low)}"
    if high is not None:
        return f"<= {fmt(high)}"
    return "any"


def _check_range(number: int, low: int | None, high: int | None, fmt=str) -> int:
    if (low is not None and number < low) or (high is not None and number > high):
        raise Invalid(f"{fmt(number)} is out of range ({_range_text(low, high, fmt)})")
    return number


@dataclass(frozen=True)
class _Quantity(ValueType):
    """A whole number within [low, high], read and written by a pair of text functions."""

    low: int | None = 0
    high: int | None = None
    what: ClassVar[str]
    read: ClassVar[Callable[[str], int]]
    write: ClassVar[Callable[[int], str]]

    def convert(self, value: Value) -> int:
        number = type(self).read(_scalar(value, f"a {self.what}"))
        return _check_range(number, self.low, self.high, type(self).write)

    def format(self, value: int) -> Value:
        return Scalar(type(self).write(value))

    def describe(self) -> str:
        return f"{self.what}, {_range_text(self.low, self.high, type(self).write)}"


class Integer(_Quantity):
    what, read, write = "number", staticmethod(parse_integer), staticmethod(str)


_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_INTERVAL_RE = re.compile(r"".join(rf"(?:([0-9]+){u})?" for u, _ in _UNITS))


def parse_interval(text: str) -> int:
    """Seconds in ``5m3s``-style text (B08) or a plain decimal number (B09)."""
    if _bounded(text, "time interval").isdigit() and text.isascii():
        return int(text)
    m = _INTERVAL_RE.fullmatch(text)
    if not text or not m:
        raise Invalid(f"'{text}' is not a time interval (e.g. 30s, 5m3s, 1h30m, 2d; units w d h m s in that order)")
    return sum(int(n) * secs for n, (_, secs) in zip(m.groups(), _UNITS) if n is not None)


def format_interval(seconds: int) -> str:
    if seconds == 0:
        return "0s"
    parts = []
    for unit, secs in _UNITS:
        n, seconds = divmod(seconds, secs)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


class Interval(_Quantity):
    what, read, write = "interval", staticmethod(parse_interval), staticmethod(format_interval)


_SIZE_UNITS = (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))
_SIZE_RE = re.compile(r"([0-9]+)([KkMmGg]?)")


def parse_size(text: str) -> int:
    m = _SIZE_RE.fullmatch(_bounded(text, "size"))
    if not m:
        raise Invalid(f"'{text}' is not a size (a number of bytes with optional K, M or G)")
    factor = dict(_SIZE_UNITS).get(m.group(2).upper(), 1)
    return int(m.group(1)) * factor


def format_size(size: int) -> str:
    for unit, factor in _SIZE_UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class Size(_Quantity):
    what, read, write = "size", staticmethod(parse_size), staticmethod(format_size)


@dataclass(frozen=True)
class String(ValueType):
    """Free text. ``nonempty`` for names and paths."""

    nonempty: bool = False
    what: str = "string"

    def convert(self, value: Value) -> str:
        text = _scalar(value, f"a {self.what}")
        if self.nonempty and not text:
            raise Invalid(f"the {self.what} must not be empty")
        return text

    def format(self, value: str) -> Value:
        return Scalar(value)

    def describe(self) -> str:
        return self.what


def Path() -> String:  # noqa: N802 - reads as a type in the schema
    """A file name; relative names are relative to the queue directory."""
    return String(nonempty=True, what="path")


@dataclass(frozen=True)
class Enum(ValueType):
    """One word of a fixed set, compared case-insensitively."""

    choices: tuple[str, ...]

    def convert(self, value: Value) -> str:
        text = _scalar(value, "one of " + ", ".join(self.choices))
        for choice in self.choices:
            if text.lower() == choice.lower():
                return choice
        raise Invalid(f"'{text}' is not one of: {', '.join(self.choices)}")

    def format(self, value: str) -> Value:
        return Scalar(value)

    def describe(self) -> str:
        return " | ".join(self.choices)


@dataclass(frozen=True)
class IPAddress(ValueType):
    def convert(self, value: Value) -> str:
        text = _scalar(value, "an IP address")
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise Invalid(f"'{text}' is not an IPv4 or IPv6 address") from None

    def format(self, value: str) -> Value:
        return Scalar(value)

    def describe(self) -> str:
        return "IP address"


_V6_PORT_RE = re.compile(r"\[([^\]]+)\]:([0-9]+)")


@dataclass(frozen=True)
class Endpoint(ValueType):
    """``ADDRESS``, ``IPv4:PORT`` or ``[IPv6]:PORT`` → (address, port)."""

    default_port: int

    def convert(self, value: Value) -> tuple[str, int]:
        text = _scalar(value, "an address")
        host, port = text, self.default_port
        m = _V6_PORT_RE.fullmatch(text)
        if m:
            host, port = m.group(1), int(m.group(2))
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            if not (port_text.isascii() and port_text.isdigit()):
                raise Invalid(f"'{text}': the port must be a number")
            port = int(port_text)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise Invalid(f"'{text}' is not ADDRESS, IPv4:PORT or [IPv6]:PORT") from None
        _check_range(port, 1, 65535)
        return str(address), port

    def format(self, value: tuple[str, int]) -> Value:
        address, port = value
        if port == self.default_port:
            return Scalar(address)
        return Scalar(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")

    def describe(self) -> str:
        return f"ADDRESS, IPv4:PORT or [IPv6]:PORT (port {self.default_port} if omitted)"


def _items(value: Value) -> tuple[Value, ...]:
    """A list's items; a single value is a one-item list (decisions.md, D-VAL-5)."""
    return value.items if isinstance(value, ListValue) else (value,)


def _item_error(exc: Invalid, item: Value) -> Invalid:
    return Invalid(str(exc), exc.pos or item.pos)


@dataclass(frozen=True)
class ListOf(ValueType):
    item: ValueType
    min_items: int = 0
    unique: bool = True

    def convert(self, value: Value) -> tuple[Any, ...]:
        result = []
        for item in _items(value):
            if isinstance(item, ListValue):
                raise Invalid("a nested list is not allowed here", item.pos)
            try:
                converted = self.item.convert(item)
            except Invalid as exc:
                raise _item_error(exc, item) from None
            if self.unique and converted in result:
                raise Invalid(f"'{item.text}' is listed twice", item.pos)
            result.append(converted)
        if len(result) < self.min_items:
            raise Invalid(f"the list needs at least {self.min_items} item(s)")
        return tuple(result)

    def format(self, value: tuple[Any, ...]) -> Value:
        return ListValue(tuple(self.item.format(v) for v in value))

    def describe(self) -> str:
        return f"list of {self.item.describe()}"


NEGATION = "dont_"


@dataclass(frozen=True)
class Flags(ValueType):
    """A ``flags = { ... }`` list over a fixed set of flags, each with a default.

    Naming a flag turns it on; ``dont_<flag>`` turns it off (B14). Flags in one
    ``exclusive`` group are alternatives of which exactly one is on: naming one turns the
    others off, naming two is an error, turning all off is an error. The converted value
    maps every known flag to on/off.
    """

    known: Mapping[str, bool]
    exclusive: tuple[tuple[str, ...], ...] = ()
    docs: Mapping[str, str] = field(default_factory=dict)

    def defaults(self) -> dict[str, bool]:
        return dict(self.known)

    def named(self, value: Value) -> dict[str, tuple[bool, Value]]:
        """The flags ``value`` names, each on or off, with the item that named it."""
        chosen: dict[str, tuple[bool, Value]] = {}
        for item in _items(value):
            if isinstance(item, ListValue):
                raise Invalid("a nested list is not allowed in flags", item.pos)
            word = item.text.lower()
            on = not word.startswith(NEGATION)
            flag = word if on else word[len(NEGATION):]
            if flag not in self.known:
                known = ", ".join(self.known) or "none"
                raise Invalid(f"unknown flag '{item.text}' (known: {known})", item.pos)
            if flag in chosen:
                raise Invalid(f"flag '{flag}' is given more than once", item.pos)
            chosen[flag] = (on, item)
        return chosen

    def convert(self, value: Value) -> dict[str, bool]:
        chosen = self.named(value)
        result = self.defaults()
        for group in self.exclusive:
            named = [f for f in group if f in chosen and chosen[f][0]]
            if len(named) > 1:
                raise Invalid(f"flags {' and '.join(named)} exclude each other", chosen[named[1]][1].pos)
            if named:
                result.update({f: False for f in group})
        result.update({flag: on for flag, (on, _) in chosen.items()})
        for group in self.exclusive:
            if not any(result[f] for f in group):
                raise Invalid(f"one of the flags {', '.join(group)} must be on")
        return result

    def format(self, value: dict[str, bool]) -> Value:
        """Every flag that is on, and ``dont_`` for those that are off but default on."""
        words = [f for f in self.known if value[f]]
        implied_off = {f for g in self.exclusive if any(value[x] for x in g) for f in g}
        words += [NEGATION + f for f in self.known if not value[f] and self.known[f] and f not in implied_off]
        return ListValue(tuple(Scalar(w) for w in words))

    def describe(self) -> str:
        return "flags: " + ", ".join(f"{f} ({'on' if on else 'off'})" for f, on in self.known.items())


@dataclass(frozen=True)
class FlagChanges(Flags):
    """Flags that change others' values: only the flags named, ``{flag: on}``.

    For configuration that applies on top of a section already loaded (an
    ``smtps_session_conf:`` entry over its smtps section, spec/policy.md D-POL-26): a flag
    the text does not name keeps the section's value, not the flag's default. The words
    are those of :class:`Flags`; the set has no exclusive groups (which would need the
    section's values to be checked).
    """

    def __post_init__(self) -> None:
        if self.exclusive:
            raise ValueError("FlagChanges cannot check exclusive groups")

    def convert(self, value: Value) -> dict[str, bool]:
        return {flag: on for flag, (on, _) in self.named(value).items()}

    def format(self, value: dict[str, bool]) -> Value:
        return ListValue(tuple(Scalar(flag if on else NEGATION + flag) for flag, on in value.items()))

    def describe(self) -> str:
        return "flags to turn on (name) or off (dont_name): " + ", ".join(self.known)


@dataclass(frozen=True)
class Reference(ValueType):
    """The name of another entry (a map, a service); checked after the whole file is read."""

    kind: str
    case_insensitive: bool = False

    def convert(self, value: Value) -> str:
        text = _scalar(value, f"a {self.kind} name")
        if not text:
            raise Invalid(f"the {self.kind} name must not be empty")
        return text.lower() if self.case_insensitive else text

    def format(self, value: str) -> Value:
        return Scalar(value)

    def describe(self) -> str:
        return f"{self.kind} name"
