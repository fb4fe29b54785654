"""Reverse and forward paths (meta1/smtp/address.py; RFC 5321 §4.1.2, RFC 6531)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meta1.smtp import (AddressError, Mailbox, Path, R, SMTPError, parse_forward_path,
                        parse_reverse_path)


def forward(text: str, smtputf8: bool = False) -> Path:
    return parse_forward_path(text, smtputf8=smtputf8)


def reverse(text: str, smtputf8: bool = False) -> Path:
    return parse_reverse_path(text, smtputf8=smtputf8)


@pytest.mark.parametrize("text, local, domain, canonical", [
    ("<a@b.example>", "a", "b.example", "<a@b.example>"),
    ("<First.Last@Example.ORG>", "First.Last", "Example.ORG", "<First.Last@Example.ORG>"),
    ("<!#$%&'*+-/=?^_`{|}~@x.y>", "!#$%&'*+-/=?^_`{|}~", "x.y", "<!#$%&'*+-/=?^_`{|}~@x.y>"),
    ('<"a b"@x.y>', "a b", "x.y", '<"a b"@x.y>'),
    ('<"abc"@x.y>', "abc", "x.y", "<abc@x.y>"),                  # quotes only when needed
    ('<"a\\"b\\\\c"@x.y>', 'a"b\\c', "x.y", '<"a\\"b\\\\c"@x.y>'),
    ('<"\\a"@x.y>', "a", "x.y", "<a@x.y>"),                      # needless quoted-pair
    ('<"a..b"@x.y>', "a..b", "x.y", '<"a..b"@x.y>'),
    ('<".a"@x.y>', ".a", "x.y", '<".a"@x.y>'),
    ("<a@[192.0.2.1]>", "a", "[192.0.2.1]", "<a@[192.0.2.1]>"),
    ("<a@[IPv6:2001:db8::1]>", "a", "[IPv6:2001:db8::1]", "<a@[IPv6:2001:db8::1]>"),
    ("<a@[ipv6:::ffff:192.0.2.1]>", "a", "[ipv6:::ffff:192.0.2.1]", "<a@[ipv6:::ffff:192.0.2.1]>"),
    ("<a@x-y.z9>", "a", "x-y.z9", "<a@x-y.z9>"),
    ("<a@1x.example>", "a", "1x.example", "<a@1x.example>"),
    ("<a@localhost>", "a", "localhost", "<a@localhost>"),
    # Source routes are accepted and dropped (RFC 5321 §3.3, §4.1.1.3; D-SMTP-3).
    ("<@relay.example:u@d.example>", "u", "d.example", "<u@d.example>"),
    ("<@a.example,@b.example:u@d.example>", "u", "d.example", "<u@d.example>"),
    # Open-relay spellings keep an opaque local part (reliability §3.1, S8).
    ("<relaytest%other.example@[192.0.2.1]>", "relaytest%other.example", "[192.0.2.1]",
     "<relaytest%other.example@[192.0.2.1]>"),
    ("<other.example!relaytest@[192.0.2.1]>", "other.example!relaytest", "[192.0.2.1]",
     "<other.example!relaytest@[192.0.2.1]>"),
    ('<"relaytest@other.example"@ours.example>', "relaytest@other.example", "ours.example",
     '<"relaytest@other.example"@ours.example>'),
    ('<"relaytest%other"@ours.example>', "relaytest%other", "ours.example",
     "<relaytest%other@ours.example>"),
    ('<"victim@evil.example"@ours.example>', "victim@evil.example", "ours.example",
     '<"victim@evil.example"@ours.example>'),
    # Command-injection spellings are opaque strings at worst (reliability T20).
    ('<"`touch /tmp/pwn`"@x.y>', "`touch /tmp/pwn`", "x.y", '<"`touch /tmp/pwn`"@x.y>'),
    ('<"|/bin/sh"@local.example>', "|/bin/sh", "local.example", "<|/bin/sh@local.example>"),
    ("<${run{x}}@local.example>", "${run{x}}", "local.example", "<${run{x}}@local.example>"),
])
def test_valid_paths(text: str, local: str, domain: str, canonical: str) -> None:
    for parse in (forward, reverse):
        path = parse(text)
        assert path.mailbox == Mailbox(local, domain)
        assert str(path) == canonical
        assert path.address == canonical[1:-1]
        assert parse(canonical) == path


@pytest.mark.parametrize("text", [
    "", "<", ">", "a@b.example", "<a@b.example", "a@b.example>", "<<a@b.example>>",
    "< a@b.example>", "<a@b.example >", "<a @b.example>", "<a@ b.example>",
    "<a>", "<@b.example>", "<a@>", "<a@@b.example>",
    "<a@b@c.example>", "<victim@evil.example@ours.example>",      # a@b@c: syntax error
    "<other!relaytest>", '<"relaytest@other">',                   # no domain at all
    "<a..b@x.y>", "<.a@x.y>", "<a.@x.y>", '<""@x.y>', '<"a"b@x.y>', '<"a@x.y>',
    '<"a\\\x7f"@x.y>', '<"a\\\u00e9"@x.y>', '<a"b@x.y>', "<a(b)@x.y>", "<a,b@x.y>",
    "<a[b]@x.y>", "<a\\b@x.y>", "<a:b@x.y>", "<;touch /tmp/pwn;>", "<$(touch /tmp/pwn)@x.y>",
    "<a@b.example.>",                                             # trailing dot (D-SMTP-4)
    "<a@.b.example>", "<a@b..example>", "<a@-b.example>", "<a@b-.example>", "<a@b_c.example>",
    "<a@b.example:25>", "<a@b!c>", "<a@127.0.0.1>", "<a@x.123>",
    "<a@[192.0.2.1>", "<a@[192.0.2.256]>", "<a@[192.0.2]>", "<a@[010.0.2.1]>",
    "<a@[1.2.3.4.5]>", "<a@[IPv6:2001:db8::g]>", "<a@[IPv6:fe80::1%eth0]>", "<a@[IPv6:]>",
    "<a@[IPv6:1.2.3.4]>", "<a@[]>", "<a@[x-tag:content]>",        # general literal (D-SMTP-5)
    "<a@[192.0.2.1]x>", "<a@[\u0661.2.3.4]>",
    "<@:a@b.example>", "<@a.example:>", "<@a.example,b.example:u@d.example>",
    "<@a.example u@d.example>", "<@[192.0.2.1]:u@d.example>", "<@a.example:Postmaster>",
    "<a@b.example\x00>", "<a\r\n@b.example>", "<a\t@b.example>", "<a\x7f@b.example>",
    "<a\x85@b.example>", "<a\udcff@b.example>",
])
def test_invalid_paths_are_syntax_errors(text: str) -> None:
    with pytest.raises(AddressError) as caught:
        forward(text, smtputf8=True)
    assert caught.value.reply is R.BAD_RECIPIENT
    with pytest.raises(AddressError) as caught:
        reverse(text, smtputf8=True)
    assert caught.value.reply is R.BAD_SENDER


def test_null_path_only_as_reverse_path() -> None:
    assert reverse("<>") == Path(None)
    assert reverse("<>").is_null and str(reverse("<>")) == "<>" and reverse("<>").address == ""
    with pytest.raises(AddressError) as caught:
        forward("<>")
    assert caught.value.reply is R.BAD_RECIPIENT


@pytest.mark.parametrize("text", ["<Postmaster>", "<postmaster>", "<POSTMASTER>", "<PostMaster>"])
def test_postmaster_without_domain_only_as_forward_path(text: str) -> None:
    path = forward(text)
    assert path.mailbox == Mailbox("Postmaster", "")
    assert str(path) == "<Postmaster>"
    with pytest.raises(AddressError):
        reverse(text)


def test_postmaster_with_domain_is_an_ordinary_mailbox() -> None:
    assert forward("<postmaster@ours.example>").mailbox == Mailbox("postmaster", "ours.example")


@pytest.mark.parametrize("text, local, domain", [
    ("<\u00fc@x.example>", "\u00fc", "x.example"),
    ("<j\u00f6rg@b\u00fccher.example>", "j\u00f6rg", "b\u00fccher.example"),
    ('<"\u00fc \u00e4"@x.example>', "\u00fc \u00e4", "x.example"),
    ("<\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a>", "\u7528\u6237", "\u4f8b\u5b50.\u5e7f\u544a"),
    ("<a@xn--bcher-kva.example>", "a", "xn--bcher-kva.example"),
])
def test_utf8_addresses_need_smtputf8(text: str, local: str, domain: str) -> None:
    assert forward(text, smtputf8=True).mailbox == Mailbox(local, domain)
    assert reverse(text, smtputf8=True).mailbox == Mailbox(local, domain)
    if not text.isascii():
        for parse, smtputf8_reply in ((forward, R.SMTPUTF8_REQUIRED), (reverse, R.SMTPUTF8_REQUIRED)):
            with pytest.raises(AddressError) as caught:
                parse(text, smtputf8=False)
            assert caught.value.reply is smtputf8_reply


@pytest.mark.parametrize("text", [
    "<a\u00a0b@x.example>",            # no-break space is not atext
    "<a\u200bb@x.example>",            # zero-width space (a format character)
    "<a@b\u3002example>",              # an ideographic full stop would split a label later
    "<a@b\uff0eexample>",
    "<a@\u00fc_x.example>",
    "<a@-\u00fc.example>",
    "<a@[\u00fc]>",
    '<"\u00fc\\\u00e4"@x.example>',    # quoted-pairSMTP stays ASCII (RFC 6531)
])
def test_utf8_syntax_errors_stay_syntax_errors(text: str) -> None:
    for smtputf8 in (True, False):
        with pytest.raises(AddressError) as caught:
            forward(text, smtputf8=smtputf8)
        assert caught.value.reply is R.BAD_RECIPIENT


# --- limits (RFC 5321 §4.5.3.1, counted in UTF-8 octets; D-SMTP-7) ---------------------

def label_domain(octets: int) -> str:
    """A valid domain of exactly ``octets`` octets."""
    labels, left = [], octets
    while left > 63:
        take = min(63, left - 2)  # never leave an empty last label
        labels.append("d" * take)
        left -= take + 1
    labels.append("d" * left)
    domain = ".".join(labels)
    assert len(domain) == octets
    return domain


U = "\u00fc"  # two octets in UTF-8


def test_local_part_limit() -> None:
    assert forward(f"<{'a' * 64}@x.y>").mailbox.local_part == "a" * 64
    assert forward(f"<{U * 32}@x.y>", smtputf8=True)          # 64 octets
    for text in (f"<{'a' * 65}@x.y>", f"<{U * 33}@x.y>", f'<"{"a" * 63}"@x.y>'):
        with pytest.raises(AddressError):
            forward(text, smtputf8=True)


def test_domain_and_label_limits() -> None:
    assert forward(f"<a@{'d' * 63}.y>")
    with pytest.raises(AddressError):
        forward(f"<a@{'d' * 64}.y>")
    domain = label_domain(250)
    assert forward(f"<a@{domain}>").mailbox.domain == domain
    with pytest.raises(AddressError):
        forward(f"<a@{label_domain(256)}>")


def test_path_limit_counts_brackets_and_octets() -> None:
    local = "a" * 64
    domain = label_domain(256 - 2 - 65)
    text = f"<{local}@{domain}>"
    assert len(text) == 256 and forward(text)
    assert forward(f"<{U * 32}@{label_domain(189)}>", smtputf8=True)  # 256 octets
    for too_long in (f"<{local}@{label_domain(256 - 2 - 65 + 1)}>",
                     f"<@{label_domain(200)}:{local}@{domain}>",
                     f"<{U * 32}@{label_domain(190)}>"):  # 225 characters, 257 octets
        with pytest.raises(AddressError):
            forward(too_long, smtputf8=True)


def test_idn_label_limit_is_the_a_label_length() -> None:
    assert forward(f"<a@{U * 20}.example>", smtputf8=True)
    with pytest.raises(AddressError):
        forward(f"<a@{U * 20}{'x' * 40}.example>", smtputf8=True)


def test_address_error_is_an_smtp_error_with_a_detail() -> None:
    with pytest.raises(SMTPError) as caught:
        forward("<a@b@c>")
    assert caught.value.detail and str(caught.value)


# --- properties ------------------------------------------------------------------------

ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
atom = st.text(ATEXT, min_size=1, max_size=8)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
quoted_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                       max_size=20)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join).filter(
    lambda d: not d.rsplit(".", 1)[-1].isdigit())
literal = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]"),
)
mailboxes = st.builds(Mailbox, st.one_of(dot_string, quoted_value), st.one_of(domain, literal))


@settings(deadline=None, max_examples=300)
@given(mailboxes)
def test_canonical_text_parses_back_to_the_same_mailbox(mailbox: Mailbox) -> None:
    path = Path(mailbox)
    assert forward(str(path)) == path
    assert reverse(str(path)) == path
    assert str(forward(str(path))) == str(path)


@settings(deadline=None, max_examples=500)
@given(st.text(max_size=80), st.booleans())
def test_any_text_is_a_path_or_an_address_error(text: str, smtputf8: bool) -> None:
    for candidate in (text, f"<{text}>", f"<{text}@x.y>", f"<a@{text}>"):
        for parse in (forward, reverse):
            try:
                path = parse(candidate, smtputf8=smtputf8)
            except AddressError as exc:
                assert exc.reply in (R.BAD_RECIPIENT, R.BAD_SENDER, R.SMTPUTF8_REQUIRED)
                continue
            # Whatever is accepted has no control characters and a stable canonical form.
            canonical = str(path)
            assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in canonical)
            assert parse(canonical, smtputf8=smtputf8) == path
