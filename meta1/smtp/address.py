"""SMTP envelope addresses: reverse and forward paths (RFC 5321 §4.1.2, RFC 6531 §3.3).

Responsibilities
    ``parse_reverse_path`` (MAIL FROM) and ``parse_forward_path`` (RCPT TO) turn the
    ``<...>`` part of a command into a :class:`Path`, or raise :class:`AddressError`
    carrying the reply to send. :class:`Mailbox` and :class:`Path` are plain immutable
    values; ``str()`` gives their canonical text.

Grammar accepted (RFC 5321 §4.1.2, with the RFC 6531 §3.3 extensions under SMTPUTF8)::

    Reverse-path = "<>" / Path              Forward-path = "<Postmaster>" / Path
    Path         = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l        = At-domain *( "," At-domain )        At-domain = "@" Domain
    Mailbox      = Local-part "@" ( Domain / address-literal )
    Local-part   = Dot-string / Quoted-string
    Dot-string   = Atom *( "." Atom )                  Atom = 1*atext  (atext =/ UTF-8)
    Quoted-string = DQUOTE *( qtextSMTP / "\\" %d32-126 ) DQUOTE   (qtextSMTP =/ UTF-8)
    Domain       = sub-domain *( "." sub-domain )      LDH labels, or U-labels under SMTPUTF8
    address-literal = "[" ( IPv4 / "IPv6:" IPv6 ) "]"

Decisions (spec/smtp.md has the reasons): a source route is accepted and dropped (§3.3,
§4.1.1.3: "SHOULD ignore the routes"), D-SMTP-3; a trailing dot after the domain is
refused, D-SMTP-4; general address literals (``[tag:content]``) are refused, D-SMTP-5;
an empty local part (``""@d``) is refused, D-SMTP-6; limits are counted in UTF-8 octets
of the text as written, D-SMTP-7.

Security strategy
    The parser is a hand-written scanner over a string of at most 256 octets, so its
    cost is bounded and there is no regular-expression backtracking. Before any structure
    is looked at, a path containing a control character (C0, DEL, C1) or a lone surrogate
    (what ``surrogateescape`` leaves for invalid UTF-8) is refused: such characters must
    never reach a queue file, a log or a map key (reliability S5, S11). Non-ASCII text is
    parsed as if SMTPUTF8 had been declared and then refused with 553 5.6.7 when it was
    not, so the client learns the real problem. Open-relay spellings get no meaning here
    (reliability S8): ``%`` and ``!`` are ordinary atext and stay in an opaque local part,
    ``"a@b"@c`` has the local part ``a@b``, ``a@b@c`` is a syntax error, and a source
    route never reaches the Path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from meta1.smtp.replies import R, Reply

MAX_LOCAL_PART = 64   # octets (RFC 5321 §4.5.3.1.1)
MAX_DOMAIN = 255      # octets (RFC 5321 §4.5.3.1.2)
MAX_PATH = 256        # octets including the angle brackets (RFC 5321 §4.5.3.1.3)
MAX_LABEL = 63        # octets of a DNS label (RFC 1035 §2.3.4), A-label form for U-labels

# RFC 5322 §3.2.3 atext: ALPHA / DIGIT and these.
_ATEXT_SPECIALS = "!#$%&'*+-/=?^_`{|}~"
# RFC 5321 Dot-string = Atom *("." Atom); atext per RFC 5322 §3.2.3, and any non-ASCII
# character (RFC 6531 §3.3 UTF8-non-ascii). One compiled pattern: this runs for every
# MAIL and RCPT.
_ATOM = "[A-Za-z0-9" + re.escape(_ATEXT_SPECIALS) + "\u0080-\U0010FFFF]+"
_DOT_STRING = re.compile(_ATOM + r"(?:\." + _ATOM + ")*")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_IPV4_CHARS = frozenset("0123456789.")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
# Characters that IDNA (UTS #46) maps to "." -- refused so that no later conversion can
# split a label that every check here saw as one.
_IDNA_DOTS = frozenset("\u3002\uff0e\uff61")


class SMTPError(Exception):
    """A command's argument is refused; ``reply`` is what the server answers."""

    def __init__(self, reply: Reply, detail: str = ""):
        super().__init__(detail or " ".join(reply.lines))
        self.reply = reply
        self.detail = detail


class AddressError(SMTPError):
    """A reverse or forward path is refused."""


@dataclass(frozen=True)
class Mailbox:
    """``local_part@domain``. ``local_part`` is the value (quotes and quoted-pairs
    removed); ``domain`` is as written, an address literal with its brackets, or ``""``
    only for the special recipient ``<Postmaster>``."""

    local_part: str
    domain: str

    def __str__(self) -> str:
        local = self.local_part if _is_dot_string(self.local_part) else _quote(self.local_part)
        return f"{local}@{self.domain}" if self.domain else local


@dataclass(frozen=True)
class Path:
    """A reverse or forward path; ``mailbox`` is ``None`` for the null path ``<>``."""

    mailbox: Mailbox | None

    def __str__(self) -> str:
        return f"<{self.address}>"

    @property
    def address(self) -> str:
        """The mailbox's canonical text, ``""`` for the null path."""
        return "" if self.mailbox is None else str(self.mailbox)

    @property
    def is_null(self) -> bool:
        return self.mailbox is None


def parse_reverse_path(text: str, *, smtputf8: bool) -> Path:
    """The reverse path of ``MAIL FROM:`` (``"<>"`` allowed); errors reply 501 5.1.7."""
    if text == "<>":
        return Path(None)
    return Path(_parse_path(text, smtputf8, R.BAD_SENDER, postmaster=False))


def parse_forward_path(text: str, *, smtputf8: bool) -> Path:
    """The forward path of ``RCPT TO:`` (``"<Postmaster>"`` in any case allowed, never
    ``"<>"``); errors reply 501 5.1.3."""
    return Path(_parse_path(text, smtputf8, R.BAD_RECIPIENT, postmaster=True))


# --- the scanner -------------------------------------------------------------------------

class _Refused(Exception):
    """Internal: the text is not a path; the message says where and why."""


def _parse_path(text: str, smtputf8: bool, bad: Reply, *, postmaster: bool) -> Mailbox:
    try:
        if len(text) > MAX_PATH:  # cheap bound before anything else looks at the text
            raise _Refused("path too long")
        _check_characters(text)
        if _octets(text) > MAX_PATH:
            raise _Refused("path too long")
        if len(text) < 2 or text[0] != "<" or text[-1] != ">":
            raise _Refused("angle brackets required")
        inner = text[1:-1]
        if postmaster and inner.lower() == "postmaster":
            mailbox = Mailbox("Postmaster", "")
        else:
            mailbox = _parse_mailbox(_strip_source_route(inner))
    except _Refused as exc:
        raise AddressError(bad, f"{exc}: {text!r}") from None
    if not smtputf8 and not text.isascii():
        raise AddressError(R.SMTPUTF8_REQUIRED, f"non-ASCII address without SMTPUTF8: {text!r}")
    return mailbox


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _check_characters(text: str) -> None:
    for char in text:
        point = ord(char)
        if point < 0x20 or 0x7F <= point <= 0x9F or 0xD800 <= point <= 0xDFFF:
            raise _Refused(f"control character or invalid UTF-8 (U+{point:04X})")


def _strip_source_route(inner: str) -> str:
    """The mailbox part of ``[A-d-l ":"] Mailbox``; the route is checked, then dropped."""
    if not inner.startswith("@"):
        return inner
    route, colon, mailbox = inner.partition(":")
    if not colon:
        raise _Refused("source route without ':'")
    for hop in route.split(","):
        if not hop.startswith("@"):
            raise _Refused("source route hop without '@'")
        _check_domain_name(hop[1:])
    return mailbox


def _parse_mailbox(text: str) -> Mailbox:
    if text.startswith('"'):
        local_part, end = _scan_quoted_string(text)
        written_local = text[:end]
    else:
        end = text.find("@")
        if end < 0:
            raise _Refused("no '@domain'")
        written_local = local_part = text[:end]
        if not _is_dot_string(local_part):
            raise _Refused("local part is not a dot-string")
    if not local_part:
        raise _Refused("empty local part")
    if _octets(written_local) > MAX_LOCAL_PART:
        raise _Refused("local part too long")
    if text[end:end + 1] != "@":
        raise _Refused("no '@' after the local part")
    domain = text[end + 1:]
    if _octets(domain) > MAX_DOMAIN:
        raise _Refused("domain too long")
    if domain.startswith("["):
        _check_address_literal(domain)
    else:
        _check_domain_name(domain)
    return Mailbox(local_part, domain)


def _scan_quoted_string(text: str) -> tuple[str, int]:
    """(decoded value, index after the closing quote) of the quoted string at text[0]."""
    value = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(value), i + 1
        if char == "\\":
            # quoted-pairSMTP = %d92 %d32-126: RFC 6531 does not extend it to UTF-8.
            if i + 1 >= len(text) or not " " <= text[i + 1] <= "~":
                raise _Refused("bad quoted-pair")
            value.append(text[i + 1])
            i += 2
            continue
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, =/ UTF8-non-ascii (controls are gone).
        value.append(char)
        i += 1
    raise _Refused("unterminated quoted string")


def _is_dot_string(text: str) -> bool:
    """RFC 5321 Dot-string: atoms of atext (UTF-8 counts as atext, RFC 6531) joined by
    single dots. Control characters are never atext."""
    return text.isprintable() and _DOT_STRING.fullmatch(text) is not None


def _quote(local_part: str) -> str:
    escaped = local_part.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _check_domain_name(domain: str) -> None:
    """LDH labels (RFC 5321 Domain); U-labels are checked only for shape (D-SMTP-8)."""
    if not domain:
        raise _Refused("empty domain")
    if _octets(domain) > MAX_DOMAIN:
        raise _Refused("domain too long")
    for label in domain.split("."):
        if not label:
            raise _Refused("empty domain label (leading, trailing or double dot)")
        if label[0] == "-" or label[-1] == "-":
            raise _Refused("domain label starts or ends with '-'")
        if label.isascii():
            if not _LDH.issuperset(label):
                raise _Refused("domain label has characters other than letters, digits, '-'")
            if len(label) > MAX_LABEL:
                raise _Refused("domain label too long")
        else:
            _check_u_label(label)
    if label.isdigit():  # the last label; isdigit() is enough, the label is LDH by now
        # RFC 3696 §2: a top-level domain is never all-numeric. "a@127.0.0.1" is an IPv4
        # address without brackets, which a resolver might treat as a literal (D-SMTP-4).
        raise _Refused("all-numeric top-level domain")


def _check_u_label(label: str) -> None:
    for char in label:
        if char.isascii() and char not in _LDH or char in _IDNA_DOTS or not char.isprintable():
            raise _Refused("character not allowed in an internationalized domain label")
    # The label travels as an A-label ("xn--" + Punycode) to the DNS: that form must fit.
    if len(label.encode("punycode")) + 4 > MAX_LABEL:
        raise _Refused("internationalized domain label too long")


def _check_address_literal(literal: str) -> None:
    if not literal.endswith("]"):
        raise _Refused("address literal without ']'")
    content = literal[1:-1]
    if content[:5].lower() == "ipv6:":
        address = content[5:]
        # ipaddress also takes scope ids ("fe80::1%eth0"); the character check refuses them.
        if not address or not _IPV6_CHARS.issuperset(address):
            raise _Refused("bad IPv6 address literal")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise _Refused("bad IPv6 address literal") from None
    elif content and _IPV4_CHARS.issuperset(content):
        try:  # refuses leading zeros ("010.0.0.1"), whose meaning is ambiguous
            ipaddress.IPv4Address(content)
        except ValueError:
            raise _Refused("bad IPv4 address literal") from None
    else:
        raise _Refused("general address literals are not supported")
