"""Content files (CDB): one self-validating file per transaction, written by smtps.

Responsibilities
    Write a message's content as it arrives (:class:`ContentWriter`), make it durable on
    request, remove it on failure; read it back only when the whole file is sound
    (:func:`read_content`, :func:`iter_content`); tell replay cheaply whether a file looks
    complete (:func:`content_ok`); fsync the directories of a batch of new files once each
    (:func:`fsync_directories`).

File structure (spec/queue.md)
    ``magic Header Data* End`` in the record container (:mod:`.recordfile`). Header names
    the transaction; every Data record carries exactly 64 KiB of content except the last,
    which carries 1 octet to 64 KiB (content of size 0 has no Data record); End carries
    the content's size and CRC-32. Nothing may follow End. Because the chunking is fixed,
    the file's size is a function of the content's size, which lets :func:`content_ok`
    check a file by reading only its first and last records.

Durability (spec/receive-path.md, "Message life")
    The writer never fsyncs by itself: smtps calls :meth:`ContentWriter.sync` (fdatasync
    of the file, from a worker thread) and then :func:`fsync_directories` once for all the
    files of a batch, and only after both succeed sends the Commit to qmgr. fdatasync is
    enough for a new file: it writes the data and the metadata needed to read it back
    (the size), skipping only times. Any failure leads to :meth:`ContentWriter.abort`,
    which removes the file, and to a 451 — the file is never synced again after an error
    (fsyncgate, reliability.md R2).

Never half-used
    A reader gets content only from a file whose every record, End included, has been
    checked: :func:`iter_content` validates the whole file before it yields a single
    octet, so a delivery can never send the first half of a damaged message.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import zlib
from typing import BinaryIO, Iterable, Iterator

from meta1.queue.layout import QueueLayout
from meta1.queue.recordfile import (CDB_MAGIC, MAGIC_SIZE, CdbData, CdbEnd, CdbHeader, DamagedFile,
                                    check_magic, file_size, iter_records, pack_record, read_record_at)

log = logging.getLogger("meta1.queue")

CHUNK = 64 * 1024
"""Content octets per Data record (all but the last)."""
FILE_MODE = 0o640
#: Set by mcp, as root, for smtps and qmgr: the group each content file is given so that
#: smtpc may read it (spec/mcp.md, "Who may do what"). Unset: the creator's group.
CONTENT_GROUP_ENV = "META1_CONTENT_GID"


@functools.cache
def content_group() -> int | None:
    value = os.environ.get(CONTENT_GROUP_ENV, "")
    return int(value) if value.isdigit() else None
_END_SIZE = len(pack_record(CdbEnd(0, 0)))
_DATA_OVERHEAD = len(pack_record(CdbData(b"")))  # the record around a chunk's octets


def write_all(fd: int, data: bytes) -> None:
    """os.write until every octet is written (a regular file may take fewer per call)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class ContentWriter:
    """Streams one transaction's content into ``cdb/<digit>/<ta-id>``.

    The constructor creates the file exclusively (an existing file is an error: ids are
    never reused) and writes the magic and Header; if that fails it removes the file and
    raises. After an OSError from :meth:`write` or :meth:`finish` the caller calls
    :meth:`abort`.
    """

    def __init__(self, layout: QueueLayout, ta_id: str, created: int):
        self.path = layout.content_path(ta_id)
        self.relpath = layout.content_relpath(ta_id)
        self.directory = self.path.parent
        self.size = 0
        self._crc = 0
        self._pending = bytearray()
        self._finished = False
        self._fd: int | None = None
        self._removed = False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                           FILE_MODE)
        try:
            group = content_group()
            if group is not None:
                os.fchown(self._fd, -1, group)
            write_all(self._fd, CDB_MAGIC + pack_record(CdbHeader(ta_id, created)))
        except BaseException:
            self.abort()
            raise

    def write(self, content: bytes) -> None:
        """Append content; whole 64 KiB Data records are written as soon as they are full."""
        if self._finished or self._fd is None:
            raise ValueError(f"{self.path}: write after finish or abort")
        self.size += len(content)
        self._crc = zlib.crc32(content, self._crc)
        self._pending += content
        if len(self._pending) >= CHUNK:
            self._flush(final=False)

    def _flush(self, final: bool, tail: bytes = b"") -> None:
        pending = self._pending
        whole = len(pending) if final else len(pending) - len(pending) % CHUNK
        records = [pack_record(CdbData(bytes(pending[start:start + CHUNK]))) for start in range(0, whole, CHUNK)]
        assert self._fd is not None
        write_all(self._fd, b"".join(records) + tail)
        del pending[:whole]

    def finish(self) -> int:
        """Write what is buffered and the End record; the content's size. No fsync."""
        if self._finished or self._fd is None:
            raise ValueError(f"{self.path}: finish after finish or abort")
        self._flush(final=True, tail=pack_record(CdbEnd(self.size, self._crc)))
        self._finished = True
        return self.size

    def sync(self) -> None:
        """fdatasync the file (blocking: call it from a worker thread)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: sync after close or abort")
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the file (after :meth:`sync`); the file stays."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def abort(self) -> None:
        """Close and remove the file. Never raises; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("closing aborted content file %s: %s", self.path, exc)
        if self._removed:
            return
        self._removed = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("removing aborted content file %s: %s", self.path, exc)


def _content_pieces(stream: BinaryIO, path: pathlib.Path) -> Iterator[bytes]:
    """The Data pieces of a content file in order; DamagedFile (raised when it is met, so
    possibly after some pieces) for anything that is not ``Header Data* End``."""
    records = iter_records(stream, CDB_MAGIC, path)
    first = next(records, None)
    if first is None:
        raise DamagedFile(path, MAGIC_SIZE, "no Header record")
    offset, header = first
    if not isinstance(header, CdbHeader) or header.ta_id != path.name:
        raise DamagedFile(path, offset, f"the first record is not the Header of {path.name}: {header!r}")
    size, crc, short_seen = 0, 0, False
    for offset, rec in records:
        if isinstance(rec, CdbData):
            if short_seen:
                raise DamagedFile(path, offset, "a Data record follows one shorter than 64 KiB")
            if not 0 < len(rec.data) <= CHUNK:
                raise DamagedFile(path, offset, f"Data record of {len(rec.data)} octets (1 to 64 KiB allowed)")
            short_seen = len(rec.data) < CHUNK
            size += len(rec.data)
            crc = zlib.crc32(rec.data, crc)
            yield rec.data
        elif isinstance(rec, CdbEnd):
            if (rec.size, rec.crc) != (size, crc):
                raise DamagedFile(path, offset, f"End says {rec.size} octets with CRC {rec.crc:#x}, "
                                                f"the Data records hold {size} with CRC {crc:#x}")
            after = next(records, None)
            if after is not None:
                raise DamagedFile(path, after[0], "a record after End")
            return
        else:
            raise DamagedFile(path, offset, f"{type(rec).__name__} does not belong in a content file")
    raise DamagedFile(path, file_size(stream), "no End record")


def read_content(path: str | os.PathLike) -> bytes:
    """The content of a sound content file; DamagedFile (or OSError) otherwise."""
    path = pathlib.Path(path)
    with open(path, "rb") as stream:
        return b"".join(_content_pieces(stream, path))


def iter_content(path: str | os.PathLike, chunk: int = 65536) -> Iterator[bytes]:
    """The content in pieces of ``chunk`` octets (the last may be shorter). The whole file
    is validated before the first piece is yielded."""
    path = pathlib.Path(path)
    with open(path, "rb") as stream:
        for _ in _content_pieces(stream, path):
            pass
        stream.seek(0)
        buffered = bytearray()
        for piece in _content_pieces(stream, path):
            buffered += piece
            while len(buffered) >= chunk:
                yield bytes(buffered[:chunk])
                del buffered[:chunk]
        if buffered:
            yield bytes(buffered)


def content_problem(path: str | os.PathLike) -> str | None:
    """None if the file's Header and End are sound and its size is what End implies; else
    what is wrong. Reads two small records, never the content (replay calls this for every
    queued transaction)."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as stream:
            size = file_size(stream)
            check_magic(stream, CDB_MAGIC, path)
            found = read_record_at(stream, MAGIC_SIZE, path)
            if found is None or not isinstance(found[0], CdbHeader) or found[0].ta_id != path.name:
                return f"the first record is not the Header of {path.name}"
            header_end = found[1]
            if size < header_end + _END_SIZE:
                return "no room for an End record"
            found = read_record_at(stream, size - _END_SIZE, path)
            if found is None or not isinstance(found[0], CdbEnd):
                return "the last record is not End"
            end = found[0]
    except FileNotFoundError:
        return "missing"
    except (OSError, DamagedFile) as exc:
        return str(exc)
    if end.size < 0:
        return f"End claims a negative size {end.size}"
    data_records = -(-end.size // CHUNK)
    expected = header_end + end.size + data_records * _DATA_OVERHEAD + _END_SIZE
    if expected != size:
        return f"End claims {end.size} octets of content, which make a file of {expected} octets, not {size}"
    return None


def content_ok(path: str | os.PathLike) -> bool:
    """The cheap check replay uses: Header and End present and consistent with the file size."""
    return content_problem(path) is None


def fsync_directories(dirs: Iterable[str | os.PathLike]) -> None:
    """fsync each distinct directory once, making the names of new files in it durable."""
    for directory in dict.fromkeys(os.fspath(d) for d in dirs):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)



def _load_syncfs():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    return syncfs


#: ``syncfs(fd)``: flush every dirty file of the file system holding ``fd`` and wait
#: (Linux syncfs(2), which reports write-back errors since 5.8); None where the C library
#: has none. The standard library has only ``os.sync``, which flushes every file system.
syncfs = _load_syncfs()
