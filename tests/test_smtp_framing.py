"""Command-line framing, DATA decoding and content checks (meta1/smtp/framing.py).

Each machine is compared with a small whole-input reference written straight from the
rules in spec/smtp.md, for every way of splitting the input into segments.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from meta1.smtp import (BareLF, CommandLine, ContentScanner, DataDecoder, LineFramer,
                        LineTooLong, R, Reply)

FAST = settings(deadline=None, max_examples=300)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def every_split(data: bytes):
    """The one-piece input, then every split into two pieces."""
    yield [data]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]


# --- LineFramer ------------------------------------------------------------------------

def reference_lines(data: bytes, max_length: int) -> list:
    """The framing rules applied to the whole input at once."""
    out: list = []
    start = 0
    while (end := data.find(b"\n", start)) >= 0:
        if end == start or data[end - 1] != 0x0D:
            return out + [BareLF()]
        length = end + 1 - start
        line = data[start:end - 1]
        out.append(LineTooLong(length) if length > max_length
                   else CommandLine(line, b"\r" in line))
        start = end + 1
    return out


def drain(framer: LineFramer) -> list:
    out: list = []
    while (item := framer.pop()) is not None:
        out.append(item)
        if isinstance(item, BareLF):
            break
    return out


def frame(chunks: list[bytes], max_length: int, pop_between: bool = True) -> list:
    framer = LineFramer(max_length)
    out: list = []
    for chunk in chunks:
        framer.feed(chunk)
        if pop_between and not (out and isinstance(out[-1], BareLF)):
            out += drain(framer)
    if not (out and isinstance(out[-1], BareLF)):
        out += drain(framer)
    return out


@pytest.mark.parametrize("data, expected", [
    (b"NOOP\r\n", [CommandLine(b"NOOP", False)]),
    (b"\r\n", [CommandLine(b"", False)]),
    (b"EHLO a\r\nMAIL FROM:<a@b>\r\n", [CommandLine(b"EHLO a", False),
                                        CommandLine(b"MAIL FROM:<a@b>", False)]),
    (b"NOOP", []),
    (b"NOOP\r", []),                                   # the CR waits for the next feed
    (b"NO\rOP\r\n", [CommandLine(b"NO\rOP", True)]),
    (b"NOOP\r\r\n", [CommandLine(b"NOOP\r", True)]),
    (b"\rNOOP\r\n", [CommandLine(b"\rNOOP", True)]),
    (b"EHLO a\n", [BareLF()]),                         # T01
    (b"\n", [BareLF()]),
    (b"NOOP\r\nEHLO a\nNOOP\r\n", [CommandLine(b"NOOP", False), BareLF()]),
    (b"NO\x00OP\xff\r\n", [CommandLine(b"NO\x00OP\xff", False)]),
])
def test_line_framer_cases(data: bytes, expected: list) -> None:
    for chunks in every_split(data):
        assert frame(chunks, 512) == expected, chunks


def test_segmented_crlf_is_one_line_end() -> None:
    framer = LineFramer(512)                           # T01: "EHLO a\r" then "\n"
    framer.feed(b"EHLO a\r")
    assert framer.pop() is None and framer.buffered == 7
    framer.feed(b"\n")
    assert framer.pop() == CommandLine(b"EHLO a", False)
    assert framer.pop() is None and framer.buffered == 0


@pytest.mark.parametrize("length, expected", [
    (512, CommandLine(b"NOOP " + b"x" * 505, False)),  # T05: 512 octets with CRLF fit
    (513, LineTooLong(513)),
    (10_000, LineTooLong(10_000)),
    (1_000_000, LineTooLong(1_000_000)),
])
def test_line_limit_counts_the_crlf_and_resyncs(length: int, expected) -> None:
    line = (b"NOOP " + b"x" * (length - 7))[:length - 2] + b"\r\n"
    assert len(line) == length
    data = line + b"NOOP\r\n"
    for chunks in ([data], pieces(data, [1, 509, 510, 511, 512, length - 1]),
                   pieces(data, list(range(0, len(data), 4096)))):
        assert frame(chunks, 512) == [expected, CommandLine(b"NOOP", False)]


def test_an_overlong_line_never_yields_its_tail_as_a_command() -> None:
    # reliability §3.2: 70,000 × "A", a pause, then a command (T06).
    framer = LineFramer(512)
    framer.feed(b"A" * 70_000)
    assert framer.pop() is None
    framer.feed(b"MAIL FROM:<spoof@example>\r\nNOOP\r\n")
    assert drain(framer) == [LineTooLong(70_000 + 27), CommandLine(b"NOOP", False)]


def test_an_overlong_data_line_ending_in_a_dot_does_not_end_data() -> None:
    # The DATA variant of reliability §3.2: "." after a long line is not at a line start.
    decoder = DataDecoder()
    content = decoder.feed(b"A" * 70_000)
    content += decoder.feed(b".\r\nMAIL FROM:<spoof@example>\r\n")
    assert not decoder.done and content.endswith(b"A.\r\nMAIL FROM:<spoof@example>\r\n")


def test_memory_stays_bounded_for_a_ten_megabyte_line() -> None:
    framer = LineFramer(512)
    chunk = b"x" * 65536
    for _ in range(160):                               # 10 MiB, and no pop() in between
        framer.feed(chunk)
        assert framer.buffered < 512
    framer.feed(b"\r\nQUIT\r\n")
    assert drain(framer) == [LineTooLong(160 * 65536 + 2), CommandLine(b"QUIT", False)]


def test_bare_lf_is_sticky() -> None:
    framer = LineFramer(512)
    framer.feed(b"HELO a\nNOOP\r\n")
    assert framer.pop() == BareLF()
    framer.feed(b"NOOP\r\n")
    assert framer.pop() == BareLF()


def test_bare_lf_inside_an_overlong_line() -> None:
    for chunks in every_split(b"x" * 600 + b"\nNOOP\r\n"):
        assert frame(chunks, 512) == [BareLF()]
    assert frame([b"x" * 600 + b"\r", b"\nNOOP\r\n"], 512) == [LineTooLong(602),
                                                               CommandLine(b"NOOP", False)]
    assert frame([b"x" * 600 + b"\r", b"x\nNOOP\r\n"], 512) == [BareLF()]


def test_take_rest_hands_over_the_raw_bytes_after_the_popped_line() -> None:
    framer = LineFramer(512)
    framer.feed(b"DATA\r\nSubject: x\r\n\r\n" + b"y" * 2000 + b"\n.\r\n")
    assert framer.pop() == CommandLine(b"DATA", False)
    rest = framer.take_rest()
    assert rest == b"Subject: x\r\n\r\n" + b"y" * 2000 + b"\n.\r\n"
    assert framer.buffered == 0 and framer.pop() is None
    framer.feed(b"QUIT\r\n")
    assert framer.pop() == CommandLine(b"QUIT", False)


def test_starttls_leftover_plaintext_is_visible() -> None:
    framer = LineFramer(512)                           # reliability §3.2 item 2, T29
    framer.feed(b"STARTTLS\r\nRSET-INJECTED\r\n")
    assert framer.pop() == CommandLine(b"STARTTLS", False)
    assert framer.buffered == len(b"RSET-INJECTED\r\n")
    assert framer.take_rest() == b"RSET-INJECTED\r\n"


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        LineFramer(1)


FRAME_TOKENS = st.sampled_from([b"\r", b"\n", b"\r\n", b"A", b"NOOP", b"x" * 7, b"\x00", b"\xff"])


@FAST
@given(st.lists(FRAME_TOKENS, max_size=40).map(b"".join), st.integers(2, 12),
       st.lists(st.integers(0, 400), max_size=8), st.booleans())
def test_line_framer_split_invariance(data: bytes, max_length: int, cuts: list[int],
                                      pop_between: bool) -> None:
    expected = reference_lines(data, max_length)
    assert frame([data], max_length) == expected
    assert frame(pieces(data, cuts), max_length, pop_between) == expected
    assert frame([bytes([b]) for b in data], max_length, pop_between) == expected


# --- DataDecoder -----------------------------------------------------------------------

def reference_data(data: bytes) -> tuple[bytes, bytes] | None:
    """(content, rest) by the rules, or None while no terminator is in ``data``."""
    if data.startswith(b".\r\n"):
        return b"", data[3:]
    end = data.find(b"\r\n.\r\n")
    if end < 0:
        return None
    lines = data[:end + 2].split(b"\r\n")
    content = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    return content, data[end + 5:]


def decode(chunks: list[bytes]) -> tuple[bytes, bytes, bool]:
    decoder = DataDecoder()
    content = b"".join(decoder.feed(chunk) for chunk in chunks)
    return content, decoder.rest, decoder.done


def dot_stuff(content: bytes) -> bytes:
    """What a client sends for ``content``: CRLF-terminated, dot-stuffed, terminated."""
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = (b"." if content.startswith(b".") else b"") + content.replace(b"\r\n.", b"\r\n..")
    return stuffed + b".\r\n"


@pytest.mark.parametrize("data, content, rest", [
    (b".\r\n", b"", b""),                                     # empty message
    (b".\r\nQUIT\r\n", b"", b"QUIT\r\n"),
    (b"a\r\n.\r\n", b"a\r\n", b""),                           # the final CRLF is content
    (b"..\r\n.\r\n", b".\r\n", b""),
    (b"..a\r\n.b\r\n...\r\n.\r\n", b".a\r\nb\r\n..\r\n", b""),
    (b".\rX\r\n.\r\n", b"\rX\r\n", b""),                      # dot removed before a bare CR
    (b".\n.\r\n", b"\n.\r\n", None),                          # not a terminator: no CRLF before
    (b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", b"a\r\n", b"MAIL FROM:<x@y>\r\n"),
    (b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n"),
    (b"a.\r\n.\r\n", b"a.\r\n", b""),                          # a dot inside a line stays
    (b"a\r\n .\r\n.\r\n", b"a\r\n .\r\n", b""),
])
def test_data_decoder_cases(data: bytes, content: bytes, rest: bytes | None) -> None:
    for chunks in every_split(data):
        got_content, got_rest, done = decode(chunks)
        if rest is None:
            assert not done
            assert got_content.startswith(b"\n")
        else:
            assert (got_content, got_rest, done) == (content, rest, True), chunks


def test_bytes_after_the_end_go_to_rest() -> None:
    decoder = DataDecoder()
    assert decoder.feed(b"x\r\n.\r\nNO") == b"x\r\n"
    assert decoder.done and decoder.rest == b"NO"
    assert decoder.feed(b"OP\r\n") == b"" and decoder.rest == b"NOOP\r\n"


def test_only_the_dot_and_dot_cr_are_held_back() -> None:
    decoder = DataDecoder()
    assert decoder.feed(b"abc\r") == b"abc\r"
    assert decoder.feed(b"\n") == b"\n"
    assert decoder.feed(b".") == b""
    assert decoder.feed(b"\r") == b""
    assert decoder.feed(b"x") == b"\rx"


# reliability §3.1 "Inbound SMTP smuggling": none of these ends DATA.
SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\r\n.\r\r\n",
             b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n\n.\r\n", b"\r\r\n.\r\r\n", b"\n.\n\r\n"]
SMUGGLED = b"MAIL FROM:<ceo@victim>\r\nRCPT TO:<x@ours.example>\r\nDATA\r\nSubject: forged\r\n"


@pytest.mark.parametrize("sequence", SMUGGLING)
def test_smuggling_sequences_do_not_end_data(sequence: bytes) -> None:
    data = b"Subject: hi\r\n\r\nbody" + sequence + SMUGGLED + b"\r\n.\r\nQUIT\r\n"
    for chunks in every_split(data):
        content, rest, done = decode(chunks)
        assert done and rest == b"QUIT\r\n"                   # exactly one terminator
        assert b"MAIL FROM:<ceo@victim>" in content           # the smuggled text is content
        framer = LineFramer(512)
        framer.feed(rest)
        assert drain(framer) == [CommandLine(b"QUIT", False)]
    scanner = ContentScanner(max_size=10_000, max_line_length=998)
    scanner.feed(content)
    verdict = scanner.finish()
    if b"\r\n" in sequence and sequence.replace(b"\r\n", b"").replace(b".", b"") in (b"", b"\x00"):
        # CRLF-clean variants (NUL and dot in the body) are accepted as body text.
        assert verdict is None and b"\x00" in content
    else:
        assert verdict is R.BARE_LINE_ENDING


@FAST
@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b"\x00"]),
                max_size=30).map(b"".join),
       st.lists(st.sampled_from([b"\r\n", b".", b"Q"]), max_size=4).map(b"".join),
       st.lists(st.integers(0, 200), max_size=8))
def test_data_decoder_split_invariance(body: bytes, tail: bytes, cuts: list[int]) -> None:
    data = body + b"\r\n.\r\n" + tail
    content, rest = reference_data(data)
    assert decode([data]) == (content, rest, True)
    assert decode(pieces(data, cuts)) == (content, rest, True)
    assert decode([bytes([b]) for b in data]) == (content, rest, True)


@FAST
@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"..", b"a", b"\r\n", b"\x00", b"\xff"]),
                max_size=30).map(b"".join),
       st.lists(st.integers(0, 200), max_size=6))
def test_dot_stuffing_round_trip(content: bytes, cuts: list[int]) -> None:
    wire = dot_stuff(content) + b"NEXT\r\n"                   # T04
    expected = content + (b"\r\n" if content and not content.endswith(b"\r\n") else b"")
    assert decode(pieces(wire, cuts)) == (expected, b"NEXT\r\n", True)


def test_large_data_is_decoded_in_one_pass() -> None:
    body = (b"." * 3 + b"x" * 60 + b"\r\n") * 30_000            # ~2 MB, a dot on every line
    content, rest, done = decode(pieces(body + b".\r\n", list(range(0, len(body), 65536))))
    assert done and rest == b"" and content == body.replace(b"\r\n.", b"\r\n")[1:]


# --- ContentScanner --------------------------------------------------------------------

RECEIVED = re.compile(rb"\r\nreceived[ \t]{0,16}:", re.IGNORECASE)


def reference_verdict(content: bytes, max_size: int, max_line: int, max_hops: int):
    if len(content) > max_size:
        return R.SIZE_EXCEEDED
    if re.search(rb"\r(?!\n)|(?<!\r)\n", content):
        return R.BARE_LINE_ENDING
    *finished, last = content.split(b"\n")
    if any(len(line) - line.endswith(b"\r") > max_line for line in finished) or len(last) > max_line:
        return R.DATA_LINE_TOO_LONG.format(limit=max_line)
    window = b"\r\n" + content
    end = window.find(b"\r\n\r\n")
    header = window if end < 0 else window[:end + 2]
    if b"\x00" in header:
        return R.HEADER_NUL
    hops = len(RECEIVED.findall(header))
    if hops > max_hops:
        return R.TOO_MANY_HOPS.format(count=hops)
    return None


def scan(chunks: list[bytes], max_size: int = 10_000, max_line: int = 998,
         max_hops: int = 100) -> tuple[Reply | None, ContentScanner]:
    scanner = ContentScanner(max_size=max_size, max_line_length=max_line, max_hops=max_hops)
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.finish(), scanner


def state(scanner: ContentScanner) -> tuple:
    return (scanner.size, scanner.too_big, scanner.line_too_long, scanner.bare_line_ending,
            scanner.header_nul, scanner.eight_bit, scanner.hops)


@pytest.mark.parametrize("content, verdict", [
    (b"", None),
    (b"Subject: x\r\n\r\nbody\r\n", None),
    (b"Subject: x\r\n\r\nno final CRLF", None),                # BDAT content may end so
    (b"Subject: x\r\n\r\nbody\x00\r\n", None),                 # NUL in the body (D-SMTP-13)
    (b"Subject: x\x00\r\n\r\nbody\r\n", R.HEADER_NUL),
    (b"Subject: x\r\n\x00\r\n\r\n", R.HEADER_NUL),
    (b"\r\nSubject: x\x00\r\n", None),                        # empty first line: all body
    (b"Subject: x\r\n\r\nbare\nLF\r\n", R.BARE_LINE_ENDING),
    (b"Subject: x\r\n\r\nbare\rCR\r\n", R.BARE_LINE_ENDING),
    (b"Subject: x\r\n\r\nends in CR\r", R.BARE_LINE_ENDING),
    (b"\n", R.BARE_LINE_ENDING),
    (b"x" * 998 + b"\r\n", None),
    (b"x" * 999 + b"\r\n", R.DATA_LINE_TOO_LONG.format(limit=998)),
    (b"a\r\n" + b"x" * 999, R.DATA_LINE_TOO_LONG.format(limit=998)),
    (b"Received: a\r\n" * 100 + b"\r\n", None),
    (b"Received: a\r\n" * 101 + b"\r\n", R.TOO_MANY_HOPS.format(count=101)),
    (b"received:a\r\nRECEIVED :b\r\nReceived\t:c\r\n" * 34 + b"\r\n",
     R.TOO_MANY_HOPS.format(count=102)),
    (b"X: y\r\n\r\n" + b"Received: a\r\n" * 200, None),        # in the body: not hops
    (b"X-Received: a\r\n Received: b\r\nReceivedX: c\r\n" * 50 + b"\r\n", None),
    (b"x" * 10_001, R.SIZE_EXCEEDED),
    (b"x\n" * 6_000, R.SIZE_EXCEEDED),                        # size wins over everything
    (b"x\x00\n" + b"y" * 2000 + b"\r\n", R.BARE_LINE_ENDING),  # then bare line endings
])
def test_content_scanner_cases(content: bytes, verdict) -> None:
    for chunks in ([content], pieces(content, list(range(0, len(content), 7))),
                   pieces(content, list(range(0, len(content), 1000)))):
        assert scan(chunks)[0] == verdict
    assert reference_verdict(content, 10_000, 998, 100) == verdict


def test_content_scanner_split_at_every_point() -> None:
    content = (b"Received: a\r\nX: b\x80\r\nreceived :c\r\n\r\n\x00body\r\n"
               b"x" * 20 + b"\r\n.\r\n")
    expected = scan([content], max_line=30, max_hops=1)
    assert expected[0] == R.TOO_MANY_HOPS.format(count=2) and expected[1].eight_bit
    for chunks in every_split(content):
        verdict, scanner = scan(chunks, max_line=30, max_hops=1)
        assert (verdict, state(scanner)) == (expected[0], state(expected[1]))


def test_flags() -> None:
    _, scanner = scan([b"Subject: \xc3\xa9\r\n\r\n\x00"])
    assert scanner.eight_bit and not scanner.header_nul and scanner.size == 16
    _, scanner = scan([b"x" * 50], max_size=10)
    assert scanner.too_big and scanner.size == 50


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        ContentScanner(max_size=-1, max_line_length=998)
    with pytest.raises(ValueError):
        ContentScanner(max_size=1, max_line_length=0)


SCAN_TOKENS = st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"x", b"xxxxx", b"\x00",
                               b"\xe9", b"Received:", b"received \t:", b"\r\nReceived: x"])


@FAST
@given(st.lists(SCAN_TOKENS, max_size=30).map(b"".join), st.lists(st.integers(0, 300), max_size=8),
       st.integers(20, 400), st.integers(1, 12), st.integers(0, 3))
def test_content_scanner_split_invariance(content: bytes, cuts: list[int], max_size: int,
                                          max_line: int, max_hops: int) -> None:
    verdict, whole = scan([content], max_size, max_line, max_hops)
    assert verdict == reference_verdict(content, max_size, max_line, max_hops)
    for chunks in (pieces(content, cuts), [bytes([b]) for b in content]):
        split_verdict, split = scan(chunks, max_size, max_line, max_hops)
        assert split_verdict == verdict
        if not whole.too_big:
            assert state(split) == state(whole)
