"""Access-map right-hand sides (meta1/policy/rhs.py): the grammar, QUICK: (B46), literal
replies and their macros, and that nothing but a valid RHS is ever accepted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meta1.policy.rhs import Action, Macros, Rhs, RhsError, Stage, expand, failure_reply, parse_rhs, reply_at
from meta1.smtp.replies import MAX_REPLY_LINE, R, Reply

M = Macros(client_addr="192.0.2.1", client_name="c.example", sender="s@example.net", rcpt="r@ours.test",
           hostname="mx.ours.test")


@pytest.mark.parametrize("text, rhs", [
    ("OK", Rhs(Action.OK)),
    (" relay ", Rhs(Action.RELAY)),
    ("REJECT", Rhs(Action.REJECT)),
    ("TEMPFAIL", Rhs(Action.TEMPFAIL)),
    ("temp", Rhs(Action.TEMPFAIL)),
    ("DISCARD", Rhs(Action.DISCARD)),
    ("QUICK:OK", Rhs(Action.OK, quick=True)),
    ("quick: REJECT", Rhs(Action.REJECT, quick=True)),
    ("550 5.7.1 go away", Rhs(Action.REPLY, False, 550, "5.7.1", "go away")),
    ('"550 5.7.1 go away"', Rhs(Action.REPLY, False, 550, "5.7.1", "go away")),
    ("QUICK:451 4.3.2 later", Rhs(Action.REPLY, True, 451, "4.3.2", "later")),
    ("550 no status", Rhs(Action.REPLY, False, 550, "5.7.1", "no status")),
    ("421", Rhs(Action.REPLY, False, 421, "4.7.1", "")),
    ("554 5.7.1 ${client_addr} at ${hostname}", Rhs(Action.REPLY, False, 554, "5.7.1", "${client_addr} at ${hostname}")),
    ("550 5.7.1 caf\u00e9\x01", Rhs(Action.REPLY, False, 550, "5.7.1", "caf??")),
])
def test_parse(text: str, rhs: Rhs) -> None:
    assert parse_rhs(text) == rhs


@pytest.mark.parametrize("text", [
    "", "QUICK:", "OKAY", "REJECT now", "250 2.0.0 fine", "350 x", "55 x", "5500 x", "550x",
    "550 4.7.1 wrong class", "550 5.7 short", "550 1.2.3 bad class", "550 5.7.1 ${nosuch}",
    "550 5.7.1 ${client_addr", "QUICK:QUICK:OK", "O\u212a", "QUIC\u212a:OK",
])
def test_invalid(text: str) -> None:
    with pytest.raises(RhsError):
        parse_rhs(text)


@pytest.mark.parametrize("text, stage, code, status, line", [
    ("REJECT", Stage.CONNECT, 554, "5.7.1", "mx.ours.test access denied"),
    ("REJECT", Stage.MAIL, 550, "5.7.1", "Access denied"),
    ("REJECT", Stage.RCPT, 550, "5.7.1", "Access denied"),
    ("TEMPFAIL", Stage.CONNECT, 421, "4.7.0", "mx.ours.test access temporarily denied; closing connection"),
    ("TEMPFAIL", Stage.RCPT, 450, "4.7.1", "Access temporarily denied; try again later"),
    ("553 5.7.1 no ${sender}", Stage.MAIL, 553, "5.7.1", "no s@example.net"),
    ("553 5.7.1 no ${sender}", Stage.CONNECT, 554, "5.7.1", "no s@example.net"),    # RFC 5321 §3.1
    ("452 4.7.9 busy", Stage.CONNECT, 421, "4.7.9", "busy"),
    ("550 5.7.1", Stage.RCPT, 550, "5.7.1", "Access denied"),
    ("451", Stage.RCPT, 451, "4.7.1", "Access temporarily denied; try again later"),
    ("550 5.7.1 ${rcpt} from ${client_name} [${client_addr}]${dnsbl}", Stage.RCPT, 550, "5.7.1",
     "r@ours.test from c.example [192.0.2.1]"),
])
def test_reply_at(text, stage, code, status, line) -> None:
    reply = reply_at(parse_rhs(text), stage, M)
    assert (reply.code, reply.status, reply.lines) == (code, status, (line,))


def test_accepting_rhs_have_no_reply() -> None:
    for text in ("OK", "RELAY", "DISCARD"):
        rhs = parse_rhs(text)
        assert rhs.accepts == (text != "DISCARD") and not rhs.rejects
        with pytest.raises(ValueError):
            reply_at(rhs, Stage.RCPT, M)


def test_macro_values_are_printable_and_never_expanded_again() -> None:
    macros = Macros(sender="a\r\nRSET\x00${hostname}", hostname="mx")
    assert expand("<${sender}>", macros) == "<a??RSET?${hostname}>"
    reply = reply_at(parse_rhs("550 5.7.1 ${sender} {hostname}"), Stage.MAIL, macros)
    assert reply.lines == ("a??RSET?${hostname} {hostname}",)


def test_a_long_reply_is_cut_to_one_reply_line() -> None:
    reply = reply_at(parse_rhs("550 5.7.1 " + "x" * 600), Stage.RCPT, M)
    assert len(reply.encode()) == MAX_REPLY_LINE and reply.lines[0].endswith("...")
    long_value = Macros(sender="y" * 1000)
    assert len(reply_at(parse_rhs("550 5.7.1 ${sender}"), Stage.MAIL, long_value).encode()) <= MAX_REPLY_LINE


def test_failures_are_temporary_at_every_stage() -> None:
    assert failure_reply(Stage.CONNECT, "mx").code == 421
    assert failure_reply(Stage.MAIL) is R.MAP_TEMPFAIL and failure_reply(Stage.RCPT).code == 451


def test_str_round_trips() -> None:
    for text in ("OK", "QUICK:RELAY", "550 5.7.1 go away", "QUICK:451 4.3.0 x"):
        assert parse_rhs(str(parse_rhs(text))) == parse_rhs(text)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"(QUICK:)?[45][0-9][0-9]( [245]\.[0-9]\.[0-9]+)?( .{0,40})?",
                                             fullmatch=True))
def test_anything_parses_to_a_valid_rhs_or_fails_cleanly(text: str) -> None:
    try:
        rhs = parse_rhs(text)
    except RhsError:
        return
    if rhs.action is Action.REPLY:
        assert 400 <= rhs.code < 600 and rhs.status[0] == str(rhs.code)[0]
        for stage in Stage:
            reply = reply_at(rhs, stage, M)
            assert isinstance(reply, Reply) and not reply.positive
            assert len(reply.encode()) <= MAX_REPLY_LINE
    else:
        assert text.strip().lower().removeprefix("quick:").strip() in (
            "ok", "relay", "reject", "tempfail", "temp", "discard")
