"""``meta1 createmap``: build a hash map file from its text source, atomically.

Synopsis
    ``meta1 createmap [-f CONF] MAPNAME``
        build the file of the map ``MAPNAME`` declared in CONF (``smar { map MAPNAME {
        type = hash; file = …; } }``) from its ``source`` (default: ``file`` without its
        ``.db`` suffix); relative names are relative to ``queue_directory``. A map of type
        ``regex`` is checked (every pattern compiled) and nothing is written.
    ``meta1 createmap SOURCE OUTPUT``
        build OUTPUT from the text file SOURCE, no configuration needed (D-MAP-4).
    ``meta1 createmap --dump FILE``
        print a map file's entries as ``key value`` lines (a valid source again).

    The source syntax is :mod:`meta1.maps.source`'s (``key value`` lines, ``#``
    comments, keys lower-cased, a key twice is an error). Every error is printed as
    ``FILE:LINE: message`` and nothing is written; exit status 1. Exit status 0 prints
    ``MAPNAME: N entries written to OUTPUT``; 2 is a usage error; 74 (EX_IOERR) an
    output that cannot be written.

How the file is replaced (spec/maps.md, D-MAP-2)
    The new file is written under a temporary name in the output's directory, fsynced,
    renamed over the old name (``rename(2)`` is atomic: a reader opens the old file or
    the new one, never a half-written one, and one that holds the old file open keeps
    reading it), and then the directory is fsynced so the rename survives a crash. The
    new file keeps the old one's mode (and, run as root, its owner and group); a first
    file gets mode 0644 less the umask. A failure removes the temporary file.
"""

from __future__ import annotations

import os
import sys
import tempfile

from meta1.maps.hashfile import HashFile, MapFileError, write_entries
from meta1.maps.source import SourceError, SourceErrors, read_source

EX_IOERR = 74
#: Errors printed at most (the count of the rest is printed after them).
MAX_ERRORS_SHOWN = 100


def build(source: str, output: str) -> int:
    """Build ``output`` from the text file ``source``; return the entry count.

    Raises :class:`SourceErrors` (nothing written) or OSError."""
    entries = read_source(source)
    return write_atomically(output, ((key, value) for key, value, _ in entries))


def write_atomically(output: str, entries) -> int:
    """Write a map file of ``entries`` to ``output`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(output))
    fd, temporary = tempfile.mkstemp(prefix="." + os.path.basename(output) + ".", suffix=".tmp", dir=directory)
    try:
        try:
            count = write_entries(fd, entries)
            _copy_attributes(fd, output)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, output)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return count


def _copy_attributes(fd: int, output: str) -> None:
    try:
        old = os.stat(output)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o644 & ~umask)
        return
    os.fchmod(fd, old.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.fchown(fd, old.st_uid, old.st_gid)


def default_source(file: str) -> str | None:
    """The source of a map file when ``source`` is not set: ``aliases.db`` → ``aliases``."""
    return file[:-3] if file.endswith(".db") and len(file) > 3 else None


def _report(errors: list[SourceError]) -> None:
    for error in errors[:MAX_ERRORS_SHOWN]:
        print(error, file=sys.stderr)
    if len(errors) > MAX_ERRORS_SHOWN:
        print(f"... and {len(errors) - MAX_ERRORS_SHOWN} more", file=sys.stderr)
    print(f"{len(errors)} error{'s' if len(errors) != 1 else ''}; nothing written", file=sys.stderr)


def arguments(parser) -> None:
    """The arguments of ``meta1 createmap`` (the cli's parser)."""
    parser.add_argument("--dump", action="store_true", help="print the entries of the map file NAME")
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="MAPNAME (a map of the configuration), or SOURCE OUTPUT, or with --dump FILE")


def main(args, load) -> int:
    """Run ``meta1 createmap`` with parsed ``args``; ``load(file)`` loads a configuration."""
    names = args.names
    if args.dump:
        if len(names) != 1:
            print("meta1 createmap: --dump takes one map file", file=sys.stderr)
            return 2
        return dump(names[0])
    if len(names) == 2:
        if args.file is not None:
            print("meta1 createmap: -f goes with MAPNAME, not with SOURCE OUTPUT", file=sys.stderr)
            return 2
        return _build_and_report(names[0], names[1], None)
    if len(names) != 1:
        print("meta1 createmap: give MAPNAME, or SOURCE and OUTPUT", file=sys.stderr)
        return 2
    from meta1.config import ConfigError
    try:
        config = load(args.file)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return 1
    return from_config(config, names[0])


def from_config(config, name: str) -> int:
    maps = config.smar.map
    node = maps.get(name)
    if node is None:
        listing = ", ".join(sorted(maps)) or "none"
        print(f"meta1 createmap: no map named {name!r} in {config.filename} (maps: {listing})", file=sys.stderr)
        return 1
    base = config.queue_directory
    if node.type == "regex":
        from meta1.maps.local import RegexMap
        try:
            table = RegexMap(name, os.path.join(base, node.file))
        except (OSError, SourceErrors) as exc:
            _print_failure(exc)
            return 1
        print(f"{name}: {len(table.rules)} patterns OK in {table.path}")
        return 0
    if node.type != "hash":
        print(f"meta1 createmap: map {name!r} is of type {node.type}: there is no file to build", file=sys.stderr)
        return 1
    if not isinstance(node.source, str):
        print(f"meta1 createmap: map {name!r}: set its source (its file does not end in .db)", file=sys.stderr)
        return 1
    return _build_and_report(os.path.join(base, node.source), os.path.join(base, node.file), name)


def _print_failure(exc: BaseException) -> None:
    if isinstance(exc, SourceErrors):
        _report(exc.errors)
    else:
        print(f"meta1 createmap: {exc.filename}: {exc.strerror}", file=sys.stderr)


def _build_and_report(source: str, output: str, label: str | None) -> int:
    try:
        entries = read_source(source)
    except SourceErrors as exc:
        _report(exc.errors)
        return 1
    except OSError as exc:
        print(f"meta1 createmap: {source}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        count = write_atomically(output, ((key, value) for key, value, _ in entries))
    except OSError as exc:
        print(f"meta1 createmap: {exc.filename or output}: {exc.strerror}", file=sys.stderr)
        return EX_IOERR
    prefix = f"{label}: " if label else ""
    print(f"{prefix}{count} entr{'y' if count == 1 else 'ies'} written to {output}")
    return 0


def dump(path: str) -> int:
    try:
        with HashFile(path) as table:
            for key, value in table.items():
                sys.stdout.write(f"{key} {value}\n" if value else f"{key}\n")
    except MapFileError as exc:
        print(f"meta1 createmap: {exc}", file=sys.stderr)
        return 1
    return 0
