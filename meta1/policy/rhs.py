"""Access-map right-hand sides: what an entry says to do, and the reply it gives.

Responsibilities
    :func:`parse_rhs` reads the value of an access-map entry (README 3.12.2, reference
    §2.6, B46) into an :class:`Rhs`; :func:`reply_at` turns a rejecting RHS into the SMTP
    reply for the stage where it is applied, with the macros of README 3.12.3 replaced.

Grammar (keywords in any case; surrounding white space ignored)::

    rhs     = [ "QUICK:" ] action
    action  = "OK" / "RELAY" / "REJECT" / "TEMPFAIL" / "TEMP" / "DISCARD" / reply
    reply   = [ DQUOTE ] code [ SP status ] [ SP text ] [ DQUOTE ]
    code    = ("4" / "5") 2DIGIT                    ; RFC 5321 §4.2: 4yz or 5yz only
    status  = class "." 1*3DIGIT "." 1*3DIGIT       ; RFC 3463 §2, class = code's first digit

What the actions mean
    ``OK``       accept: the lookups of this check end here; with delay_checks a ``to:``
                 OK also overrides held client and sender rejections, a ``from:`` OK a
                 DNSBL listing (B45);
    ``RELAY``    OK, and grant relaying: for a client tag the client may relay, for a
                 recipient tag the recipient (domain) may be relayed to (B42);
    ``REJECT``   permanent rejection: 550 5.7.1 at MAIL and RCPT, 554 5.7.1 at connect;
    ``TEMPFAIL`` (``TEMP``) temporary rejection: 450 4.7.1, or 421 4.7.0 at connect;
    ``DISCARD``  accept, and drop the mail silently (the session's, the transaction's or
                 the recipient's, by the stage of the entry);
    a reply      reject with exactly this reply. A reply with no enhanced status gets the
                 class's ``X.7.1`` (RFC 3463: delivery not authorized); an empty text the
                 default text of REJECT/TEMPFAIL. At connect a 5xx becomes 554 and a 4xx
                 421 (RFC 5321 §3.1, §4.2.5: the greeting may only refuse with these),
                 keeping the status and the text.
    ``QUICK:``   the entry applies at its own stage even with delay_checks, and a QUICK
                 rejection is final: no ``to:`` entry and no relay grant overrides it
                 (B46). For OK, RELAY and DISCARD it changes nothing: an accepting entry
                 ends the lookups of its check anyway.

Macros in a reply's text (README 3.12.3; the set is meta1's, D-POL-4)
    ``${client_addr}`` the client's IP address, ``${client_name}`` its validated host
    name, ``${sender}`` the envelope sender, ``${rcpt}`` the recipient, ``${hostname}``
    this MTA's name, ``${dnsbl}`` the DNS list that lists the client (DNSBL replies). A
    macro not known at the stage is empty. Values are reduced to printable ASCII
    (reliability S9) and never re-read as macros; the text is cut to fit the 512-octet
    reply line (RFC 5321 §4.5.3.1.5). An unknown macro name, an unterminated ``${``, a
    code outside 4yz/5yz or a status of the wrong class makes the RHS invalid:
    :class:`RhsError`, which the checks treat as a map failure (4xx, logged) — a broken
    entry never accepts by accident (D-POL-3).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields

from meta1.smtp.replies import MAX_REPLY_LINE, R, Reply
from meta1.smtp.text import printable

QUICK = "quick:"
_STATUS = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)
_CODE = re.compile(r"([45])[0-9][0-9]", re.ASCII)
_MACRO = re.compile(r"\$\{([^}]*)\}")
_ELLIPSIS = "..."


class Action(enum.Enum):
    OK = "OK"
    RELAY = "RELAY"
    REJECT = "REJECT"
    TEMPFAIL = "TEMPFAIL"
    DISCARD = "DISCARD"
    REPLY = "reply"


_KEYWORDS = {"ok": Action.OK, "relay": Action.RELAY, "reject": Action.REJECT,
             "tempfail": Action.TEMPFAIL, "temp": Action.TEMPFAIL, "discard": Action.DISCARD}


class Stage(enum.Enum):
    """Where a decision is applied: the reply's form depends on it."""

    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"


class RhsError(ValueError):
    """An access-map value that is not a valid RHS."""


@dataclass(frozen=True)
class Macros:
    """The values of the RHS macros at the time a reply is made (empty when unknown)."""

    client_addr: str = ""
    client_name: str = ""
    sender: str = ""
    rcpt: str = ""
    hostname: str = ""
    dnsbl: str = ""


MACRO_NAMES = frozenset(f.name for f in fields(Macros))


@dataclass(frozen=True)
class Rhs:
    """A parsed right-hand side. ``code``, ``status`` and ``text`` only for REPLY; ``text``
    is the template as written (macros not yet replaced)."""

    action: Action
    quick: bool = False
    code: int = 0
    status: str = ""
    text: str = ""

    @property
    def accepts(self) -> bool:
        """OK or RELAY."""
        return self.action in (Action.OK, Action.RELAY)

    @property
    def rejects(self) -> bool:
        """REJECT, TEMPFAIL or a reply."""
        return self.action in (Action.REJECT, Action.TEMPFAIL, Action.REPLY)

    @property
    def temporary(self) -> bool:
        return self.action is Action.TEMPFAIL or (self.action is Action.REPLY and self.code < 500)

    def __str__(self) -> str:
        body = self.action.value if self.action is not Action.REPLY else \
            " ".join(p for p in (str(self.code), self.status, self.text) if p)
        return ("QUICK:" if self.quick else "") + body


def parse_rhs(value: str) -> Rhs:
    """The RHS written in ``value``; :class:`RhsError` if it is not one (see the module)."""
    text = value.strip()
    # Keywords are ASCII: str.lower() maps some other characters onto ASCII letters
    # (U+212A KELVIN SIGN to "k"), which must not spell "OK".
    quick = text[:len(QUICK)].isascii() and text[:len(QUICK)].lower() == QUICK
    if quick:
        text = text[len(QUICK):].strip()
    action = _KEYWORDS.get(text.lower()) if text.isascii() else None
    if action is not None:
        return Rhs(action, quick)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if not _CODE.match(text) or (len(text) > 3 and text[3] != " "):
        raise RhsError(f"not OK, RELAY, REJECT, TEMPFAIL, DISCARD or a 4xx/5xx reply: {printable(value)[:80]!r}")
    code, rest = int(text[:3]), text[4:].strip()
    status, _, after = rest.partition(" ")
    m = _STATUS.fullmatch(status)
    if m:
        if int(m.group(1)) != code // 100:
            raise RhsError(f"enhanced status {status} does not match reply code {code}")
        rest = after.strip()
    elif status[:1].isdigit() and "." in status:
        raise RhsError(f"bad enhanced status code: {printable(status)[:20]!r}")
    else:
        status = f"{code // 100}.7.1"
    for name in _MACRO.findall(rest):
        if name not in MACRO_NAMES:
            raise RhsError(f"unknown macro ${{{printable(name)[:30]}}} (known: {', '.join(sorted(MACRO_NAMES))})")
    if "${" in _MACRO.sub("", rest):
        raise RhsError("unterminated macro '${'")
    return Rhs(Action.REPLY, quick, code, status, printable(rest))


def expand(template: str, macros: Macros) -> str:
    """``template`` with every ``${name}`` replaced by the printable value of that macro."""
    return _MACRO.sub(lambda m: printable(getattr(macros, m.group(1), "")), template)


def literal_reply(code: int, status: str, text: str) -> Reply:
    """A reply from configuration text: printable, cut to one reply line."""
    line = printable(text)
    room = MAX_REPLY_LINE - len(f"{code} {status} ") - 2
    if len(line) > room:
        line = line[:room - len(_ELLIPSIS)] + _ELLIPSIS
    return Reply(code, status, (line,))


def reply_at(rhs: Rhs, stage: Stage, macros: Macros) -> Reply:
    """The reply of a rejecting ``rhs`` applied at ``stage`` (ValueError if it accepts)."""
    if rhs.action is Action.REJECT:
        base = R.CLIENT_REFUSED if stage is Stage.CONNECT else R.ACCESS_DENIED
        return base.format(hostname=macros.hostname)
    if rhs.action is Action.TEMPFAIL:
        base = R.CLIENT_TEMPFAIL if stage is Stage.CONNECT else R.ACCESS_TEMPFAIL
        return base.format(hostname=macros.hostname)
    if rhs.action is not Action.REPLY:
        raise ValueError(f"{rhs} does not reject")
    code = rhs.code
    if stage is Stage.CONNECT:
        code = 554 if code >= 500 else 421
    text = expand(rhs.text, macros)
    if not text:
        default = R.ACCESS_DENIED if code >= 500 else R.ACCESS_TEMPFAIL
        text = default.lines[0]
    return literal_reply(code, rhs.status, text)


def failure_reply(stage: Stage, hostname: str = "") -> Reply:
    """The reply when the lookups of a check failed (TEMP, PERM, a broken RHS): always a
    4xx, never "not found" (B27, B28; D-POL-3). At connect the session ends with 421."""
    if stage is Stage.CONNECT:
        return R.LOCAL_ERROR.format(hostname=hostname)
    return R.MAP_TEMPFAIL
