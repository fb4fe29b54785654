"""DSNs (meta1/qmgr/dsn.py): who gets one, and the RFC 3464 message, checked with the
standard library's own MIME parser (``email`` with ``policy.default``) — an independent
reader, no dkimpy or other third-party package involved."""

from __future__ import annotations

import email
import email.policy
import os
import pathlib
import re
from email.message import EmailMessage
from email.parser import BytesHeaderParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1.qmgr.dsn import (DEFAULT_RETURN_LIMIT, Action, DsnPlan, MessageKind, NoDsn, Original,
                            RecipientReport, build_dsn, notify_allows, plan_dsn)
from meta1.queue.cdb import iter_content, read_content
from meta1.smtp.params import xtext_decode
from test_queue_support import AFTER_2038_US, make_queue, store

DATA = pathlib.Path(__file__).parent / "data" / "dsn"
HOST = "mx.example.com"
NOW = AFTER_2038_US + 5 * 86400 * 10**6
TA = "S00000000000001A200"
CONTENT = (b"Received: from client.example by mx.example.com\r\n"
           b"From: Alice <alice@example.org>\r\n"
           b"To: bob@example.net, carol@example.net\r\n"
           b"Subject: quarterly figures\r\n"
           b"Message-ID: <figures@example.org>\r\n"
           b"\r\n"
           b"Here they are.\r\n"
           b"-- \r\n"
           b"Alice\r\n")
BAD_LINE_END = re.compile(rb"(?<!\r)\n|\r(?!\n)")


def original(**changes) -> Original:
    values = dict(ta_id=TA, sender="alice@example.org", arrival=AFTER_2038_US, envid=None, ret=None)
    values.update(changes)
    return Original(**values)


def failed(address: str = "bob@example.net", **changes) -> RecipientReport:
    values = dict(address=address, action=Action.FAILED, status="5.1.1", remote_mta="mx.example.net",
                  diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected: no such user",
                  last_attempt=NOW - 10**6, log_id=f"{TA}-0000")
    values.update(changes)
    return RecipientReport(**values)


def delayed(address: str = "carol@example.net", **changes) -> RecipientReport:
    values = dict(address=address, action=Action.DELAYED, status="4.4.1", diagnostic_type="X-meta1",
                  diagnostic="connect to mx.example.net[192.0.2.25]:25: Connection refused",
                  last_attempt=NOW - 2 * 10**6, will_retry_until=AFTER_2038_US + 5 * 86400 * 10**6 + 3600 * 10**6)
    values.update(changes)
    return RecipientReport(**values)


def plan(*reports: RecipientReport, **changes) -> DsnPlan:
    result = plan_dsn(original(**changes), reports)
    assert isinstance(result, DsnPlan), result
    return result


def parse(message: bytes) -> EmailMessage:
    assert not BAD_LINE_END.search(message), "every line ends in CRLF"
    assert all(len(line) <= 998 for line in message.split(b"\r\n")), "RFC 5322 line limit"
    assert message.endswith(b"\r\n")
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert not parsed.defects
    return parsed


def status_blocks(part: EmailMessage) -> list[dict[str, str]]:
    """The field blocks of a (global-)delivery-status part, parsed by the stdlib. (The
    stdlib knows message/delivery-status; a message/global-delivery-status part it parses
    as an embedded message, so its blocks are taken from the part's own octets.)"""
    if part.get_content_type() == "message/delivery-status":
        return [dict(block.items()) for block in part.get_payload()]
    raw = part.as_bytes(policy=email.policy.SMTPUTF8.clone(max_line_length=None)).split(b"\r\n\r\n", 1)[1]
    return [dict(BytesHeaderParser(policy=email.policy.default).parsebytes(block + b"\r\n").items())
            for block in raw.strip(b"\r\n").split(b"\r\n\r\n")]


# -- who gets a DSN --------------------------------------------------------------------------------

@pytest.mark.parametrize("notify, action, expected", [
    (None, Action.FAILED, True), (None, Action.DELAYED, True), (None, Action.DELIVERED, False),
    (("NEVER",), Action.FAILED, False), (("NEVER",), Action.DELAYED, False),
    (("SUCCESS",), Action.DELIVERED, True), (("SUCCESS",), Action.RELAYED, True),
    (("SUCCESS",), Action.EXPANDED, True), (("SUCCESS",), Action.FAILED, False),
    (("FAILURE",), Action.DELAYED, False), (("DELAY",), Action.DELAYED, True),
    (("SUCCESS", "FAILURE", "DELAY"), Action.FAILED, True),
])
def test_notify_decides_per_action(notify, action, expected: bool) -> None:
    assert notify_allows(notify, action) is expected


def test_only_the_recipients_notify_allows_are_reported() -> None:
    never = failed("never@example.net", notify=("NEVER",))
    success_only = failed("quiet@example.net", notify=("SUCCESS",))
    default = failed("loud@example.net")
    relayed = RecipientReport("relay@example.net", Action.RELAYED, "2.0.0", notify=("SUCCESS",))
    result = plan_dsn(original(), [never, success_only, default, relayed])
    assert isinstance(result, DsnPlan)
    assert result.recipient == "alice@example.org" and result.kind is MessageKind.DSN
    assert result.reports == (default, relayed)
    assert result.unreported == (never, success_only)


def test_no_dsn_when_nothing_is_wanted_or_the_sender_is_null() -> None:
    assert isinstance(plan_dsn(original(), [failed(notify=("NEVER",))]), NoDsn)
    assert isinstance(plan_dsn(original(), [RecipientReport("x@example.net", Action.DELIVERED, "2.0.0")]), NoDsn)
    null = plan_dsn(original(sender=""), [failed()])
    assert isinstance(null, NoDsn) and "<>" in null.reason


def test_a_failed_dsn_becomes_a_double_bounce_to_postmaster_and_no_further() -> None:
    dsn_about = original(sender="", kind=MessageKind.DSN)
    reports = [failed(notify=("NEVER",)), delayed()]  # NOTIFY ignored; delays not reported
    double = plan_dsn(dsn_about, reports)
    assert isinstance(double, DsnPlan)
    assert (double.recipient, double.kind, double.reports) == ("postmaster", MessageKind.DOUBLE_BOUNCE, (reports[0],))
    assert plan_dsn(dsn_about, reports, postmaster="hostmaster@example.com").recipient == "hostmaster@example.com"
    triple = plan_dsn(original(sender="", kind=MessageKind.DOUBLE_BOUNCE), reports)
    assert isinstance(triple, NoDsn) and "never bounced again" in triple.reason
    assert isinstance(plan_dsn(dsn_about, [delayed()]), NoDsn)


def test_the_double_bounce_message_goes_to_postmaster_at_the_host() -> None:
    dsn = build_dsn(plan_dsn(original(sender="", kind=MessageKind.DSN), [failed()]), CONTENT, hostname=HOST, now=NOW)
    parsed = parse(dsn.message)
    assert dsn.recipient == "postmaster" and dsn.sender == "" and dsn.kind is MessageKind.DOUBLE_BOUNCE
    assert b"\r\nTo: <postmaster@mx.example.com>\r\n" in dsn.message
    assert parsed["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert "A delivery status notification that this mail system generated" in next(parsed.iter_parts()).get_content()


@pytest.mark.parametrize("action, status", [(Action.FAILED, "2.0.0"), (Action.DELAYED, "5.1.1"),
                                            (Action.DELAYED, "4.x.1"), (Action.DELIVERED, "4.0.0")])
def test_a_status_that_does_not_fit_its_action_is_refused(action: Action, status: str) -> None:
    with pytest.raises(ValueError):
        RecipientReport("a@example.net", action, status)


def test_an_expired_recipient_may_fail_with_a_temporary_status() -> None:
    assert RecipientReport("a@example.net", Action.FAILED, "4.4.7").status == "4.4.7"


# -- the message -----------------------------------------------------------------------------------

def test_every_field_of_a_failure_dsn() -> None:
    reports = (failed(orcpt_type="RFC822", orcpt="Bob@Example.NET"), delayed())
    dsn = build_dsn(plan(*reports, envid=xtext_decode("QQ+2B314")), CONTENT, hostname=HOST, now=NOW)
    assert (dsn.sender, dsn.recipient, dsn.returned, dsn.body, dsn.smtputf8) == (
        "", "alice@example.org", "full", None, False)
    parsed = parse(dsn.message)
    assert parsed["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    assert b"\r\nTo: <alice@example.org>\r\n" in dsn.message
    assert parsed["Subject"] == "Undelivered Mail Returned to Sender"
    assert parsed["Date"] == "Mon, 21 Mar 2242 12:56:32 +0000"
    assert parsed["Message-ID"] == dsn.message_id == f"<{TA}.{NOW}.dsn@{HOST}>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    text, status, returned = parsed.iter_parts()
    assert text.get_content_type() == "text/plain" and text.get_content_charset() == "us-ascii"
    body = text.get_content()
    assert "This is the mail system at host mx.example.com." in body
    assert "<bob@example.net>: failed (5.1.1)" in body
    assert "mx.example.net said: 550 5.1.1 <bob@example.net>: Recipient address" in body
    assert "<carol@example.net>: delayed (4.4.1)" in body
    assert "Delivery will be tried until Mon, 21 Mar 2242 13:56:32 +0000." in body
    assert status.get_content_type() == "message/delivery-status"
    per_message, bob, carol = status_blocks(status)
    assert per_message == {"Original-Envelope-Id": "QQ+314", "Reporting-MTA": "dns; mx.example.com",
                           "Arrival-Date": "Wed, 16 Mar 2242 12:56:32 +0000"}
    assert bob == {"Original-Recipient": "rfc822; Bob@Example.NET", "Final-Recipient": "rfc822; bob@example.net",
                   "Action": "failed", "Status": "5.1.1", "Remote-MTA": "dns; mx.example.net",
                   "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: no such user",
                   "Last-Attempt-Date": "Mon, 21 Mar 2242 12:56:31 +0000", "Final-Log-ID": f"{TA}-0000"}
    assert carol == {"Final-Recipient": "rfc822; carol@example.net", "Action": "delayed", "Status": "4.4.1",
                     "Diagnostic-Code": "X-meta1; connect to mx.example.net[192.0.2.25]:25: Connection refused",
                     "Last-Attempt-Date": "Mon, 21 Mar 2242 12:56:30 +0000",
                     "Will-Retry-Until": "Mon, 21 Mar 2242 13:56:32 +0000"}
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0].as_bytes(policy=email.policy.SMTP) == CONTENT
    assert dsn.message.count(CONTENT) == 1  # returned byte for byte


def test_the_golden_dsn_byte_for_byte() -> None:
    """One DSN fixed byte for byte: any change to the format shows up here. Regenerate with
    META1_UPDATE_GOLDEN=1 after checking the difference by eye."""
    reports = (failed(orcpt_type="RFC822", orcpt="bob@example.net"), delayed())
    dsn = build_dsn(plan(*reports, envid="QQ314"), CONTENT, hostname=HOST, now=NOW)
    golden = DATA / "failed-and-delayed.eml"
    if os.environ.get("META1_UPDATE_GOLDEN"):
        golden.write_bytes(dsn.message)
    assert dsn.message == golden.read_bytes()


def test_the_spec_shows_the_golden_report() -> None:
    spec = (pathlib.Path(__file__).parent.parent / "spec" / "dsn.md").read_text()
    example = spec.split("delivery-status part:\n\n```\n", 1)[1].split("```", 1)[0]
    assert example.replace("\n", "\r\n").encode() in (DATA / "failed-and-delayed.eml").read_bytes()


def test_a_delay_warning_returns_only_the_header() -> None:
    dsn = build_dsn(plan(delayed()), CONTENT, hostname=HOST, now=NOW)
    parsed = parse(dsn.message)
    assert parsed["Subject"] == "Delayed Mail (still being retried)"
    assert dsn.returned == "headers"
    returned = list(parsed.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == CONTENT.split(b"\r\n\r\n")[0] + b"\r\n"


def test_a_success_report() -> None:
    report = RecipientReport("bob@example.net", Action.RELAYED, "2.0.0", notify=("SUCCESS",),
                             remote_mta="old.example.net", diagnostic="250 2.0.0 Ok: queued as 123")
    parsed = parse(build_dsn(plan(report), CONTENT, hostname=HOST, now=NOW).message)
    assert parsed["Subject"] == "Successful Mail Delivery Report"
    assert status_blocks(list(parsed.iter_parts())[1])[1]["Action"] == "relayed"


def test_ret_hdrs_returns_only_the_header() -> None:
    dsn = build_dsn(plan(failed(), ret="HDRS"), CONTENT, hostname=HOST, now=NOW)
    assert dsn.returned == "headers"
    returned = list(parse(dsn.message).iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Here they are." not in dsn.message


def test_a_message_over_the_limit_returns_only_its_header() -> None:
    big = CONTENT + b"x" * 998 + b"\r\n"
    dsn = build_dsn(plan(failed(), ret="FULL"), big, hostname=HOST, now=NOW, return_limit=len(big) - 1)
    assert dsn.returned == "headers"
    parts = list(parse(dsn.message).iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert f"larger than {len(big) - 1} octets" in parts[0].get_content()
    exact = build_dsn(plan(failed(), ret="FULL"), big, hostname=HOST, now=NOW, return_limit=len(big))
    assert exact.returned == "full"


def test_a_header_over_the_limit_is_cut_at_a_field_boundary() -> None:
    folded = b"X-Long: " + b"word " * 30 + b"\r\n\tcontinued\r\n"
    content = b"Subject: one\r\n" + folded + b"X-After: two\r\n\r\nbody\r\n"
    limit = len(b"Subject: one\r\n" + folded) + 5  # inside X-After
    dsn = build_dsn(plan(failed()), content, hostname=HOST, now=NOW, return_limit=limit)
    assert dsn.returned == "headers-cut"
    returned = list(parse(dsn.message).iter_parts())[2].get_payload(decode=True)
    assert returned == b"Subject: one\r\n" + folded
    inside_fold = len(b"Subject: one\r\nX-Long: word") + 3
    cut = build_dsn(plan(failed()), content, hostname=HOST, now=NOW, return_limit=inside_fold)
    assert list(parse(cut.message).iter_parts())[2].get_payload(decode=True) == b"Subject: one\r\n"


def test_content_without_a_body_is_all_header() -> None:
    dsn = build_dsn(plan(failed(), ret="HDRS"), b"Subject: x\r\nX-A: y", hostname=HOST, now=NOW)
    assert list(parse(dsn.message).iter_parts())[2].get_payload(decode=True) == b"Subject: x\r\nX-A: y\r\n"
    empty_header = build_dsn(plan(failed(), ret="HDRS"), b"\r\nbody only\r\n", hostname=HOST, now=NOW)
    assert list(parse(empty_header.message).iter_parts())[2].get_payload(decode=True) == b""


def test_chunked_content_is_read_only_as_far_as_needed_and_closed() -> None:
    taken: list[int] = []
    closed: list[bool] = []

    def chunks():
        try:
            yield CONTENT
            for n in range(10_000):
                taken.append(n)
                yield b"y" * 1000 + b"\r\n"
        finally:
            closed.append(True)

    dsn = build_dsn(plan(failed()), chunks(), hostname=HOST, now=NOW, return_limit=50_000)
    assert dsn.returned == "headers" and closed == [True]
    assert len(taken) <= 50  # about return_limit, not the 10 MB on offer
    hdrs = build_dsn(plan(failed(), ret="HDRS"), chunks(), hostname=HOST, now=NOW)
    assert hdrs.returned == "headers" and len(taken) <= 51


def test_content_from_a_queued_content_file(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    transaction = store(layout, 5, content=CONTENT)
    path = layout.root / transaction.content
    result = plan_dsn(Original.of(transaction), [failed()])
    assert isinstance(result, DsnPlan) and result.original.ta_id == transaction.ta_id
    whole = build_dsn(result, read_content(path), hostname=HOST, now=NOW)
    streamed = build_dsn(result, iter_content(path, chunk=7), hostname=HOST, now=NOW)
    assert whole.message == streamed.message
    assert whole.message.count(CONTENT) == 1


def test_eight_bit_content_needs_8bitmime() -> None:
    content = b"Subject: caf\xc3\xa9\r\n\r\nna\xefve\r\n"
    dsn = build_dsn(plan(failed()), content, hostname=HOST, now=NOW)
    assert (dsn.body, dsn.smtputf8) == ("8BITMIME", False)
    parsed = parse(dsn.message)
    assert parsed["Content-Transfer-Encoding"] == "8bit"
    text, status, returned = parsed.iter_parts()
    assert returned["Content-Transfer-Encoding"] == "8bit" and text["Content-Transfer-Encoding"] == "7bit"
    assert dsn.message.count(content) == 1


def test_an_smtputf8_transaction_gets_a_global_dsn() -> None:
    content = "From: jöran@exämple.org\r\nSubject: grüße\r\n\r\nhej\r\n".encode()
    report = failed("δοκιμή@παράδειγμα.δοκιμή", diagnostic="550 5.1.1 unknown", orcpt_type="UTF-8",
                    orcpt="δοκιμή@παράδειγμα.δοκιμή")
    dsn = build_dsn(plan(report, sender="jöran@exämple.org", smtputf8=True), content, hostname=HOST, now=NOW)
    assert (dsn.smtputf8, dsn.body, dsn.recipient) == (True, "8BITMIME", "jöran@exämple.org")
    parsed = parse(dsn.message)
    assert "\r\nTo: <jöran@exämple.org>\r\n".encode() in dsn.message
    assert parsed.get_param("report-type") == "global-delivery-status"
    text, status, returned = parsed.iter_parts()
    assert text.get_content_charset() == "utf-8" and "<δοκιμή@παράδειγμα.δοκιμή>: failed" in text.get_content()
    assert status.get_content_type() == "message/global-delivery-status"
    assert status["Content-Transfer-Encoding"] == "8bit"
    recipient_block = status_blocks(status)[1]
    assert recipient_block["Final-Recipient"] == "utf-8; δοκιμή@παράδειγμα.δοκιμή"
    assert recipient_block["Original-Recipient"] == "utf-8; δοκιμή@παράδειγμα.δοκιμή"
    assert returned.get_content_type() == "message/global"
    assert dsn.message.count(content) == 1


def test_an_ascii_smtputf8_transaction_is_still_global_but_ret_hdrs_uses_global_headers() -> None:
    dsn = build_dsn(plan(failed(), smtputf8=True, ret="HDRS"), CONTENT, hostname=HOST, now=NOW)
    parts = list(parse(dsn.message).iter_parts())
    assert parts[2].get_content_type() == "message/global-headers" and dsn.smtputf8


def test_outside_text_cannot_forge_fields_or_lines() -> None:
    evil = failed(diagnostic="550 no\r\nBcc: victim@example.net\r\n\r\n--x\x00\x1b[2J " + "A" * 3000,
                  remote_mta="mx\r\nX-Injected: 1", orcpt_type="rfc822", orcpt="a\r\nb@example.net",
                  log_id="id\nX-Log: 1")
    dsn = build_dsn(plan(evil, envid="e\r\nX-Env: 1"), CONTENT, hostname=HOST, now=NOW)
    parsed = parse(dsn.message)
    assert parsed["Bcc"] is None and parsed["X-Injected"] is None
    block = status_blocks(list(parsed.iter_parts())[1])[1]
    assert set(block) == {"Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-MTA",
                          "Diagnostic-Code", "Last-Attempt-Date", "Final-Log-ID"}
    assert block["Remote-MTA"] == "dns; mx??X-Injected: 1"
    assert block["Diagnostic-Code"].startswith("smtp; 550 no??Bcc: victim@example.net????--x??[2J AAAA")
    assert block["Diagnostic-Code"].endswith("A...")  # bounded
    assert b"\x00" not in dsn.message and b"\x1b" not in dsn.message


def test_a_boundary_in_the_content_is_avoided() -> None:
    first = build_dsn(plan(failed()), CONTENT, hostname=HOST, now=NOW)
    boundary = email.message_from_bytes(first.message, policy=email.policy.default).get_boundary()
    hostile = CONTENT + f"--{boundary}--\r\n--{boundary}.1\r\n".encode()
    dsn = build_dsn(plan(failed()), hostile, hostname=HOST, now=NOW)
    parsed = parse(dsn.message)
    assert parsed.get_boundary() == f"{boundary}.2"
    assert len(list(parsed.iter_parts())) == 3
    assert dsn.message.count(hostile) == 1


def test_zone_offset_and_message_id_can_be_given() -> None:
    dsn = build_dsn(plan(failed()), CONTENT, hostname=HOST, now=NOW, zone_offset_minutes=-300,
                    message_id="<given@example.com>")
    parsed = parse(dsn.message)
    assert parsed["Date"] == "Mon, 21 Mar 2242 07:56:32 -0500" and parsed["Message-ID"] == "<given@example.com>"


@pytest.mark.parametrize("hostname", ["", "bad host", "h\r\nX: y", "hôte"])
def test_a_bad_hostname_is_refused(hostname: str) -> None:
    with pytest.raises(ValueError):
        build_dsn(plan(failed()), CONTENT, hostname=hostname, now=NOW)


def test_the_default_limit_is_documented() -> None:
    assert DEFAULT_RETURN_LIMIT == 100 * 1024


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(deadline=None, max_examples=60)
@given(diagnostic=_TEXT, address=st.text(min_size=1, max_size=80), content=st.binary(max_size=3000),
       ret=st.sampled_from([None, "FULL", "HDRS"]), limit=st.integers(0, 4000), smtputf8=st.booleans())
def test_any_input_gives_a_well_formed_dsn(diagnostic, address, content, ret, limit, smtputf8) -> None:
    result = plan_dsn(original(ret=ret, smtputf8=smtputf8), [failed(address, diagnostic=diagnostic)])
    dsn = build_dsn(result, content, hostname=HOST, now=NOW, return_limit=limit)
    parsed = parse(dsn.message)
    parts = list(parsed.iter_parts())
    assert len(parts) == 3
    assert status_blocks(parts[1])[1]["Action"] == "failed"
    assert dsn.smtputf8 == (smtputf8 or not address.isascii())
    assert (dsn.body == "8BITMIME") == (not dsn.message.isascii())
