"""Replies, the reply catalogue, and the text helpers (meta1/smtp/replies.py, text.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime

import pytest
from hypothesis import given, settings, strategies as st

from meta1.smtp import MAX_REPLY_LINE, R, Reply, catalogue, comment_safe, format_date, printable

# The catalogue as the session machine relies on it: name -> (code, enhanced status).
EXPECTED = {
    "GREETING": (220, None), "HELO": (250, None), "OK": (250, "2.0.0"),
    "RESET": (250, "2.0.0"), "SENDER_OK": (250, "2.1.0"), "RECIPIENT_OK": (250, "2.1.5"),
    "START_DATA": (354, None), "ACCEPTED": (250, "2.0.0"), "CHUNK_OK": (250, "2.0.0"),
    "BYE": (221, "2.0.0"), "HELP": (214, "2.0.0"), "VRFY": (252, "2.5.0"),
    "BAD_SEQUENCE": (503, "5.5.1"), "NEED_HELO": (503, "5.5.1"), "NEED_MAIL": (503, "5.5.1"),
    "NEED_RCPT": (503, "5.5.1"), "NESTED_MAIL": (503, "5.5.1"),
    "NO_VALID_RECIPIENTS": (554, "5.5.1"), "UNKNOWN_COMMAND": (500, "5.5.1"),
    "NOT_IMPLEMENTED": (502, "5.5.1"), "LINE_TOO_LONG": (500, "5.5.2"),
    "BARE_LF": (500, "5.5.2"), "BARE_CR": (500, "5.5.2"), "BAD_COMMAND_BYTES": (500, "5.5.2"),
    "SYNTAX": (501, "5.5.2"), "NO_PARAMETERS": (501, "5.5.4"), "HELO_SYNTAX": (501, "5.5.4"),
    "BAD_SENDER": (501, "5.1.7"), "BAD_RECIPIENT": (501, "5.1.3"),
    "PARAM_UNKNOWN": (555, "5.5.4"), "PARAM_INVALID": (501, "5.5.4"),
    "PARAM_DUPLICATE": (501, "5.5.4"), "SMTPUTF8_REQUIRED": (553, "5.6.7"),
    "SIZE_EXCEEDED": (552, "5.3.4"), "TOO_MANY_RECIPIENTS": (452, "4.5.3"),
    "INSUFFICIENT_STORAGE": (452, "4.3.1"), "QUEUE_ERROR": (451, "4.3.0"),
    "BARE_LINE_ENDING": (550, "5.5.2"), "DATA_LINE_TOO_LONG": (550, "5.6.0"),
    "HEADER_NUL": (554, "5.6.0"), "TOO_MANY_HOPS": (554, "5.4.0"), "TIMEOUT": (421, "4.4.2"),
    "TOO_MANY_ERRORS": (421, "4.7.0"), "TOO_MANY_JUNK": (421, "4.7.0"),
    "SHUTDOWN": (421, "4.3.2"), "LOCAL_ERROR": (421, "4.3.0"),
    "AUTH_UNAVAILABLE": (502, "5.5.1"), "BDAT_SYNTAX": (501, "5.5.4"),
    "BDAT_MIX": (503, "5.5.1"), "TOO_MANY_SESSIONS": (421, "4.3.2"), "NO_SERVICE": (503, "5.5.1"),
    # lmtpd (RFC 2033)
    "LMTP_GREETING": (220, None), "NOT_LMTP": (500, "5.5.1"), "LHLO_SYNTAX": (501, "5.5.4"),
    "NO_SUCH_MAILBOX": (550, "5.1.1"), "DELIVERED": (250, "2.0.0"),
    "MAILBOX_WRITE_ERROR": (451, "4.3.0"),
    # policy (meta1/policy)
    "CLIENT_REFUSED": (554, "5.7.1"), "CLIENT_TEMPFAIL": (421, "4.7.0"),
    "SESSION_REFUSED": (503, "5.7.1"), "ACCESS_DENIED": (550, "5.7.1"),
    "ACCESS_TEMPFAIL": (450, "4.7.1"), "MAP_TEMPFAIL": (451, "4.3.0"),
    "RELAY_DENIED": (550, "5.7.1"), "PROTECTED_RECIPIENT": (550, "5.7.1"),
    "UNKNOWN_USER": (550, "5.1.1"), "ALIAS_LOOP": (550, "5.4.6"),
    "ALIAS_TARGET_REFUSED": (550, "5.7.1"), "DNSBL_LISTED": (554, "5.7.1"),
    "GREYLISTED": (450, "4.7.1"), "TOO_MANY_CONNECTIONS": (421, "4.7.0"),
    "CONNECTION_RATE": (421, "4.7.0"),
}
FIELDS = {"hostname", "address", "id", "size", "name", "limit", "count"}
# RFC 5321 §4.2: Reply-code "-" [ textstring ] CRLF, last: Reply-code [ SP textstring ] CRLF
REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])([\x20-\x7e]*))?\r\n")


def parse_wire(data: bytes) -> list[tuple[int, str, str]]:
    """(code, separator, text) of each line; fails unless every line is well formed."""
    lines = data.split(b"\r\n")
    assert lines[-1] == b"", "a reply ends with CRLF"
    out = []
    for raw in lines[:-1]:
        assert len(raw) + 2 <= MAX_REPLY_LINE
        match = REPLY_LINE.fullmatch(raw + b"\r\n")
        assert match, raw
        out.append((int(match[1]), (match[2] or b" ").decode(), (match[3] or b"").decode()))
    return out


def assert_valid_wire(reply: Reply) -> None:
    lines = parse_wire(reply.encode())
    assert len(lines) == len(reply.lines)
    assert [sep for _, sep, _ in lines] == ["-"] * (len(lines) - 1) + [" "]
    for code, _, text in lines:
        assert code == reply.code
        if reply.status:
            assert text.startswith(reply.status + " ") or text == reply.status


def test_the_catalogue_has_exactly_the_agreed_names_codes_and_statuses() -> None:
    got = {name: (reply.code, reply.status) for name, reply in catalogue().items()}
    assert got == EXPECTED
    assert all(getattr(R, name) is reply for name, reply in catalogue().items())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_catalogue_reply_encodes_to_valid_lines(name: str) -> None:
    reply = catalogue()[name]
    assert reply.fields <= FIELDS
    assert_valid_wire(reply)
    assert_valid_wire(reply.format(**{f: "x" for f in FIELDS}))


@settings(deadline=None, max_examples=200)
@given(st.sampled_from(sorted(EXPECTED)), st.text(max_size=700))
def test_formatting_with_hostile_values_still_gives_valid_lines(name: str, value: str) -> None:
    reply = catalogue()[name].format(**{f: value for f in FIELDS})
    assert_valid_wire(reply)
    assert (reply.code, reply.status) == EXPECTED[name]


def test_encode_repeats_the_status_on_every_line() -> None:
    reply = Reply(250, "2.0.0", ("a", "b", "c"))
    assert reply.encode() == b"250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n"
    assert Reply(354, None, ("go",)).encode() == b"354 go\r\n"
    assert R.GREETING.format(hostname="mx.test").encode() == b"220 mx.test ESMTP meta1\r\n"


def test_an_empty_text_leaves_no_trailing_space() -> None:
    assert Reply(250, None, ("",)).encode() == b"250\r\n"
    assert Reply(250, "2.0.0", ("", "x")).encode() == b"250-2.0.0\r\n250 2.0.0 x\r\n"


def test_format_makes_values_printable_and_never_reinterprets_them() -> None:
    reply = R.SENDER_OK.format(address="a\r\nRSET\x00@b\u00e9")
    assert reply.lines == ("Sender <a??RSET?@b?> OK",)
    assert R.PARAM_UNKNOWN.format(name="{hostname}").lines == ("Unsupported parameter {hostname}",)
    assert R.CHUNK_OK.format(size=4096).lines == ("4096 octets received",)
    assert R.ACCEPTED.format(id="S0000018C2B7E5F0A00").encode() == \
        b"250 2.0.0 S0000018C2B7E5F0A00 accepted\r\n"


def test_format_cuts_an_overlong_line_to_the_reply_limit() -> None:
    reply = R.PARAM_UNKNOWN.format(name="X" * 1000)
    assert len(reply.encode()) == MAX_REPLY_LINE
    assert reply.lines[0].endswith("...")


def test_format_needs_every_field_of_the_template() -> None:
    with pytest.raises(KeyError):
        R.GREETING.format()


def test_with_lines_keeps_code_and_status() -> None:
    reply = R.OK.with_lines("one", "two")
    assert (reply.code, reply.status, reply.lines) == (250, "2.0.0", ("one", "two"))
    with pytest.raises(ValueError):
        R.OK.with_lines()
    with pytest.raises(ValueError):
        R.OK.with_lines("evil\r\n250 forged")


@pytest.mark.parametrize("code, status, lines", [
    (199, None, ("x",)), (600, None, ("x",)), (True, None, ("x",)), ("250", None, ("x",)),
    (250, "4.0.0", ("x",)), (550, "2.0.0", ("x",)), (354, "3.0.0", ("x",)),
    (250, "2.0", ("x",)), (250, "2.0.0.0", ("x",)), (250, "2.0000.0", ("x",)),
    (250, "2.a.0", ("x",)), (250, " 2.0.0", ("x",)), (250, "2.\u0661.0", ("x",)),
    (250, None, ()), (250, None, ["x"]), (250, None, ("a\rb",)), (250, None, ("a\nb",)),
    (250, None, ("a\x00",)), (250, None, ("caf\u00e9",)), (250, None, ("\x7f",)),
    (250, None, ("x" * 600,)), (250, None, (b"x",)),
])
def test_invalid_replies_cannot_be_built(code, status, lines) -> None:
    with pytest.raises(ValueError):
        Reply(code, status, lines)


def test_the_longest_line_that_fits() -> None:
    text = "x" * (MAX_REPLY_LINE - len("250 2.0.0 ") - 2)
    assert len(Reply(250, "2.0.0", (text,)).encode()) == MAX_REPLY_LINE
    with pytest.raises(ValueError):
        Reply(250, "2.0.0", (text + "x",))


def test_reply_classes() -> None:
    assert R.OK.positive and R.START_DATA.positive and not R.OK.transient
    assert R.QUEUE_ERROR.transient and not R.QUEUE_ERROR.positive
    assert R.SYNTAX.permanent and not R.SYNTAX.transient
    for reply in catalogue().values():
        assert [reply.positive, reply.transient, reply.permanent].count(True) == 1


# --- text ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("mx.example.org", "mx.example.org"),
    ("a b~", "a b~"),
    ("evil\r\nX-Injected: 1", "evil??X-Injected: 1"),
    ("nul\x00tab\tdel\x7f", "nul?tab?del?"),
    ("caf\u00e9 \u00ff\u0100\U0001F600", "caf? ???"),
    ("bad\udcff\udc80utf8", "bad??utf8"),   # surrogateescape residue of invalid UTF-8
    ("\x85c1\x9b", "?c1?"),                  # C1 controls (NEL, CSI)
    ("", ""),
])
def test_printable(text: str, expected: str) -> None:
    assert printable(text) == expected


def test_printable_replacement_choices() -> None:
    assert printable("a\r\nb", "") == "ab"
    assert printable("a\nb", "_") == "a_b"
    for bad in ("\n", "\x00", "\u00e9"):
        with pytest.raises(ValueError):
            printable("x", bad)


@pytest.mark.parametrize("text, expected", [
    (r"a(b)c\d", "a?b?c?d"),                 # T16: EHLO a(b)c\d
    ("x" * 200, "x" * 200),
    ("h\u00e9lo)\r\n(", "h?lo????"),
])
def test_comment_safe(text: str, expected: str) -> None:
    assert comment_safe(text) == expected


@settings(deadline=None)
@given(st.text())
def test_printable_and_comment_safe_properties(text: str) -> None:
    clean = printable(text)
    assert len(clean) == len(text)
    assert all(" " <= c <= "~" for c in clean)
    assert printable(clean) == clean
    safe = comment_safe(text)
    assert len(safe) == len(text) and not set("()\\") & set(safe)
    assert all(c == "?" or c == o for c, o in zip(safe, text))


@pytest.mark.parametrize("epoch, offset, expected", [
    (0, 0, "Thu, 01 Jan 1970 00:00:00 +0000"),
    (1795600800, 0, "Wed, 25 Nov 2026 10:00:00 +0000"),
    (2**31 - 1, 0, "Tue, 19 Jan 2038 03:14:07 +0000"),
    (2**31, 0, "Tue, 19 Jan 2038 03:14:08 +0000"),       # past the 32-bit time_t end
    (2**32, 0, "Sun, 07 Feb 2106 06:28:16 +0000"),
    (0, 60, "Thu, 01 Jan 1970 01:00:00 +0100"),
    (0, -330, "Wed, 31 Dec 1969 18:30:00 -0530"),
    (-1, 0, "Wed, 31 Dec 1969 23:59:59 +0000"),
    (253402300799, 0, "Fri, 31 Dec 9999 23:59:59 +0000"),
])
def test_format_date(epoch: int, offset: int, expected: str) -> None:
    assert format_date(epoch, offset) == expected


@pytest.mark.parametrize("epoch, offset", [(0, 24 * 60), (0, -24 * 60), (253402300800, 0),
                                           (10**20, 0)])
def test_format_date_out_of_range(epoch: int, offset: int) -> None:
    with pytest.raises(ValueError):
        format_date(epoch, offset)


@settings(deadline=None)
@given(st.integers(-2**35, 2**37), st.integers(-1439, 1439))
def test_format_date_agrees_with_the_email_package(epoch: int, offset: int) -> None:
    zone = timezone(timedelta(minutes=offset))
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=epoch)
    assert format_date(epoch, offset) == format_datetime(moment.astimezone(zone))
    assert parsedate_to_datetime(format_date(epoch, offset)) == moment
