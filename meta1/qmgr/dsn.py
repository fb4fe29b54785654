"""Delivery status notifications: who gets one, and the RFC 3464 message itself.

Responsibilities
    * :func:`notify_allows` — whether a recipient's NOTIFY (RFC 3461 §4.1) asks for a
      report of an :class:`Action`.
    * :func:`plan_dsn` — the decision qmgr takes when recipients of one transaction end up
      failed, delayed, delivered, relayed or expanded: a :class:`DsnPlan` (the DSN's
      envelope recipient and the recipients it reports on) or :class:`NoDsn` with the
      reason. Taken before any content is read, so that qmgr reads the content file only
      when a DSN is really owed.
    * :func:`build_dsn` — the message: one ``multipart/report; report-type=delivery-status``
      (RFC 3464, RFC 6522) per transaction for all the recipients of the plan, as bytes
      with CRLF line ends, ready to be queued or sent with ``MAIL FROM:<>``.

Who gets a DSN (RFC 5321 §6.1, §4.5.5; RFC 3461 §6.2; reference meta1.md §1.6)
    The reported-on message has a :class:`MessageKind`, which qmgr keeps with the
    transaction (DEFEDB stores it):

    ============== ================================ ====================================
    kind           DSN goes to                      reports
    ============== ================================ ====================================
    ORIGINAL       the envelope sender; nothing     recipients whose NOTIFY asks for
                   when the sender is ``<>``        the action (default FAILURE,DELAY)
    DSN            ``postmaster`` (a double bounce) failed recipients only, NOTIFY
                                                    ignored (D-DSN-4)
    DOUBLE_BOUNCE  nobody: logged only, never a     —
                   triple bounce
    ============== ================================ ====================================

    A DSN's own envelope sender is always ``<>``.

The message (spec/dsn.md has an example)
    Top-level fields: From ``Mail Delivery System <MAILER-DAEMON@hostname>``, To, Subject,
    Date, Message-ID, ``Auto-Submitted: auto-replied`` (RFC 3834 §5), MIME-Version,
    Content-Type. Three parts: a text/plain explanation; the machine-readable report
    (per-message fields Original-Envelope-Id, Reporting-MTA, Arrival-Date; per recipient
    Original-Recipient, Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
    Last-Attempt-Date, Final-Log-ID, Will-Retry-Until, in RFC 3464 §2.2/§2.3 order); the
    returned message (``message/rfc822``) or its header (``text/rfc822-headers``).

    What is returned (D-DSN-2, D-DSN-3): the whole message when a failure is reported and
    RET is FULL or absent and the message is at most ``return_limit`` octets; else only
    its header section (which is cut at a field boundary if it alone exceeds the limit).
    Delay and success reports always return only the header (RET concerns failed DSNs,
    RFC 3461 §4.3).

Internationalised mail (RFC 6533, D-DSN-6)
    When the original transaction used SMTPUTF8, or any reported address is not ASCII,
    the DSN is a "global" one: ``message/global-delivery-status`` with raw UTF-8 field
    values and the address type ``utf-8`` for non-ASCII addresses, ``message/global``
    or ``message/global-headers`` for the returned content, a UTF-8 text part, and the
    DSN must be sent with SMTPUTF8 (:attr:`Dsn.smtputf8`). Returned 8-bit content in a
    DSN that is not global is carried with ``Content-Transfer-Encoding: 8bit`` and the
    DSN needs BODY=8BITMIME (:attr:`Dsn.body`).

Security strategy
    Everything that came from outside — addresses, ORCPT, ENVID, the remote server's
    reply, the returned content — is data. Strings going into a header field or the text
    part lose control characters and lone surrogates (:func:`meta1.smtp.text.printable`
    when the DSN is ASCII, the same minus non-ASCII letters when it is global); long
    values are folded and cut so that no line exceeds 998 octets (RFC 5322 §2.1.1). The
    returned content gets CRLF line ends throughout, and the MIME boundary is chosen so
    that it occurs nowhere in the parts (a message cannot close the report early).
    Memory is bounded: an iterable content is read only as far as needed
    (``return_limit`` plus one chunk).

Times and randomness
    ``now`` and every date are int microseconds since the epoch, formatted with
    :func:`meta1.smtp.text.format_date` (no ``time_t``: dates after 2038 work on i386).
    The boundary and the default Message-ID come from the transaction id and ``now``:
    the module is pure and its output reproducible byte for byte (the golden test).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Protocol

from meta1.smtp.text import format_date, is_printable, printable

DEFAULT_RETURN_LIMIT = 100 * 1024
"""Octets of a message above which a failure DSN returns only its header (D-DSN-3)."""
DEFAULT_NOTIFY = ("FAILURE", "DELAY")
"""What a recipient without NOTIFY is taken to ask for (RFC 3461 §4.1, D-DSN-1)."""
EXPIRED_STATUS = "4.4.7"
"""RFC 3463 "delivery time expired": the Status of a recipient bounced for its lifetime
when there was no better (last temporary) status."""
POSTMASTER = "postmaster"
"""The default recipient of double bounces (RFC 5321 §4.5.1: every domain has one)."""

_MAX_LINE = 998      # octets of a line without CRLF (RFC 5322 §2.1.1)
_FOLD_AT = 78        # the SHOULD of RFC 5322 §2.1.1
_MAX_VALUE = 2000    # characters kept of an outside value (a remote reply, an ORCPT)
_MAX_BOUNDARY = 70   # RFC 2046 §5.1.1
_STATUS = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)
_LINE_END = re.compile(rb"\r\n|\r|\n")
_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # controls, C1, lone surrogates


class Action(enum.Enum):
    """RFC 3464 §2.3.3: what happened to one recipient."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class MessageKind(enum.Enum):
    """What a queued message is, as far as DSNs are concerned."""

    ORIGINAL = "original"            # mail received from a client
    DSN = "dsn"                      # a DSN generated here (sender <>)
    DOUBLE_BOUNCE = "double-bounce"  # a DSN about a failed DSN, sent to postmaster


# The NOTIFY keyword that asks for each action (RFC 3461 §4.1, §5.2.2: "relayed" and
# "expanded" are success notifications) and the status classes that go with it
# (RFC 3464 §2.3.4; "failed" may carry 4.x.x when the lifetime ran out, D-DSN-5).
_CONDITION = {Action.FAILED: "FAILURE", Action.DELAYED: "DELAY", Action.DELIVERED: "SUCCESS",
              Action.RELAYED: "SUCCESS", Action.EXPANDED: "SUCCESS"}
_STATUS_CLASSES = {Action.FAILED: "45", Action.DELAYED: "4", Action.DELIVERED: "2",
                   Action.RELAYED: "2", Action.EXPANDED: "2"}


class Envelope(Protocol):
    """What :meth:`Original.of` reads: an IBDB Transaction or a DEFEDB DeferredTransaction."""

    ta_id: str
    sender: str
    arrival: int
    envid: str | None
    ret: str | None
    smtputf8: bool


@dataclass(frozen=True)
class Original:
    """The transaction a DSN reports on. ``sender`` is ``""`` for ``<>``; ``arrival`` in
    microseconds; ``envid`` xtext-decoded; ``ret`` is "FULL", "HDRS" or None."""

    ta_id: str
    sender: str
    arrival: int
    envid: str | None = None
    ret: str | None = None
    smtputf8: bool = False
    kind: MessageKind = MessageKind.ORIGINAL

    @classmethod
    def of(cls, envelope: Envelope, kind: MessageKind = MessageKind.ORIGINAL) -> Original:
        return cls(envelope.ta_id, envelope.sender, envelope.arrival, envelope.envid, envelope.ret,
                   envelope.smtputf8, kind)


@dataclass(frozen=True)
class RecipientReport:
    """One recipient's outcome.

    ``address`` is the envelope recipient (RCPT TO, without angle brackets); ``status`` an
    RFC 3463 code whose class fits the action; ``notify``/``orcpt_type``/``orcpt`` are the
    RCPT parameters as stored (ORCPT xtext-decoded). ``remote_mta`` and ``diagnostic`` are
    the host that answered and its reply (``"550 5.1.1 no such user"``); for a local reason
    (no MX, expired) pass ``diagnostic_type="X-meta1"`` and the text. Times in µs.
    ``log_id`` (e.g. the recipient id) becomes Final-Log-ID."""

    address: str
    action: Action
    status: str
    notify: tuple[str, ...] | None = None
    orcpt_type: str | None = None
    orcpt: str | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    diagnostic_type: str = "smtp"
    last_attempt: int | None = None
    will_retry_until: int | None = None
    log_id: str | None = None

    def __post_init__(self) -> None:
        match = _STATUS.fullmatch(self.status)
        if match is None:
            raise ValueError(f"not an enhanced status code: {self.status!r}")
        if match.group(1) not in _STATUS_CLASSES[self.action]:
            raise ValueError(f"status {self.status} does not go with action {self.action.value}")
        if not re.fullmatch(r"[A-Za-z0-9-]+", self.diagnostic_type):
            raise ValueError(f"bad diagnostic type: {self.diagnostic_type!r}")


@dataclass(frozen=True)
class NoDsn:
    """No DSN is sent; ``reason`` is for the log."""

    reason: str


@dataclass(frozen=True)
class DsnPlan:
    """A DSN is owed: to ``recipient`` (envelope, ``""`` never occurs), about ``reports``;
    ``kind`` is the kind of the DSN itself (DSN or DOUBLE_BOUNCE); ``unreported`` are the
    recipients whose NOTIFY excluded them (done as far as DSNs go)."""

    original: Original
    recipient: str
    kind: MessageKind
    reports: tuple[RecipientReport, ...]
    unreported: tuple[RecipientReport, ...] = ()


@dataclass(frozen=True)
class Dsn:
    """A built DSN: send it with ``MAIL FROM:<>`` (``sender`` is ``""``), ``RCPT TO:<recipient>``,
    ``BODY=8BITMIME`` when ``body`` says so and ``SMTPUTF8`` when ``smtputf8``. ``returned``
    is "full", "headers" or "headers-cut"."""

    recipient: str
    kind: MessageKind
    message: bytes
    message_id: str
    returned: str
    body: str | None
    smtputf8: bool
    sender: str = ""


# -- the decision -----------------------------------------------------------------------------

def notify_allows(notify: tuple[str, ...] | None, action: Action) -> bool:
    """Whether a recipient with this NOTIFY (None: the parameter was absent) is to be told
    about ``action``. NEVER allows nothing."""
    return _CONDITION[action] in (DEFAULT_NOTIFY if notify is None else notify)


def plan_dsn(original: Original, reports: Iterable[RecipientReport], *,
             postmaster: str = POSTMASTER) -> DsnPlan | NoDsn:
    """Decide whether ``reports`` about ``original`` produce a DSN, and to whom (see the
    module documentation for the table)."""
    reports = tuple(reports)
    if original.kind is MessageKind.DOUBLE_BOUNCE:
        return NoDsn(f"{original.ta_id} is a double bounce: its failure is only logged, never bounced again")
    if original.kind is MessageKind.DSN:
        wanted = tuple(r for r in reports if r.action is Action.FAILED)
        recipient, kind = postmaster, MessageKind.DOUBLE_BOUNCE
    elif not original.sender:
        return NoDsn(f"{original.ta_id} has the null sender <>: no DSN (RFC 5321 §6.1)")
    else:
        wanted = tuple(r for r in reports if notify_allows(r.notify, r.action))
        recipient, kind = original.sender, MessageKind.DSN
    if not wanted:
        return NoDsn(f"{original.ta_id}: no recipient's outcome asks for a DSN (NOTIFY)")
    return DsnPlan(original, recipient, kind, wanted, tuple(r for r in reports if r not in wanted))


# -- text helpers -------------------------------------------------------------------------------

def _clean(text: str, utf8: bool) -> str:
    """``text`` fit for a header value or the text part: no control characters, no lone
    surrogates, and (unless ``utf8``) ASCII only; cut to a bounded length."""
    text = text.strip()
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE - 3] + "..."
    return _NOT_TEXT.sub("?", text) if utf8 else printable(text)


def _fold(line: str, start: int = 0) -> str:
    """``line`` folded before spaces so that lines stay near 78 characters; a run without
    spaces longer than 998 characters is cut (only an outside value can be that long, and
    :func:`_clean` has bounded it)."""
    out: list[str] = []
    while len(line) > _FOLD_AT:
        cut = line.rfind(" ", start + 1, _FOLD_AT + 1)
        if cut <= start:
            cut = line.find(" ", _FOLD_AT + 1)
            if cut < 0:
                break
        out.append(line[:cut])
        line, start = line[cut:], 0
    out.append(line)
    return "\r\n".join(part if len(part) <= _MAX_LINE else part[:_MAX_LINE - 3] + "..." for part in out)


def _field(name: str, value: str) -> str:
    return _fold(f"{name}: {value}", len(name) + 1)


def _date(microseconds: int) -> str:
    return format_date(microseconds // 1_000_000)


def _is_ascii(text: str | None) -> bool:
    return text is None or text.isascii()


def _address_field(address: str, utf8: bool) -> str:
    """``rfc822; a@b``, or ``utf-8; …`` for a non-ASCII address in a global DSN (RFC 6533 §3)."""
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{kind}; {_clean(address, utf8)}"


def _header_address(address: str, hostname: str, utf8: bool) -> str:
    """An envelope address as it goes into To: ``postmaster`` (RFC 5321's special local
    recipient, no domain) becomes ``postmaster@hostname``, which RFC 5322 can express."""
    return _clean(address if "@" in address else f"{address}@{hostname}", utf8)


def _wrap(text: str, indent: str) -> list[str]:
    """Lines of at most ~76 characters, each starting with ``indent``; words longer than
    a line are split."""
    width = 76 - len(indent)
    lines, current = [], ""
    for word in text.split():
        while len(word) > width:
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:width])
            word = word[width:]
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return [indent + line for line in lines]


# -- the returned content -----------------------------------------------------------------------

def _header_end(data: bytes | bytearray) -> int:
    """Octets of the header section including its closing empty line, or -1 if not found."""
    if data.startswith(b"\r\n"):
        return 2
    end = data.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def _read(content: bytes | Iterable[bytes], limit: int, headers_only: bool) -> tuple[bytes, bool]:
    """(the content, or as much of it as deciding needs, and whether that is all of it).

    Reads at most ``limit`` + one chunk: stops once more than ``limit`` octets are in, or,
    with ``headers_only``, once the header section is complete."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content), True
    taken = bytearray()
    complete = True
    chunks = iter(content)
    try:
        for chunk in chunks:
            # Only the new octets (and the 3 before them) can complete CRLF CRLF: searching
            # the whole buffer each time would be quadratic in the number of chunks.
            searched = max(len(taken) - 3, 0)
            taken += chunk
            if len(taken) > limit or (headers_only and (taken.startswith(b"\r\n")
                                                        or taken.find(b"\r\n\r\n", searched) >= 0)):
                complete = False
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # a generator (cdb.iter_content) holds its file open
            close()
    return bytes(taken), complete


def _headers(data: bytes, limit: int) -> tuple[bytes, bool]:
    """(the header section of ``data`` without its closing empty line, whether it was cut).

    A header section longer than ``limit`` is cut after the last whole field that fits;
    content without an empty line is all header (RFC 5322 §3.5: the body is optional)."""
    end = _header_end(data)
    section = data[:end - 2] if end >= 0 else data
    if len(section) <= limit:
        return section, False
    cut = section.rfind(b"\r\n", 0, limit)
    while cut > 0 and section[cut + 2:cut + 3] in (b" ", b"\t"):
        cut = section.rfind(b"\r\n", 0, cut)
    return (section[:cut + 2] if cut > 0 else b""), True


@dataclass(frozen=True)
class _Returned:
    data: bytes   # CRLF-terminated lines (possibly empty)
    mode: str     # "full", "headers", "headers-cut"
    why: str      # a sentence for the text part


def _returned(plan: DsnPlan, content: bytes | Iterable[bytes], limit: int) -> _Returned:
    failed = any(r.action is Action.FAILED for r in plan.reports)
    want_full = failed and plan.original.ret != "HDRS"
    data, complete = _read(content, limit, headers_only=not want_full)
    if want_full and complete and len(data) <= limit:
        mode, why = "full", "The message is attached below."
    else:
        data, cut = _headers(data, limit)
        mode = "headers-cut" if cut else "headers"
        if cut:
            why = f"The first {len(data)} octets of the message's header are attached below."
        elif want_full:
            why = f"The message is larger than {limit} octets: only its header is attached below."
        else:
            why = "The message's header is attached below."
    data = _LINE_END.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _Returned(data, mode, why)


# -- the message --------------------------------------------------------------------------------

_INTRO = {
    Action.FAILED: "Your message could not be delivered to the following recipients.",
    Action.DELAYED: ("Your message has not yet been delivered to the following recipients. "
                     "Delivery will be tried again; you need not resend it."),
    Action.DELIVERED: "Your message was delivered to the following recipients.",
    Action.RELAYED: ("Your message was passed on to the following recipients' mail systems, "
                     "which may not send further notifications."),
    Action.EXPANDED: ("Your message was delivered to the following recipients, whose addresses "
                      "were expanded into further addresses."),
}
_DOUBLE_BOUNCE_INTRO = ("A delivery status notification that this mail system generated could not be "
                        "delivered to the following recipients.")
_SUBJECTS = ((Action.FAILED, "Undelivered Mail Returned to Sender"),
             (Action.DELAYED, "Delayed Mail (still being retried)"),
             (Action.DELIVERED, "Successful Mail Delivery Report"),
             (Action.RELAYED, "Successful Mail Delivery Report"),
             (Action.EXPANDED, "Successful Mail Delivery Report"))


def _subject(plan: DsnPlan) -> str:
    if plan.kind is MessageKind.DOUBLE_BOUNCE:
        return "Postmaster Copy: Undelivered Mail"
    actions = {r.action for r in plan.reports}
    return next(subject for action, subject in _SUBJECTS if action in actions)


def _text_part(plan: DsnPlan, hostname: str, returned: _Returned, utf8: bool) -> list[str]:
    lines = [f"This is the mail system at host {hostname}.", ""]
    for action in Action:
        reports = [r for r in plan.reports if r.action is action]
        if not reports:
            continue
        intro = _DOUBLE_BOUNCE_INTRO if plan.kind is MessageKind.DOUBLE_BOUNCE else _INTRO[action]
        lines += _wrap(intro, "") + [""]
        for report in reports:
            lines += _wrap(f"<{_clean(report.address, utf8)}>: {action.value} ({report.status})", "")
            if report.diagnostic and report.diagnostic.strip():
                said = (f"{report.remote_mta} said: " if report.remote_mta else "")
                lines += _wrap(_clean(said + report.diagnostic, utf8), "    ")
            if report.will_retry_until is not None:
                lines.append(f"    Delivery will be tried until {_date(report.will_retry_until)}.")
        lines.append("")
    lines += _wrap(returned.why, "")
    lines += ["", "For further assistance, please send mail to postmaster."]
    return lines


def _status_part(plan: DsnPlan, hostname: str, utf8: bool) -> list[str]:
    original = plan.original
    lines = []
    if original.envid is not None:  # RFC 3461 §6.3: the decoded ENVID
        lines.append(_field("Original-Envelope-Id", _clean(original.envid, utf8)))
    lines.append(f"Reporting-MTA: dns; {hostname}")
    lines.append(f"Arrival-Date: {_date(original.arrival)}")
    for report in plan.reports:
        lines.append("")
        if report.orcpt is not None:
            lines.append(_field("Original-Recipient",
                                f"{_clean(report.orcpt_type or 'rfc822', False).lower()}; {_clean(report.orcpt, utf8)}"))
        lines.append(_field("Final-Recipient", _address_field(report.address, utf8)))
        lines.append(f"Action: {report.action.value}")
        lines.append(f"Status: {report.status}")
        if report.remote_mta is not None:
            lines.append(_field("Remote-MTA", f"dns; {_clean(report.remote_mta, utf8)}"))
        if report.diagnostic and report.diagnostic.strip():
            lines.append(_field("Diagnostic-Code", f"{report.diagnostic_type}; {_clean(report.diagnostic, utf8)}"))
        if report.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {_date(report.last_attempt)}")
        if report.log_id is not None:
            lines.append(_field("Final-Log-ID", _clean(report.log_id, utf8)))
        if report.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {_date(report.will_retry_until)}")
    return lines


def _is_global(plan: DsnPlan) -> bool:
    """RFC 6533 applies: SMTPUTF8 mail, or an address that is not ASCII."""
    original = plan.original
    texts = [plan.recipient, original.sender] + [t for r in plan.reports for t in (r.address, r.orcpt)]
    return original.smtputf8 or not all(_is_ascii(text) for text in texts)


def _encoding(data: bytes) -> str:
    return "7bit" if data.isascii() else "8bit"


def _boundary(base: str, parts: Iterable[bytes]) -> str:
    """``base`` (cut to fit), or it with a counter: the first that occurs in no part."""
    parts = tuple(parts)
    base = base[:_MAX_BOUNDARY - 6]
    candidate, n = base, 0
    while any(b"--" + candidate.encode("ascii") in part for part in parts):
        n += 1
        candidate = f"{base}.{n}"
    return candidate


def _lines(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def build_dsn(plan: DsnPlan, content: bytes | Iterable[bytes], *, hostname: str, now: int,
              return_limit: int = DEFAULT_RETURN_LIMIT, message_id: str | None = None,
              zone_offset_minutes: int = 0) -> Dsn:
    """The DSN of ``plan``, returning (part of) ``content`` — the queued message as bytes or
    as an iterable of chunks (:func:`meta1.queue.cdb.read_content` /
    :func:`~meta1.queue.cdb.iter_content`). ``hostname`` names the reporting MTA;
    ``now`` (µs) dates the DSN; ``message_id`` defaults to
    ``<ta-id.now.dsn@hostname>``."""
    if not hostname or not is_printable(hostname) or " " in hostname:
        raise ValueError(f"the host name must be printable ASCII without spaces: {hostname!r}")
    if return_limit < 0:
        raise ValueError("return_limit must not be negative")
    utf8 = _is_global(plan)
    returned = _returned(plan, content, return_limit)
    if message_id is None:
        message_id = f"<{plan.original.ta_id}.{now}.dsn@{hostname}>"
    if utf8:
        report_type, status_type = "global-delivery-status", "message/global-delivery-status"
        content_type = "message/global" if returned.mode == "full" else "message/global-headers"
    else:
        report_type, status_type = "delivery-status", "message/delivery-status"
        content_type = "message/rfc822" if returned.mode == "full" else "text/rfc822-headers"
    text = _lines(_text_part(plan, hostname, returned, utf8))
    status = _lines(_status_part(plan, hostname, utf8))
    charset = "utf-8" if utf8 else "us-ascii"
    parts = [
        (("Content-Description: Notification", f"Content-Type: text/plain; charset={charset}"), text),
        (("Content-Description: Delivery report", f"Content-Type: {status_type}"), status),
        (("Content-Description: Returned message" if returned.mode == "full"
          else "Content-Description: Returned message header", f"Content-Type: {content_type}"), returned.data),
    ]
    boundary = _boundary(f"{plan.original.ta_id}.{now}/{hostname}", (body for _, body in parts))
    head = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{hostname}>"),
        _field("To", f"<{_header_address(plan.recipient, hostname, utf8)}>"),
        f"Subject: {_subject(plan)}",
        f"Date: {format_date(now // 1_000_000, zone_offset_minutes)}",
        _field("Message-ID", message_id),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f'\tboundary="{boundary}"',
    ]
    pieces = [_lines(head)]
    body_parts = [b"This is a MIME-encapsulated message.\r\n"]
    for fields, body in parts:
        body_parts.append(_lines(["", f"--{boundary}", *fields,
                                  f"Content-Transfer-Encoding: {_encoding(body)}", ""]) + body)
    body_parts.append(_lines(["", f"--{boundary}--"]))
    body = b"".join(body_parts)
    pieces.append(f"Content-Transfer-Encoding: {_encoding(body)}\r\n\r\n".encode("ascii"))
    pieces.append(body)
    message = b"".join(pieces)
    return Dsn(recipient=plan.recipient, kind=plan.kind, message=message, message_id=message_id,
               returned=returned.mode, body=None if message.isascii() else "8BITMIME", smtputf8=utf8)
