"""The record codec: exact round trips, fixed bytes, and nothing but ProtocolError on bad input."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta1.ipc import codec
from meta1.ipc.codec import MAX_LIST, MAX_STRING, FrameDecoder, ProtocolError, decode, encode, frame, record
from meta1.ipc.records import (PROTOCOL_VERSION, Commit, CommitResult, Delivery, Hello, PolicyVerdict, Recipient,
                               Target, Transaction, handshake_check)


# Test-only record types (ids far from the real ones) covering every supported annotation.
@record(60001)
class Inner:
    flag: bool
    blob: bytes


@record(60002)
class Everything:
    number: int
    flag: bool
    text: str
    blob: bytes
    maybe_text: str | None
    maybe_number: int | None
    words: tuple[str, ...]
    inner: Inner
    inners: tuple[Inner, ...]
    maybe_inner: Inner | None
    nested: tuple[tuple[int, ...], ...] | None


@record(60003)
class Empty:
    pass


INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Strings as the codec sees them: any text, and any octets a client may send (not UTF-8
# octets become surrogate escapes; the codec must give back exactly those octets).
TEXT = st.one_of(st.text(max_size=30),
                 st.binary(max_size=30).map(lambda raw: raw.decode("utf-8", "surrogateescape")))
SCALARS = {int: INT64, bool: st.booleans(), str: TEXT, bytes: st.binary(max_size=30)}


def values_for(annotation) -> st.SearchStrategy:
    """A strategy for values of one supported field annotation."""
    if annotation in SCALARS:
        return SCALARS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return st.lists(values_for(args[0]), max_size=4).map(tuple)
    if args and type(None) in args:
        (present,) = [arg for arg in args if arg is not type(None)]
        return st.none() | values_for(present)
    return records_of(annotation)


def records_of(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: values_for(hints[f.name]) for f in dataclasses.fields(cls)})


ALL_RECORDS = st.one_of([records_of(cls) for cls in
                         (Everything, Empty, Inner, Hello, Recipient, Transaction, Commit, CommitResult,
                          PolicyVerdict, Delivery)])


def transaction(**changes) -> Transaction:
    base = Transaction(
        ta_id="S0000018C2B7E5F0A00", session_id="S0000018C2B7E5F0900", arrival=2**33 * 10**6,
        sender="", size=1234, body="8BITMIME", smtputf8=False, ret="HDRS", envid="env+id",
        auth=None, client_address="192.0.2.1", client_port=40000, helo="client.example",
        recipients=(Recipient("S0000018C2B7E5F0A00-0000", "a@example.org", ("SUCCESS", "FAILURE"),
                              "rfc822", "a@example.org"),
                    Recipient("S0000018C2B7E5F0A00-0001", "b@example.org", None, None, None)),
        content="cdb/a/S0000018C2B7E5F0A00")
    return dataclasses.replace(base, **changes)


# -- round trips -------------------------------------------------------------------------

@settings(deadline=None, max_examples=300)
@given(ALL_RECORDS)
def test_decode_is_the_inverse_of_encode(rec) -> None:
    payload = encode(rec)
    assert decode(payload) == rec
    assert type(decode(payload)) is type(rec)
    assert FrameDecoder().feed(frame(rec)) == [rec]


def test_a_transaction_round_trips_with_times_after_2038_and_odd_octets() -> None:
    rec = Commit(transaction(helo=b"h\xff\xfe\x00lo".decode("utf-8", "surrogateescape"),
                             sender="\u00e9t\u00e9@exampl\u00e9.org", smtputf8=True))
    back = decode(encode(rec))
    assert back == rec
    assert back.transaction.arrival == 2**33 * 10**6
    assert back.transaction.helo.encode("utf-8", "surrogateescape") == b"h\xff\xfe\x00lo"


def test_a_delivery_target_carries_its_timers_and_smtpcs_own_are_0_d_pol_28() -> None:
    target = Target("mx.example.org", "192.0.2.25", 25, 10, connect_timeout=30, io_timeout=2, final_dot_timeout=1200)
    rec = Delivery(7, transaction(), (target, Target("mx2.example.org", "192.0.2.26", 25, 20)), False, True)
    back = decode(encode(rec))
    assert back == rec
    assert [(t.connect_timeout, t.io_timeout, t.final_dot_timeout) for t in back.targets] == [(30, 2, 1200),
                                                                                              (0, 0, 0)]


def test_records_are_frozen_and_carry_their_type() -> None:
    assert (Hello.TYPE, Recipient.TYPE, Transaction.TYPE, Commit.TYPE, CommitResult.TYPE) == (1, 10, 11, 20, 21)
    hello = Hello(PROTOCOL_VERSION, "smtps", 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hello.pid = 2  # type: ignore[misc]
    assert codec.record_class(1) is Hello and codec.record_class(59999) is None


# -- fixed bytes: the same on every architecture ----------------------------------------------

def test_golden_bytes_of_a_hello_frame() -> None:
    assert frame(Hello(version=1, role="smtps", pid=258, instance=3)) == bytes.fromhex(
        "00000023"              # frame length 35
        "0001"                  # type 1 (Hello)
        "0000000000000001"      # version, i64
        "00000005" "736d747073"  # role, u32 length + UTF-8
        "0000000000000102"      # pid 258
        "0000000000000003")     # instance


def test_golden_bytes_of_every_field_kind() -> None:
    rec = Everything(number=-2, flag=True, text="\u00e9\udcff", blob=b"\x00\x01", maybe_text=None,
                     maybe_number=2**40, words=("a", ""), inner=Inner(False, b""), inners=(),
                     maybe_inner=Inner(True, b"z"), nested=((7,),))
    assert encode(rec) == bytes.fromhex(
        "ea62"                          # type 60002
        "fffffffffffffffe"              # -2, two's complement, big-endian
        "01"                            # True
        "00000003" "c3a9ff"             # é then the escaped octet 0xFF
        "00000002" "0001"               # bytes
        "00"                            # None
        "01" "0000010000000000"         # present, 2**40
        "00000002" "00000001" "61" "00000000"  # ("a", "")
        "00" "00000000"                 # Inner(False, b"") inline, no type id
        "00000000"                      # ()
        "01" "01" "00000001" "7a"       # Inner(True, b"z")
        "01" "00000001" "00000001" "0000000000000007")  # ((7,),)


# -- refusing what cannot be carried exactly --------------------------------------------------

@pytest.mark.parametrize("bad", [
    dict(pid=2**63), dict(pid=-(2**63) - 1), dict(pid="1"), dict(pid=True), dict(role=b"smtps"),
    dict(role="\ud800"), dict(role="\udcc3\udca9"), dict(role="x" * (MAX_STRING + 1)),
])
def test_encode_refuses_values_it_cannot_carry_exactly(bad) -> None:
    fields = dict(version=1, role="smtps", pid=1, instance=0) | bad
    with pytest.raises(ProtocolError):
        encode(Hello(**fields))


def test_encode_refuses_wrong_nested_types_and_unregistered_objects() -> None:
    with pytest.raises(ProtocolError, match=r"Transaction.recipients: \[0\]"):
        encode(transaction(recipients=("a@example.org",)))
    with pytest.raises(ProtocolError):
        encode(transaction(recipients=[]))  # a list is not a tuple
    with pytest.raises(ProtocolError):
        encode(object())
    with pytest.raises(ProtocolError):
        encode(Everything(0, False, "", b"", None, None, ("",) * (MAX_LIST + 1), Inner(False, b""), (),
                          None, None))


@pytest.mark.parametrize("payload, message", [
    (b"", "no room for a type"),
    (b"\x00", "no room for a type"),
    (b"\xff\xfe", "unknown record type 65534"),
    (encode(CommitResult("S1", True, "ok")) + b"\x00", "left over"),
    (encode(CommitResult("S1", True, "ok"))[:-1], "needed"),
    (bytes.fromhex("0015 00000002 5331 02 00000000"), "bool octet 2"),
    (bytes.fromhex("0015 ffffffff"), f"string of 4294967295 octets exceeds the limit of {MAX_STRING}"),
    (bytes.fromhex("ea61 00 7fffffff"), "bytes of 2147483647 octets exceeds the limit"),
])
def test_decode_refuses_malformed_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(payload)


def test_decode_refuses_an_optional_tag_other_than_0_or_1_and_oversized_counts() -> None:
    good = encode(Recipient("r", "a", None, None, None))
    with pytest.raises(ProtocolError, match="optional tag 2"):
        decode(good[:-5] + b"\x02" + good[-4:])     # orcpt's tag, before nexthop's u32 length
    # A count the remaining octets cannot hold is refused before anything is allocated.
    with pytest.raises(ProtocolError, match="tuple of 65536 items"):
        decode(bytes.fromhex("000a 00000001 72 00000001 61 01 00010000"))
    with pytest.raises(ProtocolError, match="exceeds MAX_LIST"):
        decode(bytes.fromhex("000a 00000001 72 00000001 61 01 00010001"))


@settings(deadline=None, max_examples=500)
@given(st.binary(max_size=200))
def test_decoding_arbitrary_octets_raises_only_protocol_errors(data: bytes) -> None:
    for payload in (data, b"\x00\x0b" + data, b"\xea\x62" + data):
        try:
            rec = decode(payload)
        except ProtocolError:
            continue
        assert encode(rec) == payload  # the encoding is canonical: what decodes, re-encodes the same


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(ALL_RECORDS, st.data())
def test_decoding_mutated_records_raises_only_protocol_errors(rec, data) -> None:
    payload = bytearray(encode(rec))
    mutation = data.draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
    position = data.draw(st.integers(0, len(payload)))
    if mutation == "flip" and position < len(payload):
        payload[position] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "cut":
        del payload[position:]
    elif mutation == "insert":
        payload[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        payload[position:position + 4] = data.draw(st.binary(min_size=4, max_size=4))
    try:
        back = decode(bytes(payload))
    except ProtocolError:
        return
    assert encode(back) == bytes(payload)


# -- the record decorator ---------------------------------------------------------------

def test_string_annotations_of_locally_defined_records_resolve() -> None:
    @record(60010)
    class LocalInner:
        value: int

    @record(60011)
    class LocalOuter:
        inner: LocalInner | None
        items: tuple[LocalInner, ...]

    rec = LocalOuter(LocalInner(5), (LocalInner(-1),))
    assert decode(encode(rec)) == rec


@pytest.mark.parametrize("annotation", ["float", "list[int]", "dict[str, int]", "int | str",
                                        "tuple[int, int]", "typing.Any", "tuple[Empty, ...]"])
def test_unsupported_annotations_are_refused_at_definition(annotation: str) -> None:
    namespace: dict = {}
    exec(f"class Bad:\n    field: {annotation}\n", {"typing": typing, "Empty": Empty}, namespace)
    with pytest.raises(TypeError):
        record(60020)(namespace["Bad"])
    assert codec.record_class(60020) is None


def test_a_record_cannot_contain_itself() -> None:
    with pytest.raises(TypeError, match="cannot contain themselves"):
        @record(60021)
        class Node:
            next: Node | None  # noqa: F821


def test_type_ids_are_unique_and_in_range_and_records_frozen() -> None:
    with pytest.raises(ValueError, match="taken by Hello"):
        @record(1)
        class Impostor:
            x: int
    for bad_id in (0, 65536, -1):
        with pytest.raises(ValueError):
            record(bad_id)

    with pytest.raises(TypeError, match="frozen"):
        @record(60022)
        @dataclasses.dataclass
        class Mutable:
            x: int


def test_post_init_validation_becomes_a_protocol_error_on_decode() -> None:
    @record(60023)
    @dataclasses.dataclass(frozen=True)
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("n must be positive")

    with pytest.raises(ProtocolError, match="n must be positive"):
        decode(bytes.fromhex("ea77 0000000000000000"))


# -- framing -------------------------------------------------------------------------------

STREAM_RECORDS = [Hello(PROTOCOL_VERSION, "smtps", 4242, 1), Commit(transaction()), CommitResult("S1", True, ""),
                  Empty(), Commit(transaction(recipients=()))]
STREAM = b"".join(frame(rec) for rec in STREAM_RECORDS)


def test_frame_decoder_at_every_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == STREAM_RECORDS
        assert decoder.pending == 0


def test_frame_decoder_one_octet_at_a_time() -> None:
    decoder = FrameDecoder()
    got = []
    for i in range(len(STREAM)):
        got += decoder.feed(STREAM[i:i + 1])
    assert got == STREAM_RECORDS


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, len(STREAM)), max_size=8))
def test_frame_decoder_with_any_chunking(cuts) -> None:
    decoder = FrameDecoder()
    got, last = [], 0
    for cut in sorted(cuts) + [len(STREAM)]:
        got += decoder.feed(STREAM[last:cut])
        last = cut
    assert got == STREAM_RECORDS


def test_frame_decoder_refuses_an_oversized_frame_before_buffering_it() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(b"\x00\x00\x00\x65")
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(frame(Empty()))


def test_frame_decoder_hands_over_the_records_before_a_bad_frame() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as failure:
        decoder.feed(frame(Empty()) + frame(Empty()) + b"\x00\x00\x00\x02\xff\xff")
    assert failure.value.records == [Empty(), Empty()]


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_frame_decoder_on_garbage_raises_only_protocol_errors(garbage: bytes, step: int) -> None:
    decoder = FrameDecoder(max_frame=1 << 16)
    try:
        for i in range(0, len(garbage), step):
            decoder.feed(garbage[i:i + step])
    except ProtocolError:
        pass


# -- handshake -----------------------------------------------------------------------------

def test_handshake_check() -> None:
    hello = Hello(PROTOCOL_VERSION, "qmgr", 7, 0)
    assert handshake_check(hello, "qmgr") is hello
    with pytest.raises(ProtocolError, match="version"):
        handshake_check(Hello(PROTOCOL_VERSION + 1, "qmgr", 7, 0), "qmgr")
    with pytest.raises(ProtocolError, match="expected 'smtps'"):
        handshake_check(hello, "smtps")
    with pytest.raises(ProtocolError, match="expected Hello"):
        handshake_check(CommitResult("S1", True, ""), "qmgr")
