"""The grammar and its error recovery (meta1.config.syntax), example by example."""

from __future__ import annotations

import pytest

from meta1.config.errors import ConfigError
from meta1.config.syntax import MAX_DEPTH, MAX_ERRORS, decode, parse, parse_strict, tokenize
from meta1.config.tree import Document, ListValue, Option, Scalar, Section, format_document


def diagnostics(text: str) -> list[str]:
    return [f"{d.position}: {d.message}" for d in parse(text, "f")[1]]


def test_tree_of_a_small_file() -> None:
    doc = parse_strict('a = 1; s n { b = { x, "y z", { q } }; } t { }', "f")
    assert doc == Document((
        Option("a", Scalar("1")),
        Section("s", "n", (Option("b", ListValue((Scalar("x"), Scalar("y z"), ListValue((Scalar("q"),))))),)),
        Section("t", None, ()),
    ))


def test_quoting_does_not_change_the_value() -> None:
    assert parse_strict("p = /usr/x;", "f") == parse_strict('p = "/usr/x";', "f")


@pytest.mark.parametrize("text, value", [
    (r'a = "\"\\\n\t\r";', '"\\\n\t\r'),
    (r'a = "\x41\101\a\b\f\v";', "AA\a\b\f\v"),
    ('a = "caf\u00e9 \u65e5\u672c";', "caf\u00e9 \u65e5\u672c"),
    ('a = "" "";', ""),
    ('a = "tab\tinside";', "tab\tinside"),
])
def test_string_escapes(text: str, value: str) -> None:
    assert parse_strict(text, "f").entries[0].value == Scalar(value)


@pytest.mark.parametrize("text, message", [
    ('a = "x\\q";', "1:5: unknown escape sequence '\\q' in string"),
    ('a = "\\0";', "1:5: NUL is not allowed in a string"),
    ('a = "\x01";', "1:6: control character 0x01 in string (use an escape)"),
    ('a = "open\n";', "1:5: unterminated string (a newline inside quotes is not allowed)"),
    ("a = b c;", "1:7: expected ';', found 'c'"),
    ("a = ;", "1:5: expected a value or '{', found ';'"),
    ("a = {b,,c};", "1:8: expected '}', found ','"),
    ("s { a = 1;", "1:11: expected '}', found end of file"),
    ("} a = 1;", "1:1: expected an option or section (or end of file), found '}'"),
    ("a b c { }", "1:5: expected '{', found 'c'"),
    ("a ;", "1:3: expected '=' or '{', found ';'"),
    ("a = {b} c", "1:10: expected '=' or '{', found end of file"),
    ("/* never closed", "1:1: unterminated comment ('/*' without '*/')"),
    ("a = x;\x00", "1:7: expected an option or section (or end of file), found '\\x00'"),
])
def test_syntax_error_messages(text: str, message: str) -> None:
    assert diagnostics(text) == [message]


def test_a_word_never_contains_a_comment_opener() -> None:
    # "/" may be part of a word, "/*" always opens a comment (decisions.md D-LEX-3).
    doc = parse_strict("p = /usr/lib/* gone */; q = a*/b;", "f")
    assert doc.entries == (Option("p", Scalar("/usr/lib")), Option("q", Scalar("a*/b")))


def test_every_broken_statement_is_reported_and_the_rest_is_kept() -> None:
    text = "a = 1 b = 2;\nc = 3;\nd = ;\ns { e = {1 2}; f = 4; }\ng = 5;\n"
    doc, diags = parse(text, "f")
    assert [str(d.position) for d in diags] == ["1:7", "3:5", "4:12"]
    assert [e.key for e in doc.entries] == ["c", "s", "g"]
    assert doc.entries[1].entries == (Option("f", Scalar("4")),)


def test_columns_count_a_tab_as_one_and_lines_count_lf() -> None:
    assert diagnostics("\n\t\ta = ;") == ["2:7: expected a value or '{', found ';'"]
    assert diagnostics("x = 1;\r\n\ty = ;\r\n") == ["2:6: expected a value or '{', found ';'"]


def test_deep_nesting_is_refused_before_parsing() -> None:
    text = "s { " * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1)
    assert diagnostics(text) == [f"1:{4 * MAX_DEPTH + 3}: nesting deeper than {MAX_DEPTH} levels"]
    ok = "s { " * MAX_DEPTH + "}" * MAX_DEPTH
    assert parse(ok, "f")[1] == []


def test_error_count_is_bounded() -> None:
    diags = parse("a = ;\n" * (MAX_ERRORS + 5), "f")[1]
    assert len(diags) == MAX_ERRORS + 1
    assert diags[-1].message == f"too many syntax errors (stopped after {MAX_ERRORS})"


def test_parse_strict_raises_with_all_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_strict("a = ;\nb = ;\n", "x.conf")
    assert str(info.value).splitlines() == [
        "x.conf:1:5: expected a value or '{', found ';'",
        "x.conf:2:5: expected a value or '{', found ';'",
    ]


def test_decode_positions_a_bad_byte() -> None:
    with pytest.raises(ConfigError) as info:
        decode("a = 1;\nb = \"\u00e9\xff".encode("utf-8", "surrogateescape")[:-2] + b"\xff", "f")
    assert str(info.value) == "f:2:7: invalid UTF-8 byte 0xff"


def test_tokens_cover_the_text() -> None:
    text = 'a = "s" /* c */ {x,y}; # end\n@'
    tokens = tokenize(text)
    assert [t.kind for t in tokens] == [
        "word", "punct", "string", "comment", "punct", "word", "punct", "word", "punct", "punct", "comment", "bad"]
    assert all(text[t.start:t.end] == t.text for t in tokens)
    covered = set().union(*(range(t.start, t.end) for t in tokens))
    assert all(text[i] in " \n" for i in range(len(text)) if i not in covered)


def test_printer_output_reads_back() -> None:
    doc = Document((Section("S", "a name", (Option("o", Scalar('q"\\\n\x7f')), Option("e", Scalar("")))),
                    Option("l", ListValue(()))))
    text = format_document(doc)
    assert text == 'S "a name" {\n    o = "q\\"\\\\\\n\\x7f";\n    e = "";\n}\nl = { };\n'
    assert parse_strict(text, "f") == doc
