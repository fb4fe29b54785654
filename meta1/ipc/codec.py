"""The typed record codec: one binary encoding for inter-daemon messages and queue files.

Responsibilities
    Turn a *record* — a frozen dataclass registered with a numeric type id — into bytes
    and back, exactly; frame records on a byte stream (the UNIX-domain sockets between
    the daemons); refuse anything malformed with :class:`ProtocolError` and with no other
    exception, so that a receiver can never be crashed by what a peer (or a damaged file)
    sends it (DESIGN.md: "malformed input is a protocol error, never a crash").

Data
    A registry ``type id → record class``, filled by the :func:`record` class decorator
    at import time. Ids are u16; 1–99 are IPC records (:mod:`meta1.ipc.records`),
    100 and up are records that only live in queue files (:mod:`meta1.queue.recordfile`).

Encoding (all integers big-endian, whatever the machine)
    ``payload = type:u16 field*`` — the fields in declaration order, with no names and no
    per-field tags (both sides know the class from the type id):

    ============================  ===========================================================
    annotation                    bytes
    ============================  ===========================================================
    ``int``                       i64, two's complement (times are ints: never ``time_t``)
    ``bool``                      u8, 0 or 1 (anything else is refused)
    ``str``                       u32 length + UTF-8, ``errors="surrogateescape"``
    ``bytes``                     u32 length + the bytes
    ``X | None``                  u8 0 (None) or u8 1 followed by X
    ``tuple[X, ...]``             u32 count + count × X
    a nested ``@record`` class    its fields, inline (no type id: the annotation fixes it)
    ============================  ===========================================================

    ``frame = length:u32 payload`` on sockets. Fixed byte order and fixed widths make the
    bytes the same on i386 and x86_64, which is what lets a queue written by one be read
    by the other (DESIGN.md, "Architectures").

Strategy
    * Annotations are resolved once, at decoration time, with :func:`typing.get_type_hints`
      (so ``from __future__ import annotations`` works), and compiled into a pair of
      closures per field; an unsupported annotation is a ``TypeError`` at import, not a
      surprise at run time. A record cannot contain itself (directly or through other
      records): the resolver refuses the forward reference, which keeps the nesting depth
      of any decode fixed by the class definitions, whatever the input.
    * Strings carry arbitrary bytes: decoding uses ``surrogateescape``, so a byte that is
      not UTF-8 (a client's odd HELO, say) becomes a lone surrogate and encodes back to the
      same byte. Decoding therefore never fails on "bad UTF-8". Encoding refuses a string
      that is not the image of some byte string (a lone surrogate outside U+DC80–U+DCFF,
      or escaped bytes that would decode as a different, valid sequence): otherwise
      ``decode(encode(r)) == r`` would not hold.
    * Every length and count is checked against the bytes that remain *before* anything is
      allocated, and a tuple's count against the smallest possible encoding of its item
      (a record type whose encoding can be empty is refused as a tuple item), so the work
      and memory of a decode are linear in the payload's size. The explicit limits
      (:data:`MAX_STRING`, :data:`MAX_BYTES`, :data:`MAX_LIST`, :data:`MAX_FRAME`) bound what
      one record may claim at all.
    * A record class may validate itself in ``__post_init__``; whatever it raises while
      decoding is turned into :class:`ProtocolError`.
    * :func:`encode` refuses what it cannot encode exactly (wrong type, int out of
      64-bit range, limits) with :class:`ProtocolError` too: one exception type for
      "the codec will not carry this", on both sides.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")

MAX_FRAME = 16 * 1024 * 1024
"""Largest payload (type + fields) of one record, in octets, on a socket or in a file."""
MAX_STRING = 1024 * 1024
"""Largest encoded ``str`` field, in octets. SMTP's own limits are far below this."""
MAX_BYTES = MAX_FRAME
"""Largest ``bytes`` field, in octets (content chunks in queue files are 64 KiB)."""
MAX_LIST = 65536
"""Most items in one ``tuple`` field (RFC 5321 §4.5.3.1.8 asks for 100 recipients)."""

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_FRAME_HEADER = _U32


class ProtocolError(Exception):
    """Malformed input, or a value the codec cannot carry.

    :meth:`FrameDecoder.feed` sets ``records`` to the records it decoded completely before
    the bad frame, so a receiver may still act on them before closing the connection.
    """

    records: list[object] = []


EncodeFn = Callable[[Any, list], None]
DecodeFn = Callable[[bytes, int], "tuple[Any, int]"]


@dataclass(frozen=True)
class _FieldCodec:
    """How one annotation is written and read; ``min_size`` is its smallest encoding."""

    encode: EncodeFn
    decode: DecodeFn
    min_size: int
    name: str


@dataclass(frozen=True)
class _RecordCodec:
    cls: type
    body: _FieldCodec  # the record's fields, inline


_REGISTRY: dict[int, _RecordCodec] = {}
_BY_CLASS: dict[type, _RecordCodec] = {}


def _need(data: bytes, pos: int, count: int, what: str) -> None:
    if count > len(data) - pos:
        raise ProtocolError(f"{what}: {count} octets needed, {len(data) - pos} left in the payload")


# -- scalar field codecs --------------------------------------------------------------

def _enc_int(value: Any, out: list) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"expected int, got {type(value).__name__}")
    try:
        out.append(_I64.pack(value))
    except struct.error:
        raise ProtocolError(f"int {value} does not fit in 64 bits") from None


def _dec_int(data: bytes, pos: int) -> tuple[int, int]:
    _need(data, pos, 8, "int")
    return _I64.unpack_from(data, pos)[0], pos + 8


def _enc_bool(value: Any, out: list) -> None:
    if value is True:
        out.append(b"\x01")
    elif value is False:
        out.append(b"\x00")
    else:
        raise ProtocolError(f"expected bool, got {type(value).__name__}")


def _dec_bool(data: bytes, pos: int) -> tuple[bool, int]:
    _need(data, pos, 1, "bool")
    octet = data[pos]
    if octet > 1:
        raise ProtocolError(f"bool octet {octet} is neither 0 nor 1")
    return octet == 1, pos + 1


def _str_to_bytes(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        pass
    # Only strings with surrogates get here: the slow path checks that the string is the
    # one its bytes decode to, so that a decode gives back exactly what was encoded.
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"string holds a surrogate that stands for no byte: {exc.reason}") from None
    if raw.decode("utf-8", "surrogateescape") != value:
        raise ProtocolError("string holds escaped bytes that would decode as different text")
    return raw


def _put_octets(raw: bytes, limit: int, what: str, out: list) -> None:
    """``length:u32`` and the octets: the shape of both ``str`` and ``bytes``."""
    if len(raw) > limit:
        raise ProtocolError(f"{what} of {len(raw)} octets exceeds the limit of {limit}")
    out.append(_U32.pack(len(raw)))
    out.append(raw)


def _take_octets(data: bytes, pos: int, limit: int, what: str) -> tuple[bytes, int]:
    _need(data, pos, 4, f"{what} length")
    (length,) = _U32.unpack_from(data, pos)
    if length > limit:
        raise ProtocolError(f"{what} of {length} octets exceeds the limit of {limit}")
    pos += 4
    _need(data, pos, length, what)
    return data[pos:pos + length], pos + length


def _enc_str(value: Any, out: list) -> None:
    if not isinstance(value, str):
        raise ProtocolError(f"expected str, got {type(value).__name__}")
    _put_octets(_str_to_bytes(value), MAX_STRING, "string", out)


def _dec_str(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _take_octets(data, pos, MAX_STRING, "string")
    return raw.decode("utf-8", "surrogateescape"), pos


def _enc_bytes(value: Any, out: list) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise ProtocolError(f"expected bytes, got {type(value).__name__}")
    _put_octets(bytes(value), MAX_BYTES, "bytes", out)


def _dec_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    return _take_octets(data, pos, MAX_BYTES, "bytes")


_SCALARS: dict[type, _FieldCodec] = {
    int: _FieldCodec(_enc_int, _dec_int, 8, "int"),
    bool: _FieldCodec(_enc_bool, _dec_bool, 1, "bool"),
    str: _FieldCodec(_enc_str, _dec_str, 4, "str"),
    bytes: _FieldCodec(_enc_bytes, _dec_bytes, 4, "bytes"),
}


# -- composite field codecs -----------------------------------------------------------

def _optional(inner: _FieldCodec) -> _FieldCodec:
    def enc(value: Any, out: list) -> None:
        if value is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01")
            inner.encode(value, out)

    def dec(data: bytes, pos: int) -> tuple[Any, int]:
        _need(data, pos, 1, "optional tag")
        tag = data[pos]
        if tag == 0:
            return None, pos + 1
        if tag != 1:
            raise ProtocolError(f"optional tag {tag} is neither 0 nor 1")
        return inner.decode(data, pos + 1)

    return _FieldCodec(enc, dec, 1, f"{inner.name} | None")


def _sequence(item: _FieldCodec) -> _FieldCodec:
    item_encode, item_decode, item_size = item.encode, item.decode, item.min_size

    def enc(value: Any, out: list) -> None:
        if not isinstance(value, tuple):
            raise ProtocolError(f"expected tuple, got {type(value).__name__}")
        if len(value) > MAX_LIST:
            raise ProtocolError(f"tuple of {len(value)} items exceeds MAX_LIST ({MAX_LIST})")
        out.append(_U32.pack(len(value)))
        for index, element in enumerate(value):
            try:
                item_encode(element, out)
            except ProtocolError as exc:
                raise ProtocolError(f"[{index}]: {exc}") from None

    def dec(data: bytes, pos: int) -> tuple[tuple, int]:
        _need(data, pos, 4, "tuple count")
        (count,) = _U32.unpack_from(data, pos)
        if count > MAX_LIST:
            raise ProtocolError(f"tuple of {count} items exceeds MAX_LIST ({MAX_LIST})")
        pos += 4
        _need(data, pos, count * item_size, f"tuple of {count} items")
        items = []
        for _ in range(count):
            element, pos = item_decode(data, pos)
            items.append(element)
        return tuple(items), pos

    return _FieldCodec(enc, dec, 4, f"tuple[{item.name}, ...]")


def _record_body(cls: type, fields: list[tuple[str, _FieldCodec]]) -> _FieldCodec:
    """The inline encoding of a record's fields, used at top level and when nested."""
    names = [name for name, _ in fields]
    encoders = [codec.encode for _, codec in fields]
    decoders = [codec.decode for _, codec in fields]
    label = cls.__name__

    def enc(value: Any, out: list) -> None:
        if type(value) is not cls:
            raise ProtocolError(f"expected {label}, got {type(value).__name__}")
        for name, encode_field in zip(names, encoders):
            try:
                encode_field(getattr(value, name), out)
            except ProtocolError as exc:
                raise ProtocolError(f"{label}.{name}: {exc}") from None

    def dec(data: bytes, pos: int) -> tuple[Any, int]:
        values = []
        for name, decode_field in zip(names, decoders):
            try:
                value, pos = decode_field(data, pos)
            except ProtocolError as exc:
                raise ProtocolError(f"{label}.{name}: {exc}") from None
            values.append(value)
        try:
            return cls(*values), pos
        except Exception as exc:  # the class's own __post_init__ refused the values
            raise ProtocolError(f"{label}: {exc}") from None

    return _FieldCodec(enc, dec, sum(codec.min_size for _, codec in fields), label)


def _compile(annotation: Any, where: str) -> _FieldCodec:
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation in _BY_CLASS:
        return _BY_CLASS[annotation].body
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        if len(present) == 1 and len(args) == 2:
            return _optional(_compile(present[0], where))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _compile(args[0], where)
        if item.min_size == 0:
            raise TypeError(f"{where}: tuple items of {item.name} may encode to nothing; "
                            "a count could then claim unbounded work")
        return _sequence(item)
    raise TypeError(f"{where}: unsupported field annotation {annotation!r} (int, bool, str, bytes, "
                    "X | None, tuple[X, ...] and @record classes are)")


def record(type_id: int) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` a frozen dataclass (unless it already is one), check
    and compile its field annotations, set ``cls.TYPE = type_id`` and register it."""
    if not isinstance(type_id, int) or not 1 <= type_id <= 0xFFFF:
        raise ValueError(f"record type id {type_id!r} is not in 1..65535")
    # Annotations of a class defined inside a function (tests do that) name locals of
    # that function; get_type_hints only sees them through the defining frame.
    defining_locals = dict(sys._getframe(1).f_locals)

    def register(cls: type[T]) -> type[T]:
        if dataclasses.is_dataclass(cls):
            if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
                raise TypeError(f"{cls.__name__}: a record must be a frozen dataclass")
        else:
            cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        try:
            hints = typing.get_type_hints(cls, localns=defining_locals)
        except NameError as exc:
            raise TypeError(f"{cls.__name__}: cannot resolve a field annotation ({exc}); "
                            "records must be defined after the records they contain, "
                            "and cannot contain themselves") from None
        fields = [(f.name, _compile(hints[f.name], f"{cls.__name__}.{f.name}"))
                  for f in dataclasses.fields(cls)]
        previous = _REGISTRY.get(type_id)
        if previous is not None and (previous.cls.__module__, previous.cls.__qualname__) != (
                cls.__module__, cls.__qualname__):
            raise ValueError(f"record type id {type_id} is taken by {previous.cls.__qualname__}")
        codec = _RecordCodec(cls, _record_body(cls, fields))
        cls.TYPE = type_id  # type: ignore[attr-defined]
        _REGISTRY[type_id] = codec
        _BY_CLASS[cls] = codec
        return cls

    return register


def record_class(type_id: int) -> type | None:
    """The record class registered for ``type_id``, or None."""
    codec = _REGISTRY.get(type_id)
    return codec.cls if codec is not None else None


def encode(rec: object) -> bytes:
    """``type:u16`` followed by the record's fields; ProtocolError if it cannot be carried."""
    codec = _BY_CLASS.get(type(rec))
    if codec is None:
        raise ProtocolError(f"{type(rec).__name__} is not a registered record type")
    out: list = [_U16.pack(rec.TYPE)]  # type: ignore[attr-defined]
    codec.body.encode(rec, out)
    payload = b"".join(out)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"{type(rec).__name__} encodes to {len(payload)} octets, over MAX_FRAME")
    return payload


def decode(payload: bytes) -> object:
    """The exact inverse of :func:`encode`; ProtocolError for anything else."""
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    if len(payload) < 2:
        raise ProtocolError(f"payload of {len(payload)} octets has no room for a type")
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"payload of {len(payload)} octets exceeds MAX_FRAME")
    (type_id,) = _U16.unpack_from(payload, 0)
    codec = _REGISTRY.get(type_id)
    if codec is None:
        raise ProtocolError(f"unknown record type {type_id}")
    rec, end = codec.body.decode(payload, 2)
    if end != len(payload):
        raise ProtocolError(f"{codec.cls.__name__}: {len(payload) - end} octets left over after the record")
    return rec


def frame(rec: object) -> bytes:
    """``length:u32 payload``: one record ready for a stream socket."""
    payload = encode(rec)
    return _FRAME_HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into records; feed it whatever ``recv`` returned.

    A frame longer than ``max_frame`` is refused as soon as its length is seen, so a peer
    cannot make the receiver buffer more than ``max_frame`` + one read. After a
    ProtocolError the stream has no trustworthy frame boundary any more: the decoder stays
    failed and the connection is to be closed.
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._failure: str | None = None

    def feed(self, data: bytes) -> list[object]:
        if self._failure is not None:
            raise ProtocolError(f"stream already failed: {self._failure}")
        buffer = self._buffer
        buffer += data
        records: list[object] = []
        pos = 0
        try:
            while len(buffer) - pos >= 4:
                (length,) = _FRAME_HEADER.unpack_from(buffer, pos)
                if length > self._max_frame:
                    raise ProtocolError(f"frame of {length} octets exceeds the limit of {self._max_frame}")
                if len(buffer) - pos - 4 < length:
                    break
                records.append(decode(bytes(buffer[pos + 4:pos + 4 + length])))
                pos += 4 + length
        except ProtocolError as exc:
            self._failure = str(exc)
            self._buffer = bytearray()
            exc.records = records
            raise
        del buffer[:pos]
        return records

    @property
    def pending(self) -> int:
        """Octets received but not yet part of a complete frame."""
        return len(self._buffer)
