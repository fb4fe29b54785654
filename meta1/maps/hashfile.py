"""meta1's map file: a constant hash database, read a key at a time, never loaded whole.

Responsibilities
    The on-disk form of ``type = hash`` maps: :func:`write_entries` writes one from
    (key, value) pairs, :class:`HashFile` opens one and answers ``get(key)`` with at most
    a few ``pread`` calls. ``meta1 createmap`` (:mod:`meta1.maps.createmap`) builds the
    files; smar reads them (:mod:`meta1.maps.local`). spec/maps.md, "The hash map file",
    is the same description with the decisions (D-MAP-1, D-MAP-2).

The layout (all integers big-endian, offsets 64-bit: the same bytes on i386 and x86_64)
    The model is D. J. Bernstein's cdb (records first, then hash tables, a directory of
    the tables; a key is found by hashing it to a table and probing linearly from a slot
    the hash chooses, in tables at most half full). The differences: a header with magic,
    version and checksums, so that a damaged, truncated or foreign file is refused when
    it is opened instead of answering nonsense; 64-bit offsets and 64-bit hashes; the
    directory at the end (its offset is in the header); BLAKE2b as the hash, which the
    stdlib computes in C (cdb's hash is a loop per byte, slow in Python).

    ::

        header     64 bytes
          0  8  magic  89 'M' '1' 'M' 'A' 'P' 0d 0a   (as PNG's: catches 7-bit and
                                                       newline-converting copies)
          8  2  version (1)
         10  2  header size (64)
         12  4  table count T (a power of two; 256 when written by meta1)
         16  8  record count
         24  8  file size (a truncated or appended file is refused)
         32  8  offset of the directory
         40  4  CRC-32 of the directory
         44  4  CRC-32 of the bytes between the header and the directory (records and
                tables; checked by :meth:`HashFile.verify`, not on every open)
         48 12  zero
         60  4  CRC-32 of header bytes 0-59
        records    key length (4), value length (4), key, value — UTF-8, keys lower case
        tables     T tables of slots; a slot is hash (8), record offset (8); offset 0 is
                   an empty slot (no record starts inside the header)
        directory  T entries: table offset (8), slot count (8)

    A key's hash ``h`` is the first 8 bytes of BLAKE2b (digest size 8) of its UTF-8
    bytes, read big-endian. Its table is ``h mod T``; its first slot ``(h div T) mod n``
    for the table's ``n`` slots; probing goes on slot by slot, wrapping, until the key's
    record or an empty slot. Each table has twice as many slots as records (cdb's
    choice), so a probe meets an empty slot soon.

Strategies and why
    * ``pread`` on a descriptor kept open, not ``mmap``: a file changed under a mapping
      (truncated by hand, on a full disk) kills the process with SIGBUS; a short read is
      an error we can report. A lookup costs two to three system calls. The directory
      (4 KiB) is read once at open.
    * A reader keeps the descriptor of the file it opened: ``createmap`` renames a new
      file over the old one, so a reader sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable, Iterator

MAGIC = b"\x89M1MAP\r\n"
VERSION = 1
HEADER = struct.Struct(">8sHHIQQQII12sI")
HEADER_SIZE = HEADER.size               # 64
TABLES = 256
SLOT = struct.Struct(">QQ")             # hash, record offset
DIRECTORY_ENTRY = struct.Struct(">QQ")  # table offset, slot count
RECORD_HEAD = struct.Struct(">II")      # key length, value length
#: Slots read per pread while probing.
PROBE_BATCH = 8
#: Bytes read with a record's head, so that most records take one pread.
RECORD_GUESS = 512
#: The largest key or value accepted (the length fields are 32-bit).
MAX_FIELD = 2**32 - 1
#: Berkeley DB hash files (sendmail's makemap) carry this magic at offset 12.
_BDB_MAGICS = {b"\x00\x06\x15\x61": "a Berkeley DB hash file", b"\x61\x15\x06\x00": "a Berkeley DB hash file",
               b"\x00\x05\x31\x62": "a Berkeley DB btree file", b"\x62\x31\x05\x00": "a Berkeley DB btree file"}

assert HEADER_SIZE == 64


class MapFileError(Exception):
    """A map file that cannot be used: missing, unreadable, foreign, damaged."""


def key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


# ---------------------------------------------------------------------------------------
# Writing


def write_entries(fd: int, entries: Iterable[tuple[str, str]], tables: int = TABLES) -> int:
    """Write a map file of ``entries`` to the descriptor ``fd`` (opened for writing, at
    offset 0, empty). Keys must be unique (ValueError otherwise). Returns the record count.

    The caller makes it durable and puts it in place (:mod:`meta1.maps.createmap`)."""
    if tables < 1 or tables & (tables - 1) or tables > 65536:
        raise ValueError("the table count must be a power of two up to 65536")
    out = _Writer(fd)
    out.write(bytes(HEADER_SIZE))
    slots: list[list[tuple[int, int]]] = [[] for _ in range(tables)]
    seen: set[bytes] = set()
    count = 0
    for key, value in entries:
        kb, vb = key.encode("utf-8"), value.encode("utf-8")
        if not kb:
            raise ValueError("empty key")
        if len(kb) > MAX_FIELD or len(vb) > MAX_FIELD:
            raise ValueError(f"key or value of {key!r} too long")
        if kb in seen:
            raise ValueError(f"key {key!r} appears twice")
        seen.add(kb)
        h = key_hash(kb)
        slots[h & (tables - 1)].append((h, out.offset))
        out.write(RECORD_HEAD.pack(len(kb), len(vb)) + kb + vb)
        count += 1
    directory = bytearray()
    for table in slots:
        n = 2 * len(table)
        cells = [(0, 0)] * n
        for h, offset in table:
            i = (h // tables) % n
            while cells[i][1]:
                i = (i + 1) % n
            cells[i] = (h, offset)
        directory += DIRECTORY_ENTRY.pack(out.offset if n else 0, n)
        out.write(b"".join(SLOT.pack(h, offset) for h, offset in cells))
    directory_offset = out.offset
    data_crc = out.crc
    out.write(bytes(directory))
    size = out.offset
    out.flush()
    head = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, tables, count, size, directory_offset,
                       zlib.crc32(directory), data_crc, bytes(12), 0)
    head = head[:60] + struct.pack(">I", zlib.crc32(head[:60]))
    _pwrite_all(fd, head, 0)
    return count


class _Writer:
    """Sequential buffered writes to a descriptor, with the CRC of what follows the header."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0
        self.crc = 0
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        if self.offset >= HEADER_SIZE:
            self.crc = zlib.crc32(data, self.crc)
        self.buffer += data
        self.offset += len(data)
        if len(self.buffer) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        _pwrite_all(self.fd, bytes(self.buffer), self.offset - len(self.buffer))
        self.buffer.clear()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# ---------------------------------------------------------------------------------------
# Reading


class HashFile:
    """An open map file; ``get(key)`` answers from the file as it was when opened.

    Raises :class:`MapFileError` when the file cannot be opened or is not a sound meta1
    map file (the message says which, for the operator)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise MapFileError(f"{path}: cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(self.fd)
            self.identity = (st.st_dev, st.st_ino)
            self._check(st.st_size)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def _damaged(self, what: str) -> MapFileError:
        return MapFileError(f"{self.path}: damaged map file ({what}); rebuild it with meta1 createmap")

    def _check(self, actual_size: int) -> None:
        head = self._read(0, HEADER_SIZE)
        if len(head) < HEADER_SIZE or head[:8] != MAGIC:
            raise MapFileError(f"{self.path}: not a meta1 map file ({_guess_kind(head)}); "
                               "build it with meta1 createmap")
        (_, version, header_size, tables, count, size, directory_offset, directory_crc, data_crc,
         _, header_crc) = HEADER.unpack(head)
        if zlib.crc32(head[:60]) != header_crc:
            raise self._damaged("header checksum")
        if version != VERSION or header_size != HEADER_SIZE:
            raise MapFileError(f"{self.path}: map file version {version} is not supported "
                               f"(this meta1 reads version {VERSION}); rebuild it with meta1 createmap")
        if size != actual_size:
            raise self._damaged(f"{actual_size} bytes, the header says {size}")
        if tables < 1 or tables & (tables - 1) or tables > 65536:
            raise self._damaged(f"table count {tables}")
        if directory_offset < HEADER_SIZE or directory_offset + tables * DIRECTORY_ENTRY.size != size:
            raise self._damaged("directory offset")
        raw = self._read(directory_offset, tables * DIRECTORY_ENTRY.size)
        if zlib.crc32(raw) != directory_crc:
            raise self._damaged("directory checksum")
        directory = [DIRECTORY_ENTRY.unpack_from(raw, i * DIRECTORY_ENTRY.size) for i in range(tables)]
        for offset, slots in directory:
            if slots and (offset < HEADER_SIZE or offset + slots * SLOT.size > directory_offset):
                raise self._damaged("a table outside the file")
        self.tables = tables
        self.count = count
        self.size = size
        self.directory = directory
        self.directory_offset = directory_offset
        self.data_crc = data_crc

    def _read(self, offset: int, size: int) -> bytes:
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise MapFileError(f"{self.path}: read error: {exc.strerror}") from None

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> HashFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> str | None:
        """The value of ``key`` (compared as given: callers lower-case), or None.

        Raises :class:`MapFileError` if the file turns out to be damaged or unreadable."""
        kb = key.encode("utf-8", "surrogateescape")
        if not kb:
            return None
        h = key_hash(kb)
        offset, n = self.directory[h & (self.tables - 1)]
        if n == 0:
            return None
        i = (h // self.tables) % n
        probed = 0
        while probed < n:
            batch = min(PROBE_BATCH, n - i, n - probed)
            raw = self._read(offset + i * SLOT.size, batch * SLOT.size)
            if len(raw) != batch * SLOT.size:
                raise self._damaged("short read in a table")
            for j in range(batch):
                slot_hash, record = SLOT.unpack_from(raw, j * SLOT.size)
                if record == 0:
                    return None
                if slot_hash == h:
                    found = self._record(record)
                    if found[0] == kb:
                        try:
                            return found[1].decode("utf-8")
                        except UnicodeDecodeError:
                            raise self._damaged("a value that is not UTF-8") from None
            probed += batch
            i = (i + batch) % n
        return None

    def _record(self, offset: int) -> tuple[bytes, bytes]:
        if offset < HEADER_SIZE or offset + RECORD_HEAD.size > self.directory_offset:
            raise self._damaged("a slot pointing outside the records")
        raw = self._read(offset, RECORD_GUESS)
        if len(raw) < RECORD_HEAD.size:
            raise self._damaged("short read of a record")
        klen, vlen = RECORD_HEAD.unpack_from(raw)
        end = offset + RECORD_HEAD.size + klen + vlen
        if end > self.directory_offset:
            raise self._damaged("a record running past the records")
        need = RECORD_HEAD.size + klen + vlen
        if len(raw) < need:
            raw += self._read(offset + len(raw), need - len(raw))
            if len(raw) < need:
                raise self._damaged("short read of a record")
        start = RECORD_HEAD.size
        return raw[start:start + klen], raw[start + klen:start + klen + vlen]

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (key, value), in file order (``meta1 createmap --dump``, :meth:`verify`)."""
        offset = HEADER_SIZE
        tables_start = min((o for o, n in self.directory if n), default=self.directory_offset)
        for _ in range(self.count):
            if offset >= tables_start:
                raise self._damaged("fewer records than the header says")
            key, value = self._record(offset)
            try:
                yield key.decode("utf-8"), value.decode("utf-8")
            except UnicodeDecodeError:
                raise self._damaged("a record that is not UTF-8") from None
            offset += RECORD_HEAD.size + len(key) + len(value)

    def verify(self) -> None:
        """Read the whole file: the data checksum, and every key found through the tables.

        Raises :class:`MapFileError` naming the first problem."""
        crc, offset = 0, HEADER_SIZE
        while offset < self.directory_offset:
            chunk = self._read(offset, min(1 << 20, self.directory_offset - offset))
            if not chunk:
                raise self._damaged("short read")
            crc = zlib.crc32(chunk, crc)
            offset += len(chunk)
        if crc != self.data_crc:
            raise self._damaged("data checksum")
        for key, value in self.items():
            if self.get(key) != value:
                raise self._damaged(f"key {key!r} not found through its table")


def _guess_kind(head: bytes) -> str:
    """What a file that is not ours seems to be, for the error message."""
    if not head:
        return "an empty file"
    if len(head) >= 16 and head[12:16] in _BDB_MAGICS:
        return _BDB_MAGICS[head[12:16]] + ", e.g. from sendmail's makemap"
    if head.startswith(b"SQLite format 3"):
        return "an SQLite database"
    if head.startswith(MAGIC[:6]):
        return "a meta1 map file with a mangled magic number: copied in text mode?"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown format"
    if all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "a text file: the map's source?"
    return "unknown format"
