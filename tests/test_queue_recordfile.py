"""The record container: fixed bytes, and torn tails told apart from every other damage."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from meta1.ipc.codec import encode
from meta1.ipc.records import CommitResult, Hello
from meta1.queue.recordfile import (CDB_MAGIC, IBDB_MAGIC, MAX_RECORD, CdbData, CdbEnd, CdbHeader, DamagedFile,
                                    IbdbEnd, TornTail, iter_records, pack_record)

RECORDS = [CdbHeader("S0000000000000000A00", 5), CdbData(b"x" * 40), IbdbEnd(1234)]
FILE = IBDB_MAGIC + b"".join(pack_record(rec) for rec in RECORDS)
LAST = len(FILE) - len(pack_record(RECORDS[-1]))


def read_all(data: bytes) -> list:
    return [rec for _, rec in iter_records(data, IBDB_MAGIC, "f")]


def damage_of(data: bytes) -> DamagedFile:
    with pytest.raises(DamagedFile) as failure:
        read_all(data)
    return failure.value


def test_golden_bytes_of_a_container_record() -> None:
    assert pack_record(IbdbEnd(8)) == bytes.fromhex(
        "0000000a"            # length of type + fields: 10
        "fffffff5"            # its check word: length XOR 0xFFFFFFFF
        "006e"                # type 110 (IBDB End)
        "0000000000000008"    # size, i64
        "79f0ba72")           # CRC-32 of type + fields
    assert zlib.crc32(bytes.fromhex("006e0000000000000008")) == 0x79F0BA72
    assert (CDB_MAGIC, IBDB_MAGIC) == (b"M1CDB\0\0\1", b"M1IBDB\0\2")


def test_records_come_back_with_their_offsets() -> None:
    found = list(iter_records(io.BytesIO(FILE), IBDB_MAGIC, "f"))
    assert [rec for _, rec in found] == RECORDS
    assert found[0][0] == 8 and found[-1][0] == LAST
    assert read_all(IBDB_MAGIC) == []


def test_a_cut_anywhere_in_the_last_record_is_a_torn_tail_at_its_start() -> None:
    for cut in range(LAST + 1, len(FILE)):
        torn = damage_of(FILE[:cut])
        assert isinstance(torn, TornTail) and torn.torn, cut
        assert torn.offset == LAST
    assert read_all(FILE[:LAST]) == RECORDS[:-1]


def test_a_cut_inside_the_magic_or_an_empty_file_is_a_torn_tail_at_zero() -> None:
    for cut in range(0, 8):
        torn = damage_of(FILE[:cut])
        assert isinstance(torn, TornTail) and torn.offset == 0


def test_zeros_where_the_filesystem_extended_the_file_are_a_torn_tail() -> None:
    torn = damage_of(FILE + bytes(4096))
    assert isinstance(torn, TornTail) and torn.offset == len(FILE)
    assert isinstance(damage_of(bytes(100)), TornTail)
    # ...but zeros followed by anything else are damage
    assert not isinstance(damage_of(FILE + bytes(100) + b"\x01"), TornTail)


def test_every_single_bit_flip_is_damage_never_a_torn_tail() -> None:
    # The length's check word is what keeps a flipped length bit in the middle of a file from
    # looking like a record that runs past the end of the file.
    for offset in range(len(FILE)):
        for bit in range(8):
            data = bytearray(FILE)
            data[offset] ^= 1 << bit
            damage = damage_of(bytes(data))
            assert not damage.torn, (offset, bit, damage)


def raw_record(type_id: int, fields: bytes, length: int | None = None, check: int | None = None) -> bytes:
    payload = struct.pack(">H", type_id) + fields
    length = len(payload) if length is None else length
    check = length ^ 0xFFFFFFFF if check is None else check
    return struct.pack(">II", length, check) + payload + struct.pack(">I", zlib.crc32(payload))


@pytest.mark.parametrize("tail, reason", [
    (raw_record(4242, b"abc"), "unknown record type 4242"),
    (raw_record(4242, b"abc")[:-3], "unknown record type 4242 (in a record cut short)"),
    (raw_record(110, b"\x00" * 7), "does not decode"),
    (raw_record(110, b"")[:8], None),  # a complete header and nothing else: torn
    (struct.pack(">II", 1, 1 ^ 0xFFFFFFFF) + b"\x00" * 5, "no room for a type"),
    (struct.pack(">II", MAX_RECORD + 1, (MAX_RECORD + 1) ^ 0xFFFFFFFF), "larger than"),
    (struct.pack(">II", 10, 10), "does not match its check word"),
    (b"\x00" * 8 + b"\x07", "does not match its check word"),
])
def test_damage_is_named(tail: bytes, reason: str | None) -> None:
    damage = damage_of(FILE + tail)
    assert damage.offset == len(FILE)
    if reason is None:
        assert damage.torn
    else:
        assert not damage.torn and reason in damage.reason, damage


def test_bad_magic_and_a_record_of_another_kind() -> None:
    assert "bad magic" in damage_of(CDB_MAGIC + FILE[8:]).reason
    # The container accepts any registered record; which ones belong is the file kind's business.
    assert read_all(IBDB_MAGIC + pack_record(Hello(1, "x", 1, 1))) == [Hello(1, "x", 1, 1)]


def test_the_payload_of_a_record_is_the_ipc_encoding() -> None:
    rec = CommitResult("S0000000000000000A00", False, "disk full")
    packed = pack_record(rec)
    assert packed[8:-4] == encode(rec)
    assert pack_record(CdbEnd(0, 0))[8:10] == b"\x00\x66"
