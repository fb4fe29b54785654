"""Content files: round trips, and a damaged file never yields partial content."""

from __future__ import annotations

import errno
import itertools
import os
import pathlib
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.queue import cdb
from meta1.queue.cdb import ContentWriter, content_ok, content_problem, fsync_directories, iter_content, read_content
from meta1.queue.recordfile import CDB_MAGIC, CdbData, CdbEnd, CdbHeader, DamagedFile, pack_record
from test_queue_support import flip_bit, make_queue, ta_id, write_content

CHUNK = cdb.CHUNK
_ids = itertools.count(1)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
@pytest.mark.parametrize("pieces", [1, 7])
def test_round_trip(tmp_path: pathlib.Path, size: int, pieces: int) -> None:
    layout = make_queue(tmp_path)
    content = (bytes(range(256)) * (size // 256 + 1))[:size]
    writer = write_content(layout, ta_id(size), content, pieces)
    assert writer.size == size and writer.path == layout.content_path(ta_id(size))
    assert writer.relpath == layout.content_relpath(ta_id(size)) and writer.directory == writer.path.parent
    assert read_content(writer.path) == content
    assert b"".join(iter_content(writer.path, chunk=1000)) == content
    assert all(len(piece) == 1000 for piece in list(iter_content(writer.path, chunk=1000))[:-1])
    assert content_ok(writer.path)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.binary(max_size=CHUNK // 2), max_size=6))
def test_any_sequence_of_writes_round_trips(tmp_path_factory, writes: list[bytes]) -> None:
    layout = make_queue(tmp_path_factory.mktemp("q"))
    writer = ContentWriter(layout, ta_id(next(_ids)), created=0)
    for piece in writes:
        writer.write(piece)
    assert writer.finish() == sum(map(len, writes))
    writer.close()
    assert read_content(writer.path) == b"".join(writes)
    assert content_ok(writer.path)


def test_the_file_is_created_exclusively_with_mode_0640(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    writer = write_content(layout, ta_id(1), b"x")
    assert stat.S_IMODE(writer.path.stat().st_mode) & 0o137 == 0
    with pytest.raises(FileExistsError):
        ContentWriter(layout, ta_id(1), created=0)
    assert read_content(writer.path) == b"x"  # the failed second writer did not remove it


def test_a_file_shorter_than_complete_is_never_used(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    whole = write_content(layout, ta_id(1), b"Subject: x\r\n\r\n" + b"y" * 50).path.read_bytes()
    for cut in range(len(whole)):
        path = layout.content_path(ta_id(1))
        path.write_bytes(whole[:cut])
        assert not content_ok(path), cut
        with pytest.raises(DamagedFile):
            read_content(path)
        pieces = iter_content(path)
        with pytest.raises(DamagedFile):
            next(pieces)


def test_every_single_bit_flip_is_found_before_any_content_is_given_out(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    path = write_content(layout, ta_id(2), b"Subject: x\r\n\r\nhello\r\n").path
    whole = path.read_bytes()
    for offset in range(len(whole)):
        for bit in range(8):
            path.write_bytes(whole)
            flip_bit(path, offset, bit)
            with pytest.raises(DamagedFile):
                read_content(path)
            with pytest.raises(DamagedFile):
                next(iter_content(path))


def test_iter_content_validates_the_end_before_the_first_piece(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    path = write_content(layout, ta_id(3), b"z" * (3 * CHUNK)).path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the End record's CRC, far behind the first Data record
    path.write_bytes(bytes(data))
    pieces = iter_content(path)
    with pytest.raises(DamagedFile, match="bad CRC"):
        next(pieces)


def crafted(ta: str, *records) -> bytes:
    return CDB_MAGIC + pack_record(CdbHeader(ta, 0)) + b"".join(pack_record(rec) for rec in records)


@pytest.mark.parametrize("records, reason", [
    ((CdbData(b"ab"),), "no End record"),
    ((CdbData(b"ab"), CdbEnd(3, 0)), "End says 3 octets"),
    ((CdbData(b"ab"), CdbEnd(2, 0x9E83486D), CdbData(b"c")), "a record after End"),
    ((CdbData(b"a"), CdbData(b"b"), CdbEnd(2, 0x9E83486D)), "follows one shorter than 64 KiB"),
    ((CdbData(b""), CdbEnd(0, 0)), "Data record of 0 octets"),
    ((CdbHeader("S0000000000000000100", 0), CdbEnd(0, 0)), "does not belong in a content file"),
])
def test_structure_damage(tmp_path: pathlib.Path, records, reason: str) -> None:
    path = make_queue(tmp_path).content_path(ta_id(1))
    path.write_bytes(crafted(ta_id(1), *records))
    with pytest.raises(DamagedFile, match=reason):
        read_content(path)
    assert not content_ok(path)


def test_a_file_under_another_name_is_damage(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    path = write_content(layout, ta_id(1), b"abc").path
    other = layout.content_path(ta_id(17))
    os.rename(path, other)
    with pytest.raises(DamagedFile, match="not the Header of"):
        read_content(other)
    assert "not the Header" in content_problem(other)
    assert content_problem(path) == "missing"


def test_content_ok_reads_only_header_and_end(tmp_path: pathlib.Path) -> None:
    # The cheap check does not see a flipped content octet (delivery's full read does)...
    layout = make_queue(tmp_path)
    path = write_content(layout, ta_id(4), b"q" * 100).path
    flip_bit(path, path.stat().st_size - 40, 0)
    assert content_ok(path)
    with pytest.raises(DamagedFile):
        read_content(path)
    # ...but any change of length is caught by the size equation.
    path.write_bytes(crafted(ta_id(4), CdbData(b"a"), CdbData(b"b"), CdbEnd(2, 0x9E83486D)))
    assert "not" in content_problem(path)


def test_a_write_error_leaves_nothing_after_abort(tmp_path: pathlib.Path, monkeypatch) -> None:
    layout = make_queue(tmp_path)
    writer = ContentWriter(layout, ta_id(5), created=0)
    real_write = os.write

    def disk_full(fd: int, data) -> int:
        real_write(fd, bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError) as failure:
        writer.write(b"x" * (2 * CHUNK))
    assert failure.value.errno == errno.ENOSPC
    writer.abort()
    writer.abort()
    assert not writer.path.exists()


def test_a_failed_header_write_removes_the_file(tmp_path: pathlib.Path, monkeypatch) -> None:
    layout = make_queue(tmp_path)

    def disk_full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError):
        ContentWriter(layout, ta_id(6), created=0)
    assert not layout.content_path(ta_id(6)).exists()


def test_abort_never_raises(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    writer = ContentWriter(layout, ta_id(7), created=0)
    writer.write(b"abc")
    os.unlink(writer.path)
    writer.abort()
    finished = write_content(layout, ta_id(8), b"abc")
    finished.abort()  # after close: removes the file
    assert not finished.path.exists()
    with pytest.raises(ValueError):
        finished.write(b"more")


def test_fsync_directories_syncs_each_distinct_directory_once(tmp_path: pathlib.Path, monkeypatch) -> None:
    layout = make_queue(tmp_path)
    synced = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    fsync_directories([layout.cdb / "a", layout.cdb / "b", layout.cdb / "a", str(layout.cdb / "b")])
    assert sorted(synced) == [str(layout.cdb / "a"), str(layout.cdb / "b")]
