"""The maps that answer at once: hash files, regex files, passwd, inline lists.

Responsibilities
    One class per map type whose lookups need no round trip to another process; each has
    ``lookup(key) -> MapResult`` and, like every map (:mod:`meta1.maps.driver`),
    ``submit(key, callback)``, which here always returns the result itself.

    * :class:`HashMap` (``type = hash``): a file built by ``meta1 createmap``
      (:mod:`meta1.maps.hashfile`), read a key at a time.
    * :class:`RegexMap` (``type = regex``): a file of ``/pattern/ value`` lines, compiled
      once, tried in order; the first pattern that matches answers (D-MAP-12).
    * :class:`PasswdMap` (``type = passwd``): the system's users (``getpwnam``).
    * :class:`InlineMap` (``type = inline``): ``key value`` entries written in the
      configuration itself (D-MAP-13).
    * :class:`BrokenMap`: stands for a map that could not be opened, answering every
      lookup with PERM and the reason, so that mail is deferred rather than judged on a
      guess (when smar is told to start anyway; :func:`meta1.maps.driver.open_maps`).

Keys
    Hash and inline maps compare keys in lower case (their entries are stored lower-cased,
    D-MAP-3); regex patterns match ignoring case. A passwd map looks the key up as given.

Reloading (D-MAP-5)
    Hash and regex maps notice a new file: at most once per ``check_interval`` seconds
    (on the injected clock) a lookup ``stat``\\ s the path, and if it names another file
    than the one open (device and inode; for regex files also size and modification
    time), the new one is opened and used from then on. A new file that cannot be used is
    logged once and the old one stays in service. So ``meta1 createmap`` takes effect
    without restarting smar, and a botched rebuild never takes a working map away.

Blocking
    ``getpwnam`` reads ``/etc/passwd`` with the usual ``files`` NSS source, microseconds;
    with a network NSS source (LDAP, NIS) it may block smar's loop — use a socket map
    for such user databases instead (D-MAP-6).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable

from meta1.maps.base import NOT_FOUND, MapResult, Status, found
from meta1.maps.hashfile import HashFile, MapFileError
from meta1.maps.source import SourceError, SourceErrors, decode_lines

log = logging.getLogger("meta1.maps")

#: Seconds between two checks whether a hash or regex map's file was replaced.
CHECK_INTERVAL = 1.0

Callback = Callable[[MapResult], object]


class LocalMap:
    """A map that answers at once."""

    kind = ""

    def __init__(self, name: str) -> None:
        self.name = name

    def lookup(self, key: str) -> MapResult:
        raise NotImplementedError

    def submit(self, key: str, callback: Callback) -> MapResult:
        """The result, at once (``callback`` is never called)."""
        return self.lookup(key)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _FileMap(LocalMap):
    """A map read from a file, reopened when the file is replaced (see the module docs)."""

    def __init__(self, name: str, path: str, *, clock: Callable[[], float] = time.monotonic,
                 check_interval: float = CHECK_INTERVAL) -> None:
        super().__init__(name)
        self.path = path
        self.clock = clock
        self.check_interval = check_interval
        self._identity = self._stat_identity()
        self._load()
        self._checked = clock()
        self._refused: tuple | None = None

    def _stat_identity(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return self._identity_of(st)

    @staticmethod
    def _identity_of(st: os.stat_result) -> tuple:
        return (st.st_dev, st.st_ino)

    def _load(self) -> None:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Reopen the file if it was replaced; True if the map now serves a new file."""
        self._checked = self.clock()
        identity = self._stat_identity()
        if identity is None or identity == self._identity or identity == self._refused:
            return False
        previous = self._snapshot()
        try:
            self._load()
        except (MapFileError, SourceErrors, OSError) as exc:
            self._restore(previous)
            self._refused = identity
            log.error("map %s: the new %s is not used, the previous one stays: %s", self.name, self.path, exc)
            return False
        self._identity = identity
        self._refused = None
        self._discard(previous)
        log.info("map %s: reopened %s", self.name, self.path)
        return True

    def _maybe_refresh(self) -> None:
        if self.clock() - self._checked >= self.check_interval:
            self.refresh()

    def _snapshot(self):
        raise NotImplementedError

    def _restore(self, snapshot) -> None:
        raise NotImplementedError

    def _discard(self, snapshot) -> None:
        pass


class HashMap(_FileMap):
    """``type = hash``: a map file written by ``meta1 createmap``."""

    kind = "hash"
    file: HashFile

    def _load(self) -> None:
        self.file = HashFile(self.path)

    def _snapshot(self) -> HashFile:
        return self.file

    def _restore(self, snapshot: HashFile) -> None:
        self.file = snapshot

    def _discard(self, snapshot: HashFile) -> None:
        snapshot.close()

    def lookup(self, key: str) -> MapResult:
        self._maybe_refresh()
        try:
            value = self.file.get(key.lower())
        except MapFileError as exc:
            log.error("map %s: %s", self.name, exc)
            return MapResult(Status.PERM, reason=str(exc))
        return NOT_FOUND if value is None else found(value)

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------------------
# Regex maps

_GROUP_REF = re.compile(r"\\([1-9\\])")


class RegexRule:
    """One ``/pattern/ value`` line: the compiled pattern, the value template, the line."""

    __slots__ = ("pattern", "template", "line")

    def __init__(self, pattern: re.Pattern, template: str, line: int) -> None:
        self.pattern = pattern
        self.template = template
        self.line = line

    def expand(self, match: re.Match) -> str:
        """The value with ``\\1``…``\\9`` replaced by the groups (empty when a group did
        not take part in the match) and ``\\\\`` by one backslash."""
        if "\\" not in self.template:
            return self.template

        def substitute(ref: re.Match) -> str:
            what = ref.group(1)
            return "\\" if what == "\\" else (match.group(int(what)) or "")

        return _GROUP_REF.sub(substitute, self.template)


def parse_regex_lines(lines: Iterable[str], filename: str) -> tuple[list[RegexRule], list[SourceError]]:
    """The rules of a regex map file, and every error (file:line) found.

    A line is ``/pattern/`` then whitespace and the value (or nothing: the empty value);
    a ``/`` inside the pattern is written ``\\/``. Blank lines and ``#`` lines are
    ignored. Patterns are Python regular expressions, searched anywhere in the key
    (anchor them with ``^`` and ``$``), ignoring case."""
    rules: list[RegexRule] = []
    errors: list[SourceError] = []
    for number, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n").strip(" \t")
        if not text or text.startswith("#"):
            continue
        if not text.startswith("/"):
            errors.append(SourceError(filename, number, "a line must start with /pattern/"))
            continue
        end, i = None, 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == "/":
                end = i
                break
            i += 1
        if end is None:
            errors.append(SourceError(filename, number, "the pattern has no closing /"))
            continue
        source, rest = text[1:end], text[end + 1:]
        if rest and rest[0] not in " \t":
            errors.append(SourceError(filename, number, f"whitespace expected after the pattern, not {rest[0]!r}"))
            continue
        if not source:
            errors.append(SourceError(filename, number, "empty pattern"))
            continue
        try:
            pattern = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            where = f" at position {exc.pos + 1}" if exc.pos is not None else ""
            errors.append(SourceError(filename, number, f"bad regular expression: {exc.msg}{where}"))
            continue
        template = rest.strip(" \t")
        refs = [int(n) for n in re.findall(r"\\([1-9])", template.replace("\\\\", ""))]
        if refs and max(refs) > pattern.groups:
            errors.append(SourceError(filename, number, f"the value uses \\{max(refs)} but the pattern has "
                                                        f"{pattern.groups} group{'s' if pattern.groups != 1 else ''}"))
            continue
        rules.append(RegexRule(pattern, template, number))
    return rules, errors


class RegexMap(_FileMap):
    """``type = regex``: the first pattern that matches the key answers with its value."""

    kind = "regex"
    rules: list[RegexRule]

    @staticmethod
    def _identity_of(st: os.stat_result) -> tuple:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines, errors = decode_lines(data, self.path)
        rules, more = parse_regex_lines(lines, self.path)
        if errors or more:
            raise SourceErrors(errors + more)
        self.rules = rules

    def _snapshot(self) -> list[RegexRule]:
        return self.rules

    def _restore(self, snapshot: list[RegexRule]) -> None:
        self.rules = snapshot

    def lookup(self, key: str) -> MapResult:
        self._maybe_refresh()
        for rule in self.rules:
            match = rule.pattern.search(key)
            if match is not None:
                return found(rule.expand(match))
        return NOT_FOUND


# ---------------------------------------------------------------------------------------
# passwd and inline maps


class PasswdMap(LocalMap):
    """``type = passwd``: FOUND with the user's name when ``getpwnam(key)`` knows the key."""

    kind = "passwd"

    def __init__(self, name: str, getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam) -> None:
        super().__init__(name)
        self.getpwnam = getpwnam

    def lookup(self, key: str) -> MapResult:
        if not key:
            return NOT_FOUND
        try:
            entry = self.getpwnam(key)
        except (KeyError, ValueError):   # unknown user; a NUL in the key
            return NOT_FOUND
        except OSError as exc:            # an NSS source that failed
            return MapResult(Status.TEMP, reason=f"getpwnam: {exc.strerror or exc}")
        return found(entry.pw_name)


class InlineMap(LocalMap):
    """``type = inline``: the ``entries`` of the map's section, ``"key value"`` each."""

    kind = "inline"

    def __init__(self, name: str, entries: Iterable[tuple[str, str]]) -> None:
        super().__init__(name)
        self.entries = {key.lower(): value for key, value in entries}

    def lookup(self, key: str) -> MapResult:
        value = self.entries.get(key.lower())
        return NOT_FOUND if value is None else found(value)


class BrokenMap(LocalMap):
    """A map that could not be opened: every lookup is PERM with the reason."""

    kind = "broken"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name)
        self.reason = reason

    def lookup(self, key: str) -> MapResult:
        return MapResult(Status.PERM, reason=self.reason)
