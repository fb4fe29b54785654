"""MAIL/RCPT arguments and ESMTP parameters (meta1/smtp/params.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meta1.smtp import (AddressError, Extensions, MailArgs, Mailbox, ParamError, Path, R,
                        RcptArgs, SMTPError, parse_mail, parse_rcpt, xtext_decode, xtext_encode)

ALL = Extensions(auth=True)
AB = Path(Mailbox("a", "b.example"))


def mail(argument: str, ext: Extensions = ALL) -> MailArgs:
    return parse_mail(argument, ext)


def rcpt(argument: str, ext: Extensions = ALL, smtputf8: bool = False) -> RcptArgs:
    return parse_rcpt(argument, ext, smtputf8=smtputf8)


def refused(call, *args, **kwargs) -> SMTPError:
    with pytest.raises(SMTPError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize("argument, expected", [
    ("FROM:<a@b.example>", MailArgs(AB)),
    ("from:<a@b.example>", MailArgs(AB)),
    ("From:<a@b.example>", MailArgs(AB)),
    (" FROM:<a@b.example>", MailArgs(AB)),                        # the caller's SP after MAIL
    ("FROM: <a@b.example>", MailArgs(AB)),                        # D-SMTP-1
    ("FROM:   <a@b.example>", MailArgs(AB)),
    ("FROM:<a@b.example>  SIZE=1  ", MailArgs(AB, size=1)),       # D-SMTP-2
    ("FROM:<>", MailArgs(Path(None))),
    ("FROM:<> SIZE=0", MailArgs(Path(None), size=0)),
    ("FROM:<a@b.example> SIZE=99999999999999999999", MailArgs(AB, size=10**20 - 1)),
    ("FROM:<a@b.example> size=10 body=8bitmime", MailArgs(AB, size=10, body="8BITMIME")),
    ("FROM:<a@b.example> BODY=7BIT", MailArgs(AB, body="7BIT")),
    ("FROM:<a@b.example> SMTPUTF8", MailArgs(AB, smtputf8=True)),
    ("FROM:<a@b.example> RET=hdrs ENVID=QQ314159", MailArgs(AB, ret="HDRS", envid="QQ314159")),
    ("FROM:<a@b.example> RET=FULL ENVID=a+2Bb+3Dc", MailArgs(AB, ret="FULL", envid="a+b=c")),
    ("FROM:<a@b.example> AUTH=<>", MailArgs(AB, auth="<>")),
    ("FROM:<a@b.example> AUTH=e+2Bf@x.example", MailArgs(AB, auth="e+f@x.example")),
    ('FROM:<"a> b"@b.example> SIZE=5', MailArgs(Path(Mailbox("a> b", "b.example")), size=5)),
    ('FROM:<"a\\"> b"@b.example>', MailArgs(Path(Mailbox('a"> b', "b.example")))),
    ("FROM:<@r.example:a@b.example>", MailArgs(AB)),
    ("FROM:<\u00fc@b.example> SMTPUTF8", MailArgs(Path(Mailbox("\u00fc", "b.example")),
                                                  smtputf8=True)),
])
def test_mail(argument: str, expected: MailArgs) -> None:
    assert mail(argument) == expected


@pytest.mark.parametrize("argument, reply", [
    ("", R.SYNTAX), ("<a@b.example>", R.SYNTAX), ("FROM<a@b.example>", R.SYNTAX),
    ("FROM :<a@b.example>", R.SYNTAX), ("TO:<a@b.example>", R.SYNTAX),
    ("FROM:", R.BAD_SENDER), ("FROM:a@b.example", R.BAD_SENDER), ("FROM:<a@b.example", R.BAD_SENDER),
    ("FROM:<a@b@c.example>", R.BAD_SENDER), ('FROM:<"a>@b.example>', R.BAD_SENDER),
    ("FROM:<a@b.example>SIZE=1", R.SYNTAX), ("FROM:<a@b.example>>", R.SYNTAX),
    ("FROM:<a@b.example> =1", R.SYNTAX), ("FROM:<a@b.example> -X", R.SYNTAX),
    ("FROM:<a@b.example> S\u00cfZE=1", R.SYNTAX), ("FROM:<a@b.example>\tSIZE=1", R.SYNTAX),
    ("FROM:<\u00fc@b.example>", R.SMTPUTF8_REQUIRED),
])
def test_mail_errors(argument: str, reply) -> None:
    assert refused(mail, argument).reply == reply


@pytest.mark.parametrize("argument, name", [
    ("FROM:<a@b.example> FOO=1", "FOO"),
    ("FROM:<a@b.example> X-Long-Name", "X-Long-Name"),
    ("FROM:<a@b.example> NOTIFY=NEVER", "NOTIFY"),                # a RCPT parameter
    ("FROM:<a@b.example> BINARYMIME", "BINARYMIME"),
])
def test_unknown_parameters(argument: str, name: str) -> None:
    assert refused(mail, argument).reply == R.PARAM_UNKNOWN.format(name=name)


@pytest.mark.parametrize("ext, argument, name", [
    (Extensions(size=False), "FROM:<a@b.example> SIZE=1", "SIZE"),
    (Extensions(eightbitmime=False), "FROM:<a@b.example> BODY=8BITMIME", "BODY"),
    (Extensions(smtputf8=False), "FROM:<a@b.example> SMTPUTF8", "SMTPUTF8"),
    (Extensions(dsn=False), "FROM:<a@b.example> RET=FULL", "RET"),
    (Extensions(dsn=False), "FROM:<a@b.example> ENVID=x", "ENVID"),
    (Extensions(), "FROM:<a@b.example> AUTH=<>", "AUTH"),           # AUTH is off by default
])
def test_parameters_of_unadvertised_extensions_are_unknown(ext, argument, name) -> None:
    assert refused(mail, argument, ext).reply == R.PARAM_UNKNOWN.format(name=name)


@pytest.mark.parametrize("argument, name", [
    ("FROM:<a@b.example> SIZE=1 SIZE=1", "SIZE"),
    ("FROM:<a@b.example> SMTPUTF8 smtputf8", "SMTPUTF8"),
    ("FROM:<a@b.example> body=7bit BODY=8BITMIME", "BODY"),
])
def test_duplicate_parameters(argument: str, name: str) -> None:
    assert refused(mail, argument).reply == R.PARAM_DUPLICATE.format(name=name)


@pytest.mark.parametrize("argument, name", [
    ("FROM:<a@b.example> SIZE", "SIZE"), ("FROM:<a@b.example> SIZE=", "SIZE"),
    ("FROM:<a@b.example> SIZE=-1", "SIZE"), ("FROM:<a@b.example> SIZE=1k", "SIZE"),
    ("FROM:<a@b.example> SIZE=" + "9" * 21, "SIZE"), ("FROM:<a@b.example> SIZE=\u0661", "SIZE"),
    ("FROM:<a@b.example> SIZE=1=2", "SIZE"),
    ("FROM:<a@b.example> BODY", "BODY"), ("FROM:<a@b.example> BODY=BINARYMIME", "BODY"),
    ("FROM:<a@b.example> BODY=8BIT", "BODY"),
    ("FROM:<a@b.example> SMTPUTF8=yes", "SMTPUTF8"), ("FROM:<a@b.example> SMTPUTF8=", "SMTPUTF8"),
    ("FROM:<a@b.example> RET=ALL", "RET"), ("FROM:<a@b.example> RET", "RET"),
    ("FROM:<a@b.example> ENVID", "ENVID"), ("FROM:<a@b.example> ENVID=" + "x" * 101, "ENVID"),
    ("FROM:<a@b.example> ENVID=a+0Ab", "ENVID"), ("FROM:<a@b.example> ENVID=a+c3+a9", "ENVID"),
    ("FROM:<a@b.example> ENVID=+C3+A9", "ENVID"),                  # UTF-8, not US-ASCII
    ("FROM:<a@b.example> AUTH", "AUTH"), ("FROM:<a@b.example> AUTH=a+0D+0Ab", "AUTH"),
    ("FROM:<a@b.example> AUTH=a+00", "AUTH"), ("FROM:<a@b.example> AUTH=a+4", "AUTH"),
    ("FROM:<a@b.example> AUTH=a\x01", "AUTH"), ("FROM:<a@b.example> AUTH=\u00fc", "AUTH"),
    ("FROM:<a@b.example> AUTH=+FF", "AUTH"),
])
def test_invalid_values(argument: str, name: str) -> None:
    assert refused(mail, argument).reply == R.PARAM_INVALID.format(name=name)


def test_envid_limit() -> None:
    assert mail("FROM:<a@b.example> ENVID=" + "x" * 100).envid == "x" * 100


def test_smtputf8_parameter_decides_about_a_utf8_reverse_path() -> None:
    assert refused(mail, "FROM:<\u00fc@b.example> SIZE=1").reply is R.SMTPUTF8_REQUIRED
    assert mail("FROM:<\u00fc@b.example> SIZE=1 SMTPUTF8").smtputf8


def test_parameters_are_checked_before_the_path() -> None:
    assert refused(mail, "FROM:<a@b@c> FOO").reply == R.PARAM_UNKNOWN.format(name="FOO")


def test_errors_are_typed() -> None:
    assert isinstance(refused(mail, "FROM:<a@b.example> FOO"), ParamError)
    assert isinstance(refused(mail, "FROM:<a@@b.example>"), AddressError)


# --- RCPT ------------------------------------------------------------------------------

XY = Path(Mailbox("x", "y.example"))


@pytest.mark.parametrize("argument, expected", [
    ("TO:<x@y.example>", RcptArgs(XY)),
    ("to: <x@y.example>", RcptArgs(XY)),
    ("TO:<Postmaster>", RcptArgs(Path(Mailbox("Postmaster", "")))),
    ("TO:<x@y.example> NOTIFY=NEVER", RcptArgs(XY, notify=("NEVER",))),
    ("TO:<x@y.example> notify=never", RcptArgs(XY, notify=("NEVER",))),
    ("TO:<x@y.example> NOTIFY=delay,Success", RcptArgs(XY, notify=("SUCCESS", "DELAY"))),
    ("TO:<x@y.example> NOTIFY=FAILURE,DELAY,SUCCESS",
     RcptArgs(XY, notify=("SUCCESS", "FAILURE", "DELAY"))),
    ("TO:<x@y.example> ORCPT=rfc822;x+40y.example", RcptArgs(XY, orcpt=("RFC822", "x@y.example"))),
    ("TO:<x@y.example> ORCPT=rfc822;x@y.example", RcptArgs(XY, orcpt=("RFC822", "x@y.example"))),
    ("TO:<x@y.example> ORCPT=utf-8;x\\x{FC}@y.example",
     RcptArgs(XY, orcpt=("UTF-8", "x\\x{FC}@y.example"))),
    ("TO:<x@y.example> NOTIFY=SUCCESS ORCPT=RFC822;x@y.example",
     RcptArgs(XY, notify=("SUCCESS",), orcpt=("RFC822", "x@y.example"))),
])
def test_rcpt(argument: str, expected: RcptArgs) -> None:
    assert rcpt(argument) == expected


@pytest.mark.parametrize("argument, reply", [
    ("", R.SYNTAX), ("FROM:<x@y.example>", R.SYNTAX), ("TO <x@y.example>", R.SYNTAX),
    ("TO:", R.BAD_RECIPIENT), ("TO:<>", R.BAD_RECIPIENT), ("TO:x@y.example", R.BAD_RECIPIENT),
    ("TO:<x@y@z.example>", R.BAD_RECIPIENT), ("TO:<@a.example:Postmaster>", R.BAD_RECIPIENT),
    ("TO:<x@y.example> SIZE=1", R.PARAM_UNKNOWN.format(name="SIZE")),
    ("TO:<x@y.example> NOTIFY=NEVER notify=never", R.PARAM_DUPLICATE.format(name="NOTIFY")),
    ("TO:<\u00fc@y.example>", R.SMTPUTF8_REQUIRED),
])
def test_rcpt_errors(argument: str, reply) -> None:
    assert refused(rcpt, argument).reply == reply


@pytest.mark.parametrize("value", [
    "", "NEVER,SUCCESS", "SUCCESS,NEVER", "SUCCESS,SUCCESS", "SUCCESS,", ",SUCCESS", "ALWAYS",
    "SUCCESS;FAILURE",
])
def test_invalid_notify(value: str) -> None:
    argument = f"TO:<x@y.example> NOTIFY={value}" if value else "TO:<x@y.example> NOTIFY"
    assert refused(rcpt, argument).reply == R.PARAM_INVALID.format(name="NOTIFY")


@pytest.mark.parametrize("value", [
    "rfc822", "rfc822;", ";x@y", "rfc 822;x", "rfc822;x+0Ay", "rfc822;x+0D+0AX-Evil:+201",
    "rfc822;+00", "rfc822;x+0ay", "rf(c;x", "rfc822;" + "x" * 494, "rfc822;\u00fc@y",
])
def test_invalid_orcpt(value: str) -> None:
    assert refused(rcpt, f"TO:<x@y.example> ORCPT={value}").reply == \
        R.PARAM_INVALID.format(name="ORCPT")


def test_rcpt_uses_the_transactions_smtputf8() -> None:
    assert rcpt("TO:<\u00fc@y.example>", smtputf8=True).path.mailbox == Mailbox("\u00fc", "y.example")


def test_dsn_parameters_need_dsn() -> None:
    for argument in ("TO:<x@y.example> NOTIFY=NEVER", "TO:<x@y.example> ORCPT=rfc822;x@y"):
        assert refused(rcpt, argument, Extensions(dsn=False)).reply.code == 555


# --- xtext (RFC 3461 §4) ---------------------------------------------------------------

@pytest.mark.parametrize("text, decoded", [
    ("", ""), ("abc", "abc"), ("a+2Bb", "a+b"), ("+3D", "="), ("+20", " "),
    ("+C3+BC", "\u00fc"), ("x+41", "xA"),
])
def test_xtext_decode(text: str, decoded: str) -> None:
    assert xtext_decode(text) == decoded


@pytest.mark.parametrize("text", [
    "+", "+4", "+4g", "+2b", "a=b", "a b", "a+0Db", "a+0Ab", "+00", "+1B", "+7F", "+C2+85",
    "+FF", "+C3", "\u00fc", "a\tb",
])
def test_xtext_decode_refuses(text: str) -> None:
    with pytest.raises(ParamError):
        xtext_decode(text)


def test_xtext_encode() -> None:
    assert xtext_encode("a+b=c d\u00fc") == "a+2Bb+3Dc+20d+C3+BC"


@settings(deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc"))))
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert xtext_decode(encoded) == text


@settings(deadline=None)
@given(st.text(max_size=60))
def test_xtext_decode_never_lets_controls_through(text: str) -> None:
    try:
        decoded = xtext_decode(text)
    except ParamError:
        return
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in decoded)


PIECES = st.sampled_from([
    "FROM:", "TO:", "<", ">", "a@b.example", "<>", '"', "\\", " ", "SIZE", "=", "1", "BODY",
    "8BITMIME", "SMTPUTF8", "RET", "FULL", "ENVID", "AUTH", "NOTIFY", "NEVER", ",", "ORCPT",
    "rfc822;", "+0A", "+41", "\u00fc", "\x00", "\r", "@", ":", "Postmaster",
])


@settings(deadline=None, max_examples=400)
@given(st.lists(PIECES, max_size=14).map("".join), st.booleans())
def test_any_argument_is_parsed_or_answered(argument: str, smtputf8: bool) -> None:
    for parse in (lambda a: parse_mail(a, ALL), lambda a: parse_rcpt(a, ALL, smtputf8=smtputf8)):
        try:
            args = parse(argument)
        except SMTPError as exc:
            assert exc.reply.code in (501, 553, 555)
            continue
        for value in (getattr(args, "envid", None), getattr(args, "auth", None),
                      (getattr(args, "orcpt", None) or ("", ""))[1]):
            assert value is None or not any(c in value for c in "\r\n\x00")
