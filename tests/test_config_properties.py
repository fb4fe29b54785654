"""Property tests of the configuration language: printer, grammar, recovery, loader.

What is checked, and why:

1. **Print/parse round trip.** Random syntax trees (options and sections nested a few
   levels, names of random case, scalar texts of arbitrary Unicode including control
   characters, nested lists, named and unnamed sections) are printed with
   ``format_document`` and read back with ``parse_strict``: the result equals the tree,
   and printing it again gives the identical text. This is what makes ``meta1 config``
   output trustworthy: whatever the printer writes, the grammar reads back unchanged
   (quoting, escapes and the word/quoted-string choice must agree with the grammar).
2. **Layout independence (B03).** The printed text is cut into tokens and glued back
   with random whitespace (spaces, tabs, CR, LF), ``# line`` comments and ``/* block */``
   comments between the tokens (block comments glued directly to words too: a word
   never contains ``/*``), or joined onto one line: it means the same tree. Whitespace
   and comments carry no meaning anywhere in the language.
3. **Robustness.** Random bytes, random text and random text made of the language's own
   characters and keywords: the loader either returns a configuration or raises
   ``ConfigError`` — never another exception — and every diagnostic it reports points
   inside the text. Whatever the error-recovering parser accepts without complaint also
   survives the print/parse round trip.
4. **Mutations of valid files.** The built-in default configuration, its fully written
   out effective form and every ``conformance/examples/*.conf`` (when that directory
   exists) are damaged at random (spans deleted or duplicated, language characters
   inserted, characters swapped): again only ``ConfigError`` may escape; when the mutant
   still loads, its effective configuration is a fixed point (next item).
5. **Effective configuration fixed point.** Loading the text printed from
   ``effective_document`` gives an equal configuration, and printing that one again
   gives the identical text (``meta1 config`` output is itself a valid, equivalent file).
6. **Error aggregation.** A file with *k* independent syntax errors on separate lines,
   interleaved with valid entries, yields exactly *k* diagnostics from the syntax layer,
   one per broken line at the right line and column, and the recovered tree is exactly
   the valid part of the file: recovery neither swallows nor invents errors. The same
   holds inside nested sections (erasing a statement never eats a closing brace).
7. **Typed values.** One option of the schema, anywhere in a valid file, is set to a
   value of some lexical shape (decimal/octal/hex numbers, intervals, sizes, addresses,
   endpoints, flag and enum words, free text, lists): only ``ConfigError`` may escape,
   and an accepted value survives the effective-configuration fixed point.
8. **Nesting limit.** Up to ``MAX_DEPTH`` braces parse and round-trip; one more is a
   single positioned diagnostic, never a RecursionError.

Two violations of the "only ConfigError escapes" property were found while writing
these tests and fixed; deterministic regression tests at the end of the file pin them: a
number past Python's 4300-digit int/str conversion limit, and a non-decimal Unicode digit
such as '²' in an endpoint port.

Every test uses ``deadline=None`` (the 32-bit lane is slow) and no example database
(nothing is written into the checkout). The file runs on Debian bookworm's Hypothesis
6.67 / pytest 7.2 / pyparsing 3.0 as well as on current releases, so only long-standing
Hypothesis APIs are used.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta1.config import (
    ConfigError,
    default_config_text,
    effective_document,
    load_bytes,
    load_text,
)
from meta1.config import schema
from meta1.config.syntax import MAX_DEPTH, parse, parse_strict, tokenize
from meta1.config.tree import (
    NAME_PATTERN,
    WORD_PATTERN,
    Document,
    ListValue,
    Option,
    Scalar,
    Section,
    format_document,
    format_entries,
    format_value,
)
from meta1.config.types import NEGATION, Enum, Flags, ListOf

HOME = "/home/meta1-test"  # the default configuration has queue_directory = "~/..."
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "conformance" / "examples"


def props(max_examples: int = 150):
    """Common settings: no deadline (32-bit lane), no example database, few health checks."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# ---------------------------------------------------------------------------------------
# Strategies: syntax trees

names = st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 24)


def _no_surrogate(ch: str) -> bool:
    return not 0xD800 <= ord(ch) <= 0xDFFF


# Any character but NUL and surrogates (control characters included: the printer escapes
# them), with the characters that matter to the lexer over-represented.
TRICKY = ['"', "\\", "\n", "\t", "\r", "\x01", "\x1f", "\x7f", "\x85", "\u2028", "/", "*",
          "#", "{", "}", ";", "=", ",", " ", "é", "\U0001f600", "x", "7", "-", ".", ":", "_"]
any_char = st.characters(min_codepoint=1).filter(_no_surrogate)
text_chars = st.one_of(any_char, st.sampled_from(TRICKY))
free_texts = st.text(alphabet=text_chars, max_size=12)
WORD_ALPHABET = "abcXYZ019_.:*-/"
words = st.text(alphabet=WORD_ALPHABET, min_size=1, max_size=10).filter(
    lambda s: re.fullmatch(WORD_PATTERN, s) is not None
)
scalar_texts = st.one_of(free_texts, words)
scalars = st.builds(Scalar, scalar_texts)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4).map(lambda items: ListValue(tuple(items))),
    max_leaves=8,
)
options = st.builds(Option, names, values)
section_names = st.one_of(st.none(), scalar_texts)


def entries(depth: int) -> st.SearchStrategy:
    if depth == 0:
        return st.lists(options, max_size=4).map(tuple)
    sections = st.builds(Section, names, section_names, entries(depth - 1))
    return st.lists(st.one_of(options, sections), max_size=4).map(tuple)


documents = st.builds(Document, entries(3))


# ---------------------------------------------------------------------------------------
# 1. Round trip


@props(200)
@given(documents)
def test_print_parse_round_trip(doc):
    text = format_document(doc)
    back = parse_strict(text, "t.conf")
    assert back == doc
    # Case of names is kept as written, not only compared loosely.
    assert format_document(back) == text


@props(100)
@given(documents)
def test_printed_text_is_a_fixed_point(doc):
    text = format_document(doc)
    again = format_document(parse_strict(format_document(parse_strict(text, "t.conf")), "t.conf"))
    assert again == text


# ---------------------------------------------------------------------------------------
# 2. Layout independence (B03)

whitespace = st.text(alphabet=" \t\r\n", min_size=1, max_size=4)
line_comments = st.text(alphabet=any_char.filter(lambda c: c != "\n"), max_size=10).map(
    lambda c: "#" + c + "\n"
)
block_comments = st.text(alphabet=text_chars, max_size=10).filter(lambda c: "*/" not in c).map(
    lambda c: "/*" + c + "*/"
)
separators = st.lists(st.one_of(whitespace, line_comments, block_comments), max_size=3).map("".join)


def _glue(data, tokens) -> str:
    out = [data.draw(separators)]
    for k, tok in enumerate(tokens):
        out.append(tok.text)
        sep = data.draw(separators)
        following = tokens[k + 1] if k + 1 < len(tokens) else None
        if following is not None and tok.kind == "word" and following.kind == "word" and not sep:
            sep = " "  # two words would run together
        out.append(sep)
    return "".join(out)


@props(150)
@given(documents, st.data())
def test_layout_does_not_matter(doc, data):
    text = format_document(doc)
    tokens = tokenize(text)
    assert {t.kind for t in tokens} <= {"word", "string", "punct"}
    relaid = _glue(data, tokens)
    assert parse_strict(relaid, "t.conf") == doc


@props(100)
@given(documents)
def test_one_line_layout(doc):
    text = format_document(doc)
    assert parse_strict(text.replace("\n", " "), "t.conf") == doc
    assert parse_strict(" ".join(t.text for t in tokenize(text)), "t.conf") == doc


# ---------------------------------------------------------------------------------------
# 3. Robustness


def _check_positions(text: str, diagnostics) -> None:
    lines = text.split("\n")
    assert diagnostics, "a ConfigError must carry at least one diagnostic"
    for d in diagnostics:
        pos = d.position
        assert 1 <= pos.line <= len(lines) + 1, (str(d), len(lines))
        assert pos.col >= 1, str(d)
        if pos.line <= len(lines):
            assert pos.col <= len(lines[pos.line - 1]) + 1, (str(d), lines[pos.line - 1])
        assert str(d).startswith(f"{d.filename}:{pos.line}:{pos.col}: ")


def _load_or_config_error(text: str) -> None:
    try:
        load_text(text, "r.conf", home=HOME)
    except ConfigError as exc:
        _check_positions(text, exc.diagnostics)
        assert all(d.filename == "r.conf" for d in exc.diagnostics)


def _parse_is_sound(text: str) -> None:
    """parse() never raises; what it accepts cleanly round-trips through the printer."""
    doc, diags = parse(text, "r.conf")
    if diags:
        _check_positions(text, diags)
    else:
        assert parse_strict(format_document(doc), "r.conf") == doc


@props(200)
@given(st.binary(max_size=300))
def test_random_bytes_load_or_config_error(data):
    try:
        load_bytes(data, "r.conf", home=HOME)
    except ConfigError as exc:
        text = data.decode("utf-8", "replace")
        _check_positions(text, exc.diagnostics)


@props(200)
@given(st.text(alphabet=text_chars, max_size=200))
def test_random_text_load_or_config_error(text):
    _load_or_config_error(text)
    _parse_is_sound(text)


LANGUAGE_CHARS = list('{};=,"#/*\\ \n\tabc019x.-:') + ["\r", "\x01", "é"]
KEYWORDS = sorted(
    {"smtps", "qmgr", "map", "flags", "dont_", "listen_socket", "8bitmime", "inet", "127.0.0.1",
     "/*", "*/", '"', '\\"', "\\x", "\\0", "{ }", "= {", "};", ",}", "\n}", "# c\n"}
    | {spec.keyword for _, spec in schema.walk() if spec.keyword}
    | {opt.name for _, spec in schema.walk() for opt in spec.options}
)
MUTATION_CHARS = LANGUAGE_CHARS + ["}", "{", ";", "=", '"', "\n", "0", "-", "x"]
language_texts = st.lists(
    st.one_of(st.sampled_from(LANGUAGE_CHARS), st.sampled_from(KEYWORDS)), max_size=80
).map("".join)


@props(200)
@given(language_texts)
def test_language_soup_load_or_config_error(text):
    _load_or_config_error(text)
    _parse_is_sound(text)


# ---------------------------------------------------------------------------------------
# 3b. Recovery on damaged random trees


@props(150)
@given(documents, st.data())
def test_damaged_random_trees(doc, data):
    """Printed random trees with random damage: parse() returns positioned diagnostics
    (or a clean tree that round-trips) and the loader raises nothing but ConfigError."""
    text = format_document(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()) and text:
            j = data.draw(st.integers(i, min(len(text), i + 15)))
            text = text[:i] + text[j:]
        else:
            piece = data.draw(st.lists(st.sampled_from(MUTATION_CHARS), min_size=1, max_size=3))
            text = text[:i] + "".join(piece) + text[i:]
    _parse_is_sound(text)
    _load_or_config_error(text)


# ---------------------------------------------------------------------------------------
# 4. Mutations of valid configurations


def _valid_sources() -> list[tuple[str, str]]:
    default = default_config_text()
    sources = [("default.conf", default)]
    sources.append(
        ("effective-default.conf",
         format_document(effective_document(load_text(default, "default.conf", home=HOME))))
    )
    if EXAMPLES_DIR.is_dir():
        for path in sorted(EXAMPLES_DIR.glob("*.conf")):
            sources.append((path.name, path.read_text("utf-8")))
    return sources


SOURCES = _valid_sources()


@st.composite
def mutated(draw):
    name, text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "swap"]))
        i = draw(st.integers(0, n))
        if op == "delete" and n:
            j = draw(st.integers(i, min(n, i + 20)))
            text = text[:i] + text[j:]
        elif op == "insert":
            piece = draw(st.lists(st.one_of(st.sampled_from(MUTATION_CHARS), st.sampled_from(KEYWORDS)),
                                  min_size=1, max_size=4))
            text = text[:i] + "".join(piece) + text[i:]
        elif op == "duplicate" and n:
            j = draw(st.integers(i, min(n, i + 40)))
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap" and n >= 2:
            a, b = sorted((draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))))
            if a != b:
                text = text[:a] + text[b] + text[a + 1:b] + text[a] + text[b + 1:]
    return name, text


@props(200)

def _load_or_positioned_errors(text, name):
    """Either positioned ConfigErrors, or a configuration whose effective form is a fixed point."""
    try:
        cfg = load_text(text, name, home=HOME)
    except ConfigError as exc:
        _check_positions(text, exc.diagnostics)
        return
    _assert_effective_fixed_point(cfg, name)

@given(mutated())
def test_mutated_configurations(case):
    name, text = case
    _load_or_positioned_errors(text, name)


def test_sources_are_valid():
    for name, text in SOURCES:
        load_text(text, name, home=HOME)


# ---------------------------------------------------------------------------------------
# 5. Effective configuration fixed point


def _assert_effective_fixed_point(cfg, name: str) -> None:
    text1 = format_document(effective_document(cfg))
    cfg2 = load_text(text1, name, home=HOME)
    assert cfg2.root == cfg.root
    text2 = format_document(effective_document(cfg2))
    assert text2 == text1


@pytest.mark.parametrize("name,text", SOURCES, ids=[name for name, _ in SOURCES])
def test_effective_configuration_is_a_fixed_point(name, text):
    _assert_effective_fixed_point(load_text(text, name, home=HOME), name)


# ---------------------------------------------------------------------------------------
# 6. Error aggregation


def _broken_lines(n1: str, n2: str, v: str):
    """(line, 0-based column of the error, entries that survive recovery) for one mistake."""
    cases = [
        (f"{n1} = {v} {n2} = {v};", len(f"{n1} = {v} "), ()),
        (f"{n1} = ;", len(f"{n1} = "), ()),
        (f"{n1} = = {v};", len(f"{n1} = "), ()),
        (f"{n1} = {{ {v}, , {v} }};", len(f"{n1} = {{ {v}, "), ()),
        (f'{n1} = "bad \\q escape";', len(f"{n1} = "), ()),
        (f'{n1} = "x" {v};', len(f'{n1} = "x" '), ()),
        (f"{n1} {v} {v} {{ }}", len(f"{n1} {v} "), ()),
        (f"= {v};", 0, ()),
        (f"{n1} = {v};;", len(f"{n1} = {v};"), (Option(n1, Scalar(v)),)),
        (f"{n1} = @;", len(f"{n1} = "), ()),
        (f'{n1} = "a\x01b";', len(f'{n1} = "a'), ()),
        (f"{n1} {{ {n2} = ; }}", len(f"{n1} {{ {n2} = "), (Section(n1, None, ()),)),
        (f"{n1} {{ {n2} = {v} }}", len(f"{n1} {{ {n2} = {v} "), (Section(n1, None, ()),)),
        ("}", 0, ()),
    ]
    return cases


@st.composite
def broken_chunks(draw, top_level=True):
    n1, n2 = draw(names), draw(names)
    v = draw(words.filter(lambda w: "/" not in w))
    cases = _broken_lines(n1, n2, v)
    if not top_level:
        cases = cases[:-1]  # a stray '}' would close the enclosing section
    return cases[draw(st.integers(0, len(cases) - 1))]


valid_chunks = st.one_of(
    entries(2).map(lambda es: ("\n".join(format_entries(es)), es)),
    st.text(alphabet=any_char.filter(lambda c: c != "\n"), max_size=10).map(lambda c: ("#" + c, ())),
    free_texts.filter(lambda c: "*/" not in c).map(lambda c: ("/*" + c + "*/", ())),
    st.just(("", ())),
)


def _assemble(data, broken, first_line=1):
    """Interleave broken lines with valid chunks: (text, expected positions, entries)."""
    chunks = [data.draw(valid_chunks)]
    for b in broken:
        chunks.append(b)
        chunks.append(data.draw(valid_chunks))
    line_no = first_line
    parts, positions, expected = [], [], []
    for chunk in chunks:
        if len(chunk) == 3:
            line, col, residue = chunk
            positions.append((line_no, col + 1))
            expected.extend(residue)
        else:
            line, es = chunk
            expected.extend(es)
        parts.append(line)
        line_no += line.count("\n") + 1
    return "\n".join(parts) + "\n", positions, tuple(expected)


@props(150)
@given(st.lists(broken_chunks(), min_size=1, max_size=6), st.data())
def test_one_diagnostic_per_broken_line(broken, data):
    text, positions, expected = _assemble(data, broken)
    doc, diags = parse(text, "e.conf")
    got = [(d.position.line, d.position.col) for d in diags]
    assert got == positions, [str(d) for d in diags]
    assert all(d.filename == "e.conf" for d in diags)
    # Recovery erased exactly the broken statements: the rest of the file is intact.
    assert doc == Document(expected)


@props(100)
@given(
    st.lists(st.tuples(names, section_names), min_size=1, max_size=3),
    st.lists(broken_chunks(top_level=False), min_size=1, max_size=5),
    st.data(),
)
def test_one_diagnostic_per_broken_line_inside_sections(heads, broken, data):
    """The same inside nested sections: erasing a statement never eats a closing brace."""
    header = "".join(
        f"{kw} {{\n" if name is None else f"{kw} {format_value(Scalar(name))} {{\n" for kw, name in heads
    )
    body, positions, expected = _assemble(data, broken, first_line=len(heads) + 1)
    text = header + body + "}\n" * len(heads)
    doc, diags = parse(text, "e.conf")
    got = [(d.position.line, d.position.col) for d in diags]
    assert got == positions, [str(d) for d in diags]
    tree: tuple = expected
    for kw, name in reversed(heads):
        tree = (Section(kw, name, tree),)
    assert doc == Document(tree)


# ---------------------------------------------------------------------------------------
# 7. Typed values: every option of the schema, set to values of every lexical shape


def _flag_and_choice_words() -> list[str]:
    found: set[str] = set()
    for _, spec in schema.walk():
        for opt in spec.options:
            kind = opt.type.item if isinstance(opt.type, ListOf) else opt.type
            if isinstance(kind, Flags):
                found.update(kind.known)
                found.update(NEGATION + f for f in kind.known)
            elif isinstance(kind, Enum):
                found.update(kind.choices)
                found.update(c.upper() for c in kind.choices)
    return sorted(found)


VALUE_WORDS = _flag_and_choice_words() + ["smtps", "qmgr", "smtpc", "smar", "mcp", "local", "aliases"]
# Unicode decimal digits (category Nd) are included; digits that int() refuses, such as
# '²' (category No), are left out here because they trigger a known bug (see
# test_known_bug_endpoint_port_with_superscript_digit below).
PORT_DIGITS = st.text(alphabet="0123456789\u0665\u0663\u0967", min_size=1, max_size=6)


def _endpoint(address, port: str) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


typed_atoms = st.one_of(
    st.integers(-1000, 10**12).map(str),
    st.integers(0, 2**40).map(hex),
    st.integers(0, 2**24).map(lambda n: "0" + format(n, "o")),
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from("wdhms")), min_size=1, max_size=5).map(
        lambda parts: "".join(f"{n}{u}" for n, u in parts)
    ),
    st.tuples(st.integers(0, 10**7).map(str), st.sampled_from(["", "K", "k", "M", "m", "G", "g", "T"])).map(
        "".join
    ),
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(), st.one_of(st.integers(0, 70000).map(str), PORT_DIGITS)).map(
        lambda t: _endpoint(*t)
    ),
    st.sampled_from(VALUE_WORDS),
    words,
    free_texts,
).map(Scalar)
typed_values = st.one_of(
    typed_atoms,
    st.lists(typed_atoms, max_size=5).map(lambda items: ListValue(tuple(items))),
    st.lists(st.lists(typed_atoms, max_size=2).map(lambda items: ListValue(tuple(items))), max_size=2).map(
        lambda items: ListValue(tuple(items))
    ),
)


def _section_slots(entries, spec, path=()):
    """(path of entry indices, SectionSpec) of every section of the schema in a tree."""
    yield path, spec
    for k, entry in enumerate(entries):
        if isinstance(entry, Section):
            sub = spec.section(entry.key)
            if sub is not None:
                yield from _section_slots(entry.entries, sub, path + (k,))


def _set_option(entries, path, option):
    if not path:
        kept = tuple(e for e in entries if not (isinstance(e, Option) and e.key == option.key))
        return kept + (option,)
    k = path[0]
    sec = entries[k]
    inner = _set_option(sec.entries, path[1:], option)
    return entries[:k] + (Section(sec.keyword, sec.name, inner),) + entries[k + 1:]


@props(200)
@given(st.sampled_from(SOURCES), st.data())
def test_typed_values_load_or_config_error(source, data):
    """Set one schema option anywhere in a valid file to a value of some lexical shape
    (numbers in every base, intervals, sizes, addresses, endpoints, flags, enum words, free
    text, lists): the loader accepts it or reports it, and what it accepts is a fixed
    point of the effective configuration."""
    name, text = source
    doc = parse_strict(text, name)
    slots = [slot for slot in _section_slots(doc.entries, schema.ROOT) if slot[1].options]
    path, spec = data.draw(st.sampled_from(slots))
    opt = data.draw(st.sampled_from(spec.options))
    value = data.draw(typed_values)
    mutant = format_document(Document(_set_option(doc.entries, path, Option(opt.name, value))))
    _load_or_positioned_errors(mutant, name)


# ---------------------------------------------------------------------------------------
# 8. Nesting limit


@props(100)
@given(st.integers(0, 36), st.integers(0, 36), st.sampled_from(["x", '"x"', ""]))
def test_nesting_up_to_the_limit(sections, lists, leaf):
    """Nesting up to MAX_DEPTH braces parses and round-trips; deeper is one clean error."""
    value = "{ " * lists + leaf + " }" * lists if lists else (leaf or "x")
    text = "s { " * sections + f"o = {value};" + " }" * sections
    doc, diags = parse(text, "n.conf")
    if sections + lists <= MAX_DEPTH:
        assert diags == []
        assert parse_strict(format_document(doc), "n.conf") == doc
    else:
        assert len(diags) == 1 and "nesting deeper than" in diags[0].message
        too_deep = [k for k, ch in enumerate(text) if ch == "{"][MAX_DEPTH]  # all '{' come first
        assert (diags[0].position.line, diags[0].position.col) == (1, too_deep + 1)


# ---------------------------------------------------------------------------------------
# Regressions: inputs that once let a ValueError escape the loader


def _with_smtps_option(line: str) -> str:
    base = default_config_text()
    assert "flags = { 8bitmime };" in base
    return base.replace("flags = { 8bitmime };", line)


HUGE_NUMBER_CASES = {
    "integer-decimal": "max_sessions = " + "9" * 4301 + ";",
    "integer-hex-out-of-range": "max_sessions = 0x" + "f" * 4000 + ";",
    "interval": "IO_timeout = " + "9" * 4301 + "s;",
    "size": "max_message_size = " + "1" * 4301 + "K;",
}


@pytest.mark.parametrize("line", list(HUGE_NUMBER_CASES.values()), ids=list(HUGE_NUMBER_CASES))
def test_huge_numbers_are_config_errors(line):
    with pytest.raises(ConfigError):
        load_text(_with_smtps_option(line), "huge.conf", home=HOME)


def test_endpoint_port_with_non_ascii_digit_is_a_config_error():
    text = default_config_text().replace(
        "flags = { use_resolvconf };", 'nameserver = "192.0.2.1:\u00b2";'
    )
    with pytest.raises(ConfigError):
        load_text(text, "ns.conf", home=HOME)
