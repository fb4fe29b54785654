"""The client-side reply parser: RFC 5321 §4.2 syntax, enhanced codes, limits, unsolicited data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meta1.smtp.replies import Reply
from meta1.smtp.replyparser import ReplyError, ReplyParser


def parse_all(data: bytes, awaited: int, **limits) -> list[Reply]:
    parser = ReplyParser(**limits)
    parser.feed(data)
    replies = []
    while (reply := parser.pop(awaited - len(replies))) is not None:
        replies.append(reply)
    return replies


@pytest.mark.parametrize("wire, expected", [
    (b"220 mx.example ESMTP\r\n", Reply(220, None, ("mx.example ESMTP",))),
    (b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n", Reply(250, None, ("mx", "PIPELINING", "8BITMIME"))),
    # smtp-sink ends its EHLO reply with an empty "250 " line; "250" alone is legal too.
    (b"250-mx\r\n250 \r\n", Reply(250, None, ("mx", ""))),
    (b"250\r\n", Reply(250, None, ("",))),
    (b"354 go ahead\r\n", Reply(354, None, ("go ahead",))),
    # RFC 2034: the enhanced code is split off every line that carries it.
    (b"550-5.1.1 no such\r\n550 5.1.1 user\r\n", Reply(550, "5.1.1", ("no such", "user"))),
    (b"250 2.0.0\r\n", Reply(250, "2.0.0", ("",))),
    # A status of another class than the code is text, not a status.
    (b"550 4.1.1 odd\r\n", Reply(550, None, ("4.1.1 odd",))),
    (b"250 2.0.0x ok\r\n", Reply(250, None, ("2.0.0x ok",))),
    # 8-bit text is reduced, a tab becomes a space.
    (b"550 5.7.1 caf\xc3\xa9\tno\r\n", Reply(550, "5.7.1", ("caf?? no",))),
])
def test_well_formed_replies(wire: bytes, expected: Reply) -> None:
    assert parse_all(wire, 1) == [expected]


@pytest.mark.parametrize("wire", [
    b"25 short\r\n",
    b"2500 four digits\r\n",
    b"abc letters\r\n",
    b"150 first digit 1\r\n",
    b"650 first digit 6\r\n",
    b"260 second digit 6\r\n",
    b"250_underscore\r\n",
    b"250-first\r\n251 second code\r\n",      # mixed codes in one reply
    b"250-first\r\n550 second code\r\n",
    b"250 bare LF\n",
    b"\n",
    b"250 bare\rCR\r\n",
    b"250 NUL\x00\r\n",
    b"250 escape\x1b[2J\r\n",
])
def test_malformed_replies_are_errors(wire: bytes) -> None:
    with pytest.raises(ReplyError):
        parse_all(wire, 5)


def test_the_error_is_sticky() -> None:
    parser = ReplyParser()
    parser.feed(b"25x\r\n250 ok\r\n")
    with pytest.raises(ReplyError):
        parser.pop(2)
    parser.feed(b"250 ok\r\n")
    with pytest.raises(ReplyError):
        parser.pop(2)


def test_line_length_limit_counts_the_crlf() -> None:
    ok = b"250 " + b"x" * (512 - 6) + b"\r\n"
    assert len(ok) == 512
    assert parse_all(ok, 1)[0].lines == ("x" * 506,)
    with pytest.raises(ReplyError):
        parse_all(b"250 " + b"x" * 507 + b"\r\n", 1)


def test_an_endless_line_is_refused_without_waiting_for_its_end() -> None:
    parser = ReplyParser()
    for _ in range(3):
        parser.feed(b"250 " + b"x" * 200)
        if parser.buffered >= 512:
            break
        assert parser.pop(1) is None
    with pytest.raises(ReplyError):
        parser.pop(1)
    parser.feed(b"x" * 10_000_000)      # nothing more is kept
    assert parser.buffered == 0


def test_line_count_limit() -> None:
    wire = b"".join(b"250-line\r\n" for _ in range(9)) + b"250 last\r\n"
    assert len(parse_all(wire, 1, max_lines=10)[0].lines) == 10
    with pytest.raises(ReplyError):
        parse_all(b"250-extra\r\n" + wire, 1, max_lines=10)


def test_a_longer_configured_line_is_cut_to_a_reply_line() -> None:
    reply = parse_all(b"550 5.0.0 " + b"y" * 1000 + b"\r\n", 1, max_line_length=2048)[0]
    assert len(reply.encode()) == 512 and reply.status == "5.0.0"


def test_unsolicited_data_is_an_error() -> None:
    parser = ReplyParser()
    parser.feed(b"250 ok\r\n")
    with pytest.raises(ReplyError, match="unsolicited"):
        parser.pop(0)


def test_a_reply_beyond_those_awaited_is_never_returned() -> None:
    # Response injection: the server answers twice to one command. The second reply must
    # never become the answer to the next command.
    parser = ReplyParser()
    parser.feed(b"250 ok\r\n250 injected\r\n")
    assert parser.pop(1) == Reply(250, None, ("ok",))
    with pytest.raises(ReplyError):
        parser.pop(0)


def test_partial_unsolicited_bytes_are_an_error_too() -> None:
    parser = ReplyParser()
    parser.feed(b"2")
    with pytest.raises(ReplyError):
        parser.pop(0)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.sampled_from([
    b"220 mx ESMTP\r\n", b"250-mx\r\n250-PIPELINING\r\n250 \r\n", b"550 5.1.1 no\r\n",
    b"354 go\r\n", b"421-4.3.2 shutting\r\n421 4.3.2 down\r\n"]), min_size=1, max_size=6),
       st.data())
def test_any_split_gives_the_same_replies(replies: list[bytes], data) -> None:
    wire = b"".join(replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    parser = ReplyParser()
    got = []
    start = 0
    for cut in cuts + [len(wire)]:
        parser.feed(wire[start:cut])
        start = cut
        while (reply := parser.pop(len(replies) - len(got))) is not None:
            got.append(reply)
    assert got == parse_all(wire, len(replies))
    assert len(got) == len(replies)


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=600), st.integers(0, 3))
def test_arbitrary_bytes_give_replies_or_reply_error(wire: bytes, awaited: int) -> None:
    parser = ReplyParser()
    parser.feed(wire)
    try:
        for _ in range(awaited + 1):
            if parser.pop(awaited) is None:
                break
            awaited -= 1
    except ReplyError:
        pass
