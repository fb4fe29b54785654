"""The MeTA1 configuration language: grammar (pyparsing) and error recovery.

Responsibilities
    Turn the text of a configuration file into a :class:`~meta1.config.tree.Document`,
    or into positioned diagnostics — all of them, not just the first.

The language (``spec/config-grammar.md`` has the EBNF; ``meta1.conf(5)`` the original)::

    conf    ::= entry*
    entry   ::= option | section
    option  ::= NAME "=" ( value ";" | list [";"] )
    section ::= NAME [ value ] "{" entry* "}" [";"]
    list    ::= "{" [ item ( "," item )* [","] ] "}"      item ::= value | list
    value   ::= WORD | STRING+                             (adjacent strings are joined)

Comments are ``# ...`` to the end of the line and ``/* ... */``; whitespace is space,
tab, CR and LF and is insignificant. The token scanner finds comments and blanks them
before the grammar runs (positions are kept), so the grammar itself is comment-free.

Strategy: error recovery by erasure
    pyparsing stops at the first syntax error. To report every error in one run, the
    parser records the error, *erases* the statement containing it — replacing its
    characters with spaces, keeping newlines, so every later position is unchanged — and
    parses again. Each round erases at least one token, so the loop ends; it also stops
    at :data:`MAX_ERRORS`. The statement boundaries come from a small token scanner that
    shares its patterns with the grammar. Commitment points (pyparsing's ``-``) after
    an option's ``=`` and a section's ``{`` make the reported position the real one,
    not the start of the enclosing section.

Nothing but :class:`ConfigError` leaves :func:`parse` — not a pyparsing exception, not a
RecursionError (nesting deeper than :data:`MAX_DEPTH` is refused before parsing), not a
UnicodeDecodeError (:func:`decode` positions the bad byte).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import pyparsing as pp

from meta1.config.errors import ConfigError, Diagnostic, Position
from meta1.config.tree import (
    NAME_PATTERN,
    WORD_PATTERN,
    Document,
    ListValue,
    Option,
    Scalar,
    Section,
)

MAX_ERRORS = 100
MAX_DEPTH = 32

STRING_PATTERN = r'"(?:[^"\\\n]|\\[^\n])*"'
UNTERMINATED_STRING_PATTERN = r'"(?:[^"\\\n]|\\[^\n])*\\?'
LINE_COMMENT_PATTERN = r"#[^\n]*"
BLOCK_COMMENT_PATTERN = r"/\*[\s\S]*?\*/"

_SIMPLE_ESCAPES = {
    '"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r",
    "a": "\a", "b": "\b", "f": "\f", "v": "\v",
}
_ESCAPE_RE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)")


class _Lines:
    """Offset → (line, column) for one text, by binary search over line starts."""

    def __init__(self, text: str):
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def position(self, offset: int) -> Position:
        line = bisect.bisect_right(self.starts, offset)
        return Position(line, offset - self.starts[line - 1] + 1)


# ---------------------------------------------------------------------------------------
# Decoding bytes


def decode(data: bytes, filename: str) -> str:
    """UTF-8 text of a configuration file; a bad byte is a positioned error."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = data[: exc.start]
        line = prefix.count(b"\n") + 1
        col = len(prefix[prefix.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise ConfigError(
            [Diagnostic(filename, Position(line, col), f"invalid UTF-8 byte 0x{data[exc.start]:02x}")]
        ) from None


def _unescape(body: str) -> str:
    """Decode backslash escapes of one quoted string body (quotes already removed)."""

    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "x":
            code = int(esc[1:], 16)
        elif esc[0] in "01234567":
            code = int(esc, 8)
        elif esc in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[esc]
        else:
            raise ValueError(f"unknown escape sequence '\\{esc}' in string")
        if code == 0:
            raise ValueError("NUL is not allowed in a string")
        return chr(code)

    return _ESCAPE_RE.sub(one, body)


# ---------------------------------------------------------------------------------------
# The grammar


def _build_grammar(lines_of) -> pp.ParserElement:
    """The pyparsing grammar; ``lines_of(s)`` maps the parsed text to a :class:`_Lines`."""

    def pos(s: str, loc: int) -> Position:
        return lines_of(s).position(loc)

    def punct(ch: str) -> pp.ParserElement:
        return pp.Suppress(pp.Literal(ch).set_name(f"'{ch}'"))

    LBRACE, RBRACE, SEMI, EQ, COMMA = map(punct, "{};=,")

    class LexicalError(pp.ParseFatalException):
        """A mistake inside one token; its message stands alone (no "found ...")."""

    def control_chars(s: str, loc: int, body: str) -> None:
        for i, ch in enumerate(body):
            if (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F:
                raise LexicalError(
                    s, loc + 1 + i, f"control character 0x{ord(ch):02x} in string (use an escape)"
                )

    def string_token(s: str, loc: int, toks: pp.ParseResults) -> str:
        body = toks[0][1:-1]
        control_chars(s, loc, body)
        try:
            return _unescape(body)
        except ValueError as exc:
            raise LexicalError(s, loc, str(exc)) from None

    def unterminated(s: str, loc: int, toks: pp.ParseResults) -> None:
        raise LexicalError(s, loc, "unterminated string (a newline inside quotes is not allowed)")

    string = pp.Regex(STRING_PATTERN).set_name("quoted string").set_parse_action(string_token)
    bad_string = pp.Regex(UNTERMINATED_STRING_PATTERN).set_parse_action(unterminated)
    strings = (pp.OneOrMore(string) | bad_string).set_parse_action(lambda s, l, t: Scalar("".join(t), pos(s, l)))
    word = pp.Regex(WORD_PATTERN).set_name("word").set_parse_action(lambda s, l, t: Scalar(t[0], pos(s, l)))
    scalar = (word | strings).set_name("value")

    items = pp.Forward()
    list_value = (LBRACE - items + RBRACE).set_name("'{'")
    item = (scalar | list_value).set_name("value or '{'")
    items <<= pp.Optional(item + pp.ZeroOrMore(COMMA + item) + pp.Optional(COMMA))
    list_value.set_parse_action(lambda s, l, t: ListValue(tuple(t), pos(s, l)))

    entries = pp.Forward()
    name = pp.Regex(NAME_PATTERN).set_name("option or section name")
    option_rhs = EQ - ((list_value + pp.Optional(SEMI)) | (scalar - SEMI)).set_name("a value or '{'")
    block = LBRACE - pp.Group(entries) + RBRACE + pp.Optional(SEMI)
    # After a section name only "{" may follow: commit there, so the message does not
    # depend on how a pyparsing version reports a failed alternative.
    section_body = (scalar - block) | block
    entry = name - (option_rhs | section_body).set_name("'=' or '{'")

    def make_entry(s: str, loc: int, t: pp.ParseResults):
        if not isinstance(t[-1], pp.ParseResults):
            return Option(t[0], t[1], pos(s, loc))
        section_name = t[1].text if len(t) == 3 else None
        return Section(t[0], section_name, tuple(t[-1]), pos(s, loc))

    entry.set_parse_action(make_entry)
    entries <<= pp.ZeroOrMore(entry)
    end = pp.StringEnd().set_name("an option or section (or end of file)")
    document = entries + end
    # Comments never reach the grammar: parse() blanks them out first (see there).
    document.parse_with_tabs()  # keep offsets in the original text: a tab is one column
    return document


class _Parser:
    """One grammar instance; the current text's line table is looked up by identity."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._lines: _Lines | None = None
        self.grammar = _build_grammar(self._lines_of)

    def _lines_of(self, s: str) -> _Lines:
        if s is not self._text:
            self._text, self._lines = s, _Lines(s)
        assert self._lines is not None
        return self._lines

    def parse(self, text: str) -> Document:
        return Document(tuple(self.grammar.parse_string(text, parse_all=True)))


_PARSER: _Parser | None = None


# ---------------------------------------------------------------------------------------
# Tokens, for recovery and structural checks


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "string", "punct", "bad", "comment", "open-comment", "open-string"
    start: int
    end: int
    text: str


_TOKEN_RE = re.compile(
    "|".join(
        [
            r"(?P<ws>[ \t\r\n]+)",
            f"(?P<comment>{LINE_COMMENT_PATTERN}|{BLOCK_COMMENT_PATTERN})",
            r"(?P<open_comment>/\*[\s\S]*)",
            f"(?P<string>{STRING_PATTERN})",
            f"(?P<open_string>{UNTERMINATED_STRING_PATTERN})",
            f"(?P<word>{WORD_PATTERN})",
            r"(?P<punct>[{};=,])",
            r"(?P<bad>[\s\S])",
        ]
    )
)


def tokenize(text: str) -> list[Token]:
    """All tokens but whitespace; every character belongs to exactly one token."""
    tokens = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(Token(kind.replace("_", "-"), m.start(), m.end(), m.group()))
    return tokens


def _structural_errors(tokens: list[Token]) -> list[tuple[int, str]]:
    """Errors the grammar cannot report well: bad characters, open comments, deep nesting."""
    errors = []
    depth = 0
    for tok in tokens:
        if tok.kind == "open-comment":
            errors.append((tok.start, "unterminated comment ('/*' without '*/')"))
        elif tok.kind == "punct" and tok.text == "{":
            depth += 1
            if depth > MAX_DEPTH:
                errors.append((tok.start, f"nesting deeper than {MAX_DEPTH} levels"))
                break
        elif tok.kind == "punct" and tok.text == "}":
            depth = max(0, depth - 1)
    return errors


def _statement_span(tokens: list[Token], offset: int) -> tuple[int, int] | None:
    """Character span of the statement around a syntax error at ``offset``.

    Start: walk back to the token after the previous ``;``, ``}`` or section ``{``
    (a ``{`` after ``=`` or ``,`` opens a list and belongs to the statement). End: walk
    forward to the statement's ``;`` or past the ``}`` that closes a block opened after the
    error, but stop before a ``}`` that closes an enclosing section. None when the error
    is at the end of the text (nothing left to erase).
    """
    toks = [t for t in tokens if t.kind != "comment"]
    i = next((k for k, t in enumerate(toks) if t.end > offset), len(toks))
    if i == len(toks):
        return None

    def is_punct(k: int, ch: str) -> bool:
        return 0 <= k < len(toks) and toks[k].kind == "punct" and toks[k].text == ch

    def opens_list(k: int) -> bool:
        return is_punct(k, "{") and (is_punct(k - 1, "=") or is_punct(k - 1, ",") or opens_list(k - 1))

    start = i
    while start > 0:
        k = start - 1
        if is_punct(k, ";") or is_punct(k, "}") or (is_punct(k, "{") and not opens_list(k)):
            break
        start = k
    if is_punct(i, "}") and start == i:
        return toks[i].start, toks[i].end  # a stray closing brace

    depth, j = 0, i
    while j < len(toks):
        if is_punct(j, "{"):
            depth += 1
        elif is_punct(j, "}"):
            if depth == 0:
                own_list = any(opens_list(k) for k in range(start, i))
                if not own_list or j == i and start == i:
                    break
            else:
                depth -= 1
                if depth == 0 and not opens_list(_matching_open(toks, j)):
                    j += 2 if is_punct(j + 1, ";") else 1
                    break
        elif is_punct(j, ";") and depth == 0:
            j += 1
            break
        j += 1
    end_tok = min(j, len(toks))
    if end_tok <= start:
        return toks[start].start, toks[start].end
    return toks[start].start, toks[end_tok - 1].end


def _matching_open(toks: list[Token], close: int) -> int:
    depth = 0
    for k in range(close, -1, -1):
        if toks[k].kind == "punct" and toks[k].text == "}":
            depth += 1
        elif toks[k].kind == "punct" and toks[k].text == "{":
            depth -= 1
            if depth == 0:
                return k
    return -1


def _erase(text: str, start: int, end: int) -> str:
    """Blank text[start:end], keeping newlines so later positions do not move."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _without_comments(text: str, tokens: list[Token]) -> str:
    """The text with every comment blanked (newlines kept), in one pass."""
    pieces, done = [], 0
    for tok in tokens:
        if tok.kind == "comment":
            pieces += [text[done:tok.start], re.sub(r"[^\n]", " ", tok.text)]
            done = tok.end
    return "".join(pieces) + text[done:]


def _describe(tokens: list[Token], offset: int) -> str:
    tok = next((t for t in tokens if t.end > offset and t.kind != "comment"), None)
    if tok is None:
        return "end of file"
    shown = tok.text if len(tok.text) <= 30 else tok.text[:27] + "..."
    return repr(shown)


def _message(exc: pp.ParseBaseException, tokens: list[Token]) -> str:
    # pyparsing's own messages are "Expected X"; ours (LexicalError) stand alone. A fatal
    # error raised under a commitment point is re-wrapped by pyparsing, so the type does
    # not survive, the message does.
    if not exc.msg.startswith("Expected "):
        return exc.msg
    return f"expected {exc.msg[len('Expected '):]}, found {_describe(tokens, exc.loc)}"


def parse(text: str, filename: str) -> tuple[Document, list[Diagnostic]]:
    """Parse ``text``; return the tree of what could be read and the syntax errors.

    The tree is usable even when there are errors (the erased statements are simply
    missing), so the caller can go on to report semantic errors in the rest of the file.
    """
    global _PARSER
    if _PARSER is None:
        _PARSER = _Parser()
    lines = _Lines(text)
    tokens = tokenize(text)
    diags = [Diagnostic(filename, lines.position(off), msg) for off, msg in _structural_errors(tokens)]
    if diags:
        return Document(()), diags
    # Comments are blanked out before parsing, like erased statements: positions do not
    # move, and the grammar needs no "ignore" expression, which pyparsing would try
    # before every token (that made parsing three times slower).
    work = _without_comments(text, tokens)
    for _ in range(MAX_ERRORS):
        try:
            return _PARSER.parse(work), diags
        except pp.ParseBaseException as exc:
            offset = min(exc.loc, len(work))
            diags.append(Diagnostic(filename, lines.position(offset), _message(exc, tokens)))
            span = _statement_span(tokenize(work), offset)
            if span is None:
                return Document(()), diags
            work = _erase(work, *span)
        except RecursionError:  # pragma: no cover - MAX_DEPTH keeps nesting shallow
            diags.append(Diagnostic(filename, Position(1, 1), "configuration too deeply nested"))
            return Document(()), diags
    diags.append(Diagnostic(filename, Position(1, 1), f"too many syntax errors (stopped after {MAX_ERRORS})"))
    return Document(()), diags


def parse_strict(text: str, filename: str) -> Document:
    """Parse or raise :class:`ConfigError` with every syntax error."""
    doc, diags = parse(text, filename)
    if diags:
        raise ConfigError(diags)
    return doc
