"""The record container shared by content files (CDB) and the incoming log (IBDB).

Responsibilities
    Write one typed record as container bytes (:func:`pack_record`), read records back
    from a file or a buffer (:func:`iter_records`, :func:`read_record_at`) and say
    precisely what is wrong when the bytes are not what a writer of this format can have
    left behind (:class:`DamagedFile`, :class:`TornTail`). Also defines the record types
    that exist only inside files (ids ≥ 100).

Byte layout (big-endian; spec/queue.md has the table)
    ::

        file   = magic(8) record*
        record = length:u32 check:u32 type:u16 fields crc:u32

    ``type fields`` is exactly an IPC codec payload (:func:`meta1.ipc.codec.encode`), so a
    Transaction is stored as it travelled. ``length`` counts ``type fields``;
    ``check`` is ``length XOR 0xFFFFFFFF`` (DEFLATE's LEN/NLEN, RFC 1951 §3.2.4); ``crc``
    is the CRC-32 (``zlib.crc32``) of ``type fields``.

Torn tail versus damage
    A crash during an append leaves a prefix of what was being written: the last record
    cut short at the end of the file — a *torn tail*, raised as :class:`TornTail` with the
    offset where the cut record starts. A file of a length the filesystem extended before
    the data reached it may also end in zeros, which is a torn tail too (no record is all
    zeros). Everything else is *damage* (:class:`DamagedFile`): bad magic, a length whose
    check does not match, a record longer than :data:`MAX_RECORD`, a bad CRC, an unknown
    type, a payload that does not decode.

    The ``check`` word is what makes the difference trustworthy. Without it, one flipped
    bit in the length of a record in the middle of a file would make that record seem to
    run past the end of the file — a torn tail — and cutting it off would throw away
    every acknowledged record after it. With it, a header that claims a length has to be
    self-consistent before its record may be called torn; a torn record whose own header
    is incomplete is necessarily the last thing in the file. A cut record whose type is
    present must also name a known type.

What this module does not decide
    Which record types belong in which file and in what order (Header Data* End for CDB;
    Transaction… End for IBDB) is the business of :mod:`.cdb` and :mod:`.ibdb`; whether a
    torn tail is tolerable (newest IBDB file: yes, cut it; anything else: damage) too.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import BinaryIO, Iterator

import meta1.ipc.records  # noqa: F401  (registers the IPC types that IBDB stores)
from meta1.ipc.codec import MAX_FRAME, ProtocolError, decode, encode, record, record_class

CDB_MAGIC = b"M1CDB\0\0\1"
IBDB_MAGIC = b"M1IBDB\0\2"    # 2: Recipient.nexthop (D-Q-15)
#: The magics of formats earlier meta1 versions wrote: OlderFormat, not damage (D-Q-15).
EARLIER_MAGICS = frozenset({b"M1IBDB\0\1"})
MAGIC_SIZE = 8
MAX_RECORD = MAX_FRAME
"""Largest ``length`` (type + fields) a reader accepts."""

_HEADER = struct.Struct(">II")  # length, check
_CRC = struct.Struct(">I")
_TYPE = struct.Struct(">H")
_CHECK_MASK = 0xFFFFFFFF
RECORD_OVERHEAD = _HEADER.size + _CRC.size
"""Octets a record adds around its codec payload."""


# -- records that live only in files ---------------------------------------------------

@record(100)
class CdbHeader:
    """First record of a content file: whose content it is and when the file was made."""

    ta_id: str
    created: int  # microseconds since the epoch


@record(101)
class CdbData:
    """A piece of the content: 64 KiB, except the last piece (1 octet to 64 KiB)."""

    data: bytes


@record(102)
class CdbEnd:
    """Last record of a content file: the content's length and CRC-32."""

    size: int
    crc: int


@record(110)
class IbdbEnd:
    """Seals an IBDB file that was rotated; ``size`` is the offset of this record."""

    size: int


class DamagedFile(Exception):
    """A record file that no writer of this format left behind as it is."""

    torn = False

    def __init__(self, path: object, offset: int, reason: str):
        super().__init__(f"{path}: at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class OlderFormat(Exception):
    """A record file an earlier meta1 wrote, in a format this one does not read (D-Q-15).
    Not damage: nothing is quarantined, the reader refuses to go on."""

    def __init__(self, path: object, found: int, expected: int):
        super().__init__(f"{path}: written in format {found} by an earlier meta1; this meta1 reads format "
                         f"{expected}: deliver that queue with the meta1 that wrote it (D-Q-15)")
        self.path = path


class TornTail(DamagedFile):
    """The file ends inside its last record (or its magic): an interrupted append.
    ``offset`` is where the cut record starts — the length to truncate the file to."""

    torn = True


def pack_record(rec: object) -> bytes:
    """The container bytes of one record."""
    payload = encode(rec)
    length = len(payload)
    return _HEADER.pack(length, length ^ _CHECK_MASK) + payload + _CRC.pack(zlib.crc32(payload))


def file_size(stream: BinaryIO) -> int:
    """The size of an open file (or buffer), leaving its position alone."""
    here = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(here)
    return size


def _zeros_to_end(stream: BinaryIO) -> bool:
    while chunk := stream.read(65536):
        if chunk.count(0) != len(chunk):
            return False
    return True


def check_magic(stream: BinaryIO, magic: bytes, path: object) -> None:
    """Read and check the magic at the start of ``stream`` (positioned at 0)."""
    head = stream.read(MAGIC_SIZE)
    if head == magic:
        return
    if len(head) < MAGIC_SIZE and magic.startswith(head):
        raise TornTail(path, 0, f"the file ends inside its magic ({len(head)} of {MAGIC_SIZE} octets)")
    if head in EARLIER_MAGICS and head[:-1] == magic[:-1]:
        raise OlderFormat(path, head[-1], magic[-1])
    if head.count(0) == len(head) and _zeros_to_end(stream):
        raise TornTail(path, 0, "the file holds nothing but zeros")
    raise DamagedFile(path, 0, f"bad magic {head!r}, expected {magic!r}")


def read_record_at(stream: BinaryIO, offset: int, path: object) -> tuple[object, int] | None:
    """``(record, offset after it)`` for the record at ``offset``, None at the end of the
    file; TornTail or DamagedFile as described in the module documentation."""
    stream.seek(offset)
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise TornTail(path, offset, f"record header cut short ({len(header)} of {_HEADER.size} octets)")
    length, check = _HEADER.unpack(header)
    if length == 0 and check == 0 and _zeros_to_end(stream):
        raise TornTail(path, offset, "the file ends in zeros")
    if check != length ^ _CHECK_MASK:
        raise DamagedFile(path, offset, f"length {length} does not match its check word {check:#010x}")
    if length < _TYPE.size:
        raise DamagedFile(path, offset, f"record of {length} octets has no room for a type")
    if length > MAX_RECORD:
        raise DamagedFile(path, offset, f"record of {length} octets is larger than {MAX_RECORD}")
    body = stream.read(length + _CRC.size)
    type_id, known = None, False
    if len(body) >= _TYPE.size:
        (type_id,) = _TYPE.unpack_from(body, 0)
        known = record_class(type_id) is not None
    if len(body) < length + _CRC.size:
        if len(body) >= _TYPE.size and not known:
            raise DamagedFile(path, offset, f"unknown record type {type_id} (in a record cut short)")
        raise TornTail(path, offset, f"record of {length + RECORD_OVERHEAD} octets cut short "
                                     f"({len(body) + _HEADER.size} present)")
    payload = body[:length]
    (crc,) = _CRC.unpack_from(body, length)
    if zlib.crc32(payload) != crc:
        raise DamagedFile(path, offset, f"bad CRC in a record of type {type_id}")
    if not known:
        raise DamagedFile(path, offset, f"unknown record type {type_id}")
    try:
        rec = decode(payload)
    except ProtocolError as exc:
        raise DamagedFile(path, offset, f"record does not decode: {exc}") from None
    return rec, offset + length + RECORD_OVERHEAD


def iter_records(source: bytes | BinaryIO, magic: bytes, path: object = None) -> Iterator[tuple[int, object]]:
    """``(offset, record)`` for every record of a file (an open binary file at offset 0, or
    its bytes); raises TornTail or DamagedFile where the file stops being sound, after
    yielding the sound records before that point."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    check_magic(stream, magic, path)
    offset = MAGIC_SIZE
    while (found := read_record_at(stream, offset, path)) is not None:
        rec, after = found
        yield offset, rec
        offset = after
