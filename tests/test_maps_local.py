"""The maps that answer at once (meta1.maps.local): regex files, inline lists in the
configuration, passwd; and their schema rules."""

from __future__ import annotations

import os
import pwd

import pytest

from meta1.config import ConfigError, load_text
from meta1.maps.base import Status
from meta1.maps.local import BrokenMap, InlineMap, PasswdMap, RegexMap, parse_regex_lines
from meta1.maps.source import SourceErrors, parse_lines

REGEXES = r"""# checks, first match wins
/^postmaster@/            OK
/^(.+)\+(.+)@example\.org$/   \1@example.org via \2
/^([a-z]+)@(old|legacy)\.example$/  \1@new.example
/\.invalid$/              REJECT
/a\/b/                    slash
/^(x)?y$/                 [\1]
/^esc$/                   back\\slash \0 \n
/^novalue$/
/.*/                      DEFAULT
"""


@pytest.fixture
def regex_map(tmp_path):
    path = tmp_path / "checks.re"
    path.write_text(REGEXES)
    return RegexMap("checks", str(path))


@pytest.mark.parametrize("key,value", [
    ("postmaster@anything", "OK"),                       # first match wins, over /.*/
    ("user+tag@example.org", "user@example.org via tag"),
    ("bob@legacy.example", "bob@new.example"),
    ("Bob@OLD.example", "Bob@new.example"),              # patterns ignore case
    ("host.invalid", "REJECT"),
    ("xa/b", "slash"),                                   # \/ is a slash in the pattern
    ("y", "[]"),                                          # a group that did not match: empty
    ("xy", "[x]"),
    ("esc", "back\\slash \\0 \\n"),                       # \\ is one backslash; other escapes stay
    ("novalue", ""),
    ("anything else", "DEFAULT"),
])
def test_regex_map(regex_map, key, value) -> None:
    result = regex_map.lookup(key)
    assert (result.status, result.value) == (Status.FOUND, value)


def test_regex_map_without_catch_all_says_not_found(tmp_path) -> None:
    path = tmp_path / "r"
    path.write_text("/^a$/ A\n")
    m = RegexMap("r", str(path))
    assert m.lookup("b").status is Status.NOTFOUND
    assert m.submit("a", lambda r: pytest.fail("called back")).value == "A"


def test_regex_errors_name_file_and_line_all_at_once() -> None:
    lines = ["/ok/ fine", "no slash", "/unclosed value", "/(bad/ x", "/a/b c", "//  empty",
             r"/(a)(b)/ \3", r"/(a)/ \\1 is literal"]
    rules, errors = parse_regex_lines(lines, "checks.re")
    assert [r.line for r in rules] == [1, 8]
    assert [str(e) for e in errors] == [
        "checks.re:2: a line must start with /pattern/",
        "checks.re:3: the pattern has no closing /",
        "checks.re:4: bad regular expression: missing ), unterminated subpattern at position 1",
        "checks.re:5: whitespace expected after the pattern, not 'b'",
        "checks.re:6: empty pattern",
        "checks.re:7: the value uses \\3 but the pattern has 2 groups",
    ]


def test_a_bad_regex_file_is_refused_at_load(tmp_path) -> None:
    path = tmp_path / "r"
    path.write_text("/ok/ x\n/[z-a]/ y\n")
    with pytest.raises(SourceErrors) as info:
        RegexMap("r", str(path))
    assert str(info.value) == f"{path}:2: bad regular expression: bad character range z-a at position 2"


def test_a_regex_map_picks_up_a_new_file(tmp_path) -> None:
    path = tmp_path / "r"
    path.write_text("/^a$/ one\n")
    now = [0.0]
    m = RegexMap("r", str(path), clock=lambda: now[0])
    (tmp_path / "new").write_text("/^a$/ two\n")
    os.replace(tmp_path / "new", path)
    now[0] = 5.0
    assert m.lookup("a").value == "two"
    path.write_text("/(broken/ x\n")     # edited in place, and broken: the old rules stay
    os.utime(path, ns=(10**18, 10**18))
    now[0] = 10.0
    assert m.lookup("a").value == "two"


# -- passwd ------------------------------------------------------------------------------


def test_passwd_map_finds_root_and_not_strangers() -> None:
    m = PasswdMap("users")
    assert (m.lookup("root").status, m.lookup("root").value) == (Status.FOUND, "root")
    assert m.lookup("no-such-user-x9q").status is Status.NOTFOUND
    assert m.lookup("").status is Status.NOTFOUND
    assert m.lookup("ro\0ot").status is Status.NOTFOUND


def test_passwd_map_answers_with_the_user_name() -> None:
    def getpwnam(name):
        if name == "alias":
            return pwd.struct_passwd(("canonical", "x", 1000, 1000, "", "/home/c", "/bin/sh"))
        if name == "broken":
            raise OSError(5, "Input/output error")
        raise KeyError(name)
    m = PasswdMap("users", getpwnam)
    assert m.lookup("alias").value == "canonical"
    failed = m.lookup("broken")
    assert (failed.status, failed.reason) == (Status.TEMP, "getpwnam: Input/output error")


# -- inline ------------------------------------------------------------------------------


def test_inline_map_from_the_configuration() -> None:
    config = load_text('smar { map relays { type = inline;\n'
                       '  entries = { "cltaddr:127. RELAY", "Cltaddr:10.1. 550 5.7.1 not you",\n'
                       '              "from:<> OK", "localonly" }; } }', "f")
    entries, errors = parse_lines(config.smar.map["relays"].entries, "relays")
    assert errors == []
    m = InlineMap("relays", [(key, value) for key, value, _ in entries])
    assert m.lookup("cltaddr:127.").value == "RELAY"
    assert m.lookup("CLTADDR:10.1.").value == "550 5.7.1 not you"
    assert m.lookup("from:<>").value == "OK"
    assert m.lookup("localonly").value == ""
    assert m.lookup("cltaddr:127").status is Status.NOTFOUND


@pytest.mark.parametrize("entries,message", [
    ('{ "a 1", "A 2" }', "1:31: entries: item 2: key 'a' appears twice (first at item 1)"),
    ('{ "a 1", "" }', "1:31: entries: item 2 has no key"),
    ('{ "a 1", "# note" }', "1:31: entries: item 2 has no key"),
    ('{ "a\\x01 1" }', "1:31: entries: item 1: control character 0x01 in the item"),
])
def test_inline_map_rules(entries, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(f"smar {{ map m {{ type = inline; entries = {entries}; }} }}", "f")
    assert [f"{d.position}: {d.message}" for d in info.value.diagnostics] == [message]


def test_inline_map_needs_entries_and_takes_nothing_else() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("smar { map m { type = inline; file = x; } }", "f")
    assert sorted(d.message for d in info.value.diagnostics) == [
        "a map of type inline needs entries", "file is not an option of a map of type inline"]


def test_hash_map_source_defaults_to_the_file_without_db() -> None:
    config = load_text("smar { map a { type = hash; file = maps/aliases.db; }"
                       " map r { type = hash; file = routes; } map s { type = hash; file = x.db; source = y; } }", "f")
    assert config.smar.map["a"].source == "maps/aliases"
    assert config.smar.map["s"].source == "y"
    from meta1.config.schema import NOT_SET
    assert config.smar.map["r"].source is NOT_SET


def test_socket_map_name_cannot_contain_whitespace() -> None:
    with pytest.raises(ConfigError, match="mapname: a socket map name cannot contain whitespace"):
        load_text('smar { map m { type = socket; path = s; mapname = "two words"; } }', "f")


def test_broken_map_answers_perm_with_its_reason() -> None:
    result = BrokenMap("m", "map m: m.db: cannot open").lookup("x")
    assert (result.status, result.reason) == (Status.PERM, "map m: m.db: cannot open")
