"""Hash map files (meta1.maps.hashfile) and ``meta1 createmap`` (meta1.maps.createmap):
round trips, the exact bytes of the format, damaged and foreign files refused, atomic
rebuilds under a reader, big maps, the command line."""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.maps.createmap import build, default_source, write_atomically
from meta1.maps.hashfile import HEADER_SIZE, MAGIC, HashFile, MapFileError, write_entries
from meta1.maps.local import HashMap
from meta1.maps.source import SourceErrors, parse_entry
from conftest import run_meta1


def make(path, entries) -> None:
    write_atomically(str(path), entries)


def test_round_trip_and_absent_keys(tmp_path) -> None:
    source = tmp_path / "aliases"
    source.write_text("# local aliases\nRoot   admin@example.org\n\npostmaster\troot\n"
                      "news  news@example.org, other@example.org \nlist\n  # indented comment\n"
                      "note 550 5.7.1 see #42\n")
    assert build(str(source), str(tmp_path / "aliases.db")) == 5
    with HashFile(str(tmp_path / "aliases.db")) as table:
        assert len(table) == 5
        assert table.get("root") == "admin@example.org"
        assert table.get("postmaster") == "root"
        assert table.get("news") == "news@example.org, other@example.org"
        assert table.get("list") == ""                       # a key alone: the empty value
        assert table.get("note") == "550 5.7.1 see #42"      # '#' inside a value is kept
        assert table.get("Root") is None                     # stored lower-cased; callers lower-case
        assert table.get("nobody") is None and table.get("") is None
        assert list(table.items())[0] == ("root", "admin@example.org")
        table.verify()


def test_an_empty_map_is_valid(tmp_path) -> None:
    make(tmp_path / "empty.db", [])
    with HashFile(str(tmp_path / "empty.db")) as table:
        assert len(table) == 0 and table.get("x") is None
        table.verify()


def test_the_format_is_pinned_byte_for_byte(tmp_path) -> None:
    # Architecture-neutral: the same bytes on i386 and x86_64 (big-endian, 64-bit offsets).
    # A change of this digest is a change of the file format: bump VERSION.
    make(tmp_path / "m.db", [("root", "admin@example.org"), ("postmaster", "root"), ("cltaddr:10.", "RELAY")])
    data = (tmp_path / "m.db").read_bytes()
    assert data[:8] == MAGIC == b"\x89M1MAP\r\n"
    version, header_size, tables, count, size = struct.unpack(">HHIQQ", data[8:32])
    assert (version, header_size, tables, count, size) == (1, 64, 256, 3, len(data))
    assert zlib.crc32(data[:60]) == struct.unpack(">I", data[60:64])[0]
    assert struct.unpack(">II", data[64:72]) == (4, 17) and data[72:93] == b"rootadmin@example.org"
    assert hashlib.sha256(data).hexdigest() == GOLDEN


GOLDEN = "dfba48a66d69848c2d7f5995637808b00aa88d54c158de15612e123e7ce15ed2"


def _damage(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.db"
    make(path, [(f"key{i}", f"value {i}") for i in range(50)])
    return path


def test_a_truncated_file_is_refused(good) -> None:
    os.truncate(good, good.stat().st_size - 1)
    with pytest.raises(MapFileError, match=r"damaged map file \(.* bytes, the header says .*\); rebuild it"):
        HashFile(str(good))


def test_a_damaged_header_is_refused(good) -> None:
    _damage(good, 20, b"\x01")
    with pytest.raises(MapFileError, match="damaged map file .header checksum."):
        HashFile(str(good))


def test_a_damaged_directory_is_refused(good) -> None:
    size = good.stat().st_size
    _damage(good, size - 5, b"\xff")
    with pytest.raises(MapFileError, match="directory checksum"):
        HashFile(str(good))


def test_damaged_records_are_found_by_verify_and_never_crash_a_lookup(good) -> None:
    _damage(good, HEADER_SIZE, b"\xff\xff\xff\xff")      # the first record's key length
    with HashFile(str(good)) as table:                   # opening checks only header and directory
        with pytest.raises(MapFileError, match="data checksum"):
            table.verify()
        outcomes = set()
        for i in range(50):
            try:
                outcomes.add(table.get(f"key{i}") == f"value {i}")
            except MapFileError as exc:
                assert "damaged map file" in str(exc)
                outcomes.add("error")
        assert "error" in outcomes and True in outcomes


def test_another_version_is_refused_with_its_number(good) -> None:
    data = bytearray(good.read_bytes())
    data[8:10] = (2).to_bytes(2, "big")
    data[60:64] = struct.pack(">I", zlib.crc32(bytes(data[:60])))
    good.write_bytes(bytes(data))
    with pytest.raises(MapFileError, match="map file version 2 is not supported .this meta1 reads version 1."):
        HashFile(str(good))


@pytest.mark.parametrize("content,kind", [
    (b"", "an empty file"),
    (b"root admin@example.org\n", "a text file: the map's source?"),
    (b"\0" * 12 + b"\x00\x06\x15\x61" + b"\0" * 100, "a Berkeley DB hash file, e.g. from sendmail's makemap"),
    (b"SQLite format 3\0" + b"\0" * 100, "an SQLite database"),
    (b"\x89M1MAP\n" + b"\0" * 100, "a meta1 map file with a mangled magic number: copied in text mode?"),
])
def test_foreign_files_are_refused_saying_what_they_look_like(tmp_path, content, kind) -> None:
    path = tmp_path / "foreign.db"
    path.write_bytes(content)
    with pytest.raises(MapFileError) as info:
        HashFile(str(path))
    assert str(info.value) == f"{path}: not a meta1 map file ({kind}); build it with meta1 createmap"


def test_a_missing_file_is_refused(tmp_path) -> None:
    with pytest.raises(MapFileError, match="missing.db: cannot open: No such file or directory"):
        HashFile(str(tmp_path / "missing.db"))


def test_a_big_map_finds_every_key(tmp_path) -> None:
    n = 100_000
    path = tmp_path / "big.db"
    make(path, ((f"user{i}@example.org", f"mailbox-{i}") for i in range(n)))
    assert path.stat().st_size < 12_000_000
    with HashFile(str(path)) as table:
        assert len(table) == n
        assert all(table.get(f"user{i}@example.org") == f"mailbox-{i}" for i in range(n))
        assert all(table.get(f"user{i}@example.com") is None for i in range(0, n, 97))
        table.verify()


KEYS = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=30)
VALUES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60).map(lambda v: v.strip(" \t"))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(KEYS.map(str.lower), VALUES, max_size=80), st.lists(KEYS, max_size=10))
def test_property_every_key_written_is_found_and_no_other(entries, others) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "p.db")
        with open(path, "wb") as f:
            assert write_entries(f.fileno(), entries.items(), tables=4) == len(entries)
        with HashFile(path) as table:
            for key, value in entries.items():
                assert table.get(key) == value
            for key in others:
                assert table.get(key) == entries.get(key)
            assert dict(table.items()) == entries
            table.verify()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=40))
def test_property_createmap_source_then_lookup(pairs) -> None:
    # What createmap reads from a source is what a lookup finds (keys lower-cased).
    lines = [f"{k} {v}".rstrip() + "\n" for k, v in pairs if not k.startswith("#")]
    expected: dict[str, str] = {}
    for line in lines:
        key, value = parse_entry(line)
        expected.setdefault(key, value)
    duplicates = len(lines) != len(expected)
    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, "src")
        with open(source, "w", encoding="utf-8") as f:
            f.writelines(lines)
        output = os.path.join(directory, "src.db")
        if duplicates:
            with pytest.raises(SourceErrors, match="appears twice"):
                build(source, output)
            assert not os.path.exists(output)
            return
        build(source, output)
        with HashFile(output) as table:
            for key, value in expected.items():
                assert table.get(key) == value


def test_source_errors_name_file_and_line_and_nothing_is_written(tmp_path) -> None:
    source = tmp_path / "access"
    source.write_bytes(b"ok RELAY\nOK REJECT\nbad\x01value x\nlatin \xe9t\xe9\n")
    with pytest.raises(SourceErrors) as info:
        build(str(source), str(tmp_path / "access.db"))
    assert [str(e) for e in info.value.errors] == [
        f"{source}:2: key 'ok' appears twice (first at line 1)",
        f"{source}:3: control character 0x01 in the line",
        f"{source}:4: not UTF-8 (byte 0xe9 at column 7)",
    ]
    assert os.listdir(tmp_path) == ["access"]


def test_rebuild_is_atomic_a_reader_of_the_old_file_keeps_reading_it(tmp_path) -> None:
    path = tmp_path / "m.db"
    make(path, [("a", "old"), ("b", "old b")])
    os.chmod(path, 0o640)
    old = HashFile(str(path))
    make(path, [("a", "new"), ("c", "new c")])
    assert old.get("a") == "old" and old.get("b") == "old b" and old.get("c") is None
    old.verify()
    old.close()
    with HashFile(str(path)) as new:
        assert (new.get("a"), new.get("b"), new.get("c")) == ("new", None, "new c")
    assert path.stat().st_mode & 0o777 == 0o640          # the old file's mode is kept
    assert sorted(os.listdir(tmp_path)) == ["m.db"]      # no temporary file left


def test_a_failed_rebuild_leaves_the_old_file_and_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "m.db"
    make(path, [("a", "old")])

    def entries():
        yield ("a", "new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        make(path, entries())
    with HashFile(str(path)) as table:
        assert table.get("a") == "old"
    assert os.listdir(tmp_path) == ["m.db"]


def test_a_hash_map_picks_up_a_rebuilt_file_and_keeps_a_working_one(tmp_path, caplog) -> None:
    path = tmp_path / "m.db"
    make(path, [("a", "one")])
    now = [0.0]
    m = HashMap("m", str(path), clock=lambda: now[0], check_interval=1.0)
    assert m.lookup("A").value == "one"                  # keys compared lower-cased
    make(path, [("a", "two")])
    assert m.lookup("a").value == "one"                  # not checked before the interval
    now[0] = 1.0
    assert m.lookup("a").value == "two"
    (tmp_path / "junk").write_bytes(b"junk")
    os.replace(tmp_path / "junk", path)                  # a botched rebuild
    now[0] = 2.0
    assert m.lookup("a").value == "two"
    assert "the new" in caplog.text and "is not used, the previous one stays" in caplog.text
    caplog.clear()
    now[0] = 3.0
    assert m.lookup("a").value == "two" and caplog.text == ""   # logged once per file
    make(path, [("a", "three")])
    now[0] = 4.0
    assert m.lookup("a").value == "three"
    m.close()


def test_default_source_drops_the_db_suffix() -> None:
    assert default_source("aliases.db") == "aliases"
    assert default_source("maps/access.db") == "maps/access"
    assert default_source("routes") is None and default_source(".db") is None


# -- the command line ----------------------------------------------------------------------


def test_cli_source_output(tmp_path) -> None:
    (tmp_path / "aliases").write_text("root admin\nnews news@example.org\n")
    result = run_meta1("createmap", str(tmp_path / "aliases"), str(tmp_path / "aliases.db"))
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"2 entries written to {tmp_path / 'aliases.db'}\n", "")
    dump = run_meta1("createmap", "--dump", str(tmp_path / "aliases.db"))
    assert (dump.returncode, dump.stdout) == (0, "root admin\nnews news@example.org\n")


def test_cli_errors_exit_1_with_file_and_line(tmp_path) -> None:
    (tmp_path / "src").write_text("a 1\nb 2\nA 3\n")
    result = run_meta1("createmap", str(tmp_path / "src"), str(tmp_path / "out.db"))
    assert result.returncode == 1
    assert result.stderr == f"{tmp_path / 'src'}:3: key 'a' appears twice (first at line 1)\n1 error; nothing written\n"
    assert not (tmp_path / "out.db").exists()
    missing = run_meta1("createmap", str(tmp_path / "nope"), str(tmp_path / "out.db"))
    assert (missing.returncode, missing.stderr) == (1, f"meta1 createmap: {tmp_path / 'nope'}: No such file or directory\n")
    dump = run_meta1("createmap", "--dump", str(tmp_path / "src"))
    assert dump.returncode == 1 and "not a meta1 map file (a text file" in dump.stderr
    usage = run_meta1("createmap", "a", "b", "c")
    assert usage.returncode == 2


def test_cli_builds_a_declared_map_relative_to_the_queue_directory(tmp_path) -> None:
    queue = tmp_path / "queue"
    (queue / "maps").mkdir(parents=True)
    (queue / "maps" / "aliases").write_text("root admin\n")
    (queue / "routes.txt").write_text("example.org esmtp:[192.0.2.1]\n")
    (queue / "checks.re").write_text("/^(.*)@example\\.org$/ \\1\n")
    conf = tmp_path / "meta1.conf"
    conf.write_text(f'queue_directory = "{queue}";\n'
                    "smar { map aliases { type = hash; file = maps/aliases.db; }\n"
                    "       map routes { type = hash; file = routes; source = routes.txt; }\n"
                    "       map checks { type = regex; file = checks.re; }\n"
                    "       map users { type = passwd; } }\n")
    result = run_meta1("createmap", "-f", str(conf), "aliases")
    assert (result.returncode, result.stdout) == (0, f"aliases: 1 entry written to {queue}/maps/aliases.db\n")
    with HashFile(str(queue / "maps" / "aliases.db")) as table:
        assert table.get("root") == "admin"
    assert run_meta1("createmap", "-f", str(conf), "routes").returncode == 0
    with HashFile(str(queue / "routes")) as table:
        assert table.get("example.org") == "esmtp:[192.0.2.1]"
    checked = run_meta1("createmap", "-f", str(conf), "checks")
    assert (checked.returncode, checked.stdout) == (0, f"checks: 1 patterns OK in {queue}/checks.re\n")
    (queue / "checks.re").write_text("/(unclosed/ x\n")
    broken = run_meta1("createmap", "-f", str(conf), "checks")
    assert broken.returncode == 1
    assert broken.stderr.startswith(f"{queue}/checks.re:1: bad regular expression: missing ), unterminated subpattern")
    other = run_meta1("createmap", "-f", str(conf), "users")
    assert (other.returncode, other.stderr) == (
        1, "meta1 createmap: map 'users' is of type passwd: there is no file to build\n")
    unknown = run_meta1("createmap", "-f", str(conf), "nope")
    assert unknown.returncode == 1 and "no map named 'nope'" in unknown.stderr
    assert "(maps: aliases, checks, routes, users)" in unknown.stderr
