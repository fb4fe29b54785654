"""SMTP replies: one value type and the catalogue of every reply the server sends.

Responsibilities
    * :class:`Reply` is a validated, immutable SMTP reply: a three-digit code (RFC 5321
      §4.2), an RFC 3463 enhanced status code (RFC 2034 puts it at the start of every
      line's text) and one or more text lines. ``encode()`` renders the wire form::

          250-2.0.0 first line\\r\\n
          250 2.0.0 last line\\r\\n

    * :class:`R` is the catalogue: every reply meta1's SMTP server (and its LMTP delivery
      agent, lmtpd) can send, with its code
      and enhanced code fixed here so that the session machine, the tests and the spec
      name replies instead of spelling numbers. ``catalogue()`` lists them.

Rules enforced at construction (a reply that breaks them cannot exist)
    * ``code`` is 200..599 (RFC 5321 §4.2: first digit 2..5; 1yz is never used in SMTP).
    * ``status`` is ``None`` or ``class.subject.detail`` (RFC 3463 §2: class 2, 4 or 5,
      subject and detail of one to three digits), and its class equals the code's first
      digit. 3xx replies carry none (there is no class 3), nor do the greeting and the
      HELO/EHLO replies: RFC 2034 §3 does not apply them to 220 greetings or HELO/EHLO.
    * at least one line; each line is printable US-ASCII (0x20..0x7E), so a reply can
      never carry CR, LF, NUL or 8-bit data (reliability S9);
    * each encoded line fits RFC 5321 §4.5.3.1.5's 512 octets including code and CRLF.

Templates
    Catalogue texts may contain ``str.format`` fields (``{hostname}``, ``{address}``,
    ``{id}``, ``{size}``, ``{name}``, ``{limit}``, ``{count}``). ``format(**fields)`` fills
    them after reducing every value with :func:`meta1.smtp.text.printable`, because the
    values (an address, a parameter name) usually come from the client. The template is
    ours and trusted; the values are data and are never re-interpreted as templates. A
    line that would grow past the 512-octet limit is cut and ends in ``...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from string import Formatter
from typing import Any

from meta1.smtp.text import is_printable, printable

MAX_REPLY_LINE = 512  # octets, code and CRLF included (RFC 5321 §4.5.3.1.5)
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)
_ELLIPSIS = "..."


@dataclass(frozen=True)
class Reply:
    """One SMTP reply; see the module documentation for the rules it enforces."""

    code: int
    status: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if type(self.code) is not int or not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be an int in 200..599: {self.code!r}")
        if self.status is not None:
            if not isinstance(self.status, str) or not _STATUS.fullmatch(self.status):
                raise ValueError(f"bad enhanced status code: {self.status!r}")
            if int(self.status[0]) != self.code // 100:
                raise ValueError(f"status class {self.status} does not match code {self.code}")
        if not isinstance(self.lines, tuple) or not self.lines:
            raise ValueError("a reply needs a tuple of at least one line")
        for line in self.lines:
            if not isinstance(line, str) or not is_printable(line):
                raise ValueError(f"reply line is not printable ASCII: {line!r}")
            if len(self._encode_line(line, last=True)) > MAX_REPLY_LINE:
                raise ValueError(f"reply line longer than {MAX_REPLY_LINE} octets: {line[:40]!r}...")

    def _prefix(self, last: bool) -> str:
        return f"{self.code}{' ' if last else '-'}{self.status + ' ' if self.status else ''}"

    def _encode_line(self, line: str, last: bool) -> bytes:
        # An empty text leaves no separator behind: "250\r\n", not "250 \r\n".
        text = self._prefix(last) + line if line else self._prefix(last).rstrip(" ")
        return text.encode("ascii") + b"\r\n"

    def encode(self) -> bytes:
        """The reply as it goes on the wire; the status is repeated on every line."""
        last = len(self.lines) - 1
        return b"".join(self._encode_line(line, i == last) for i, line in enumerate(self.lines))

    def format(self, **fields: Any) -> Reply:
        """The reply with its template fields filled from printable-reduced ``fields``."""
        values = {name: printable(str(value)) for name, value in fields.items()}
        room = MAX_REPLY_LINE - len(self._prefix(last=True)) - 2
        lines = []
        for template in self.lines:
            line = template.format_map(values)
            if len(line) > room:
                line = line[:room - len(_ELLIPSIS)] + _ELLIPSIS
            lines.append(line)
        return self._derived(tuple(lines))

    def _derived(self, lines: tuple[str, ...]) -> Reply:
        """This reply with ``lines`` that are valid by construction, without re-checking.

        ``format`` fills a checked template with printable values and cuts the line to
        fit, so the result needs no second validation; replies are formatted for every
        command of every session, and the checks cost more than the formatting.
        """
        reply = object.__new__(Reply)
        object.__setattr__(reply, "code", self.code)
        object.__setattr__(reply, "status", self.status)
        object.__setattr__(reply, "lines", lines)
        return reply

    def with_lines(self, *lines: str) -> Reply:
        """The same code and status with other text; the lines must already be printable."""
        return replace(self, lines=tuple(lines))

    @property
    def fields(self) -> frozenset[str]:
        """Names of the template fields that :meth:`format` fills."""
        return frozenset(name for line in self.lines for _, name, _, _ in Formatter().parse(line)
                         if name)

    @property
    def positive(self) -> bool:
        """2xx or 3xx: the command was accepted (3xx: send more)."""
        return self.code < 400

    @property
    def transient(self) -> bool:
        """4xx: a temporary failure; the client may try again later."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """5xx: a permanent failure; the client must not repeat the same command."""
        return self.code >= 500


def _r(code: int, status: str | None, *lines: str) -> Reply:
    return Reply(code, status, lines)


def reply_from_line(line: str) -> Reply:
    """``"550 5.7.1 text"`` (or without the enhanced status) as a :class:`Reply`; the text
    made printable. ValueError when it is no reply line (a code 200..599 first)."""
    code_text, _, rest = line.strip().partition(" ")
    if not (len(code_text) == 3 and code_text.isdigit()):
        raise ValueError(f"not a reply line: {line[:40]!r}")
    status, _, text = rest.partition(" ")
    if not _STATUS.fullmatch(status):
        status, text = None, rest
    return Reply(int(code_text), status, (printable(text)[:MAX_REPLY_LINE - 20],))


class R:
    """The catalogue of server replies. Codes and enhanced codes are fixed; texts are ours."""

    # Session
    GREETING = _r(220, None, "{hostname} ESMTP meta1")
    HELO = _r(250, None, "{hostname}")
    OK = _r(250, "2.0.0", "OK")
    RESET = _r(250, "2.0.0", "Reset state")
    BYE = _r(221, "2.0.0", "{hostname} closing connection")
    HELP = _r(214, "2.0.0",
              "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET",
              "Commands: NOOP QUIT HELP VRFY STARTTLS AUTH",
              "For the protocol see RFC 5321")
    VRFY = _r(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    # Transaction
    SENDER_OK = _r(250, "2.1.0", "Sender <{address}> OK")
    RECIPIENT_OK = _r(250, "2.1.5", "Recipient <{address}> OK")
    START_DATA = _r(354, None, "End data with <CR><LF>.<CR><LF>")
    ACCEPTED = _r(250, "2.0.0", "{id} accepted")
    CHUNK_OK = _r(250, "2.0.0", "{size} octets received")

    # Command order (RFC 5321 §4.1.4)
    BAD_SEQUENCE = _r(503, "5.5.1", "Bad sequence of commands")
    NEED_HELO = _r(503, "5.5.1", "Send HELO or EHLO first")
    NEED_MAIL = _r(503, "5.5.1", "Need MAIL command")
    NEED_RCPT = _r(503, "5.5.1", "Need RCPT command")
    NESTED_MAIL = _r(503, "5.5.1", "Sender already specified")
    NO_VALID_RECIPIENTS = _r(554, "5.5.1", "No valid recipients")
    BDAT_MIX = _r(503, "5.5.1", "DATA and BDAT cannot be mixed")
    NO_SERVICE = _r(503, "5.5.1", "No SMTP service here; send QUIT")   # RFC 5321 §3.1

    # Command syntax and framing
    UNKNOWN_COMMAND = _r(500, "5.5.1", "Command unrecognized")
    NOT_IMPLEMENTED = _r(502, "5.5.1", "Command not implemented")
    LINE_TOO_LONG = _r(500, "5.5.2", "Line too long")
    BARE_LF = _r(500, "5.5.2", "Bare LF in command line; closing connection")
    BARE_CR = _r(500, "5.5.2", "Bare CR in command line")
    BAD_COMMAND_BYTES = _r(500, "5.5.2", "NUL or invalid UTF-8 in command line")
    SYNTAX = _r(501, "5.5.2", "Syntax error")
    NO_PARAMETERS = _r(501, "5.5.4", "No parameters allowed")
    HELO_SYNTAX = _r(501, "5.5.4", "HELO/EHLO needs a domain or address literal")
    BDAT_SYNTAX = _r(501, "5.5.4", "Syntax: BDAT size [LAST]")

    # Addresses and ESMTP parameters
    BAD_SENDER = _r(501, "5.1.7", "Bad sender address syntax")
    BAD_RECIPIENT = _r(501, "5.1.3", "Bad recipient address syntax")
    PARAM_UNKNOWN = _r(555, "5.5.4", "Unsupported parameter {name}")
    PARAM_INVALID = _r(501, "5.5.4", "Invalid value for {name}")
    PARAM_DUPLICATE = _r(501, "5.5.4", "Duplicate parameter {name}")
    SMTPUTF8_REQUIRED = _r(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")

    # Limits and resources
    SIZE_EXCEEDED = _r(552, "5.3.4", "Message size exceeds fixed limit")
    TOO_MANY_RECIPIENTS = _r(452, "4.5.3", "Too many recipients")
    INSUFFICIENT_STORAGE = _r(452, "4.3.1", "Insufficient system storage")
    QUEUE_ERROR = _r(451, "4.3.0", "Queue write error; try again later")

    # Message content
    BARE_LINE_ENDING = _r(550, "5.5.2", "Message contains a bare CR or LF")
    DATA_LINE_TOO_LONG = _r(550, "5.6.0", "Message line longer than {limit} octets")
    HEADER_NUL = _r(554, "5.6.0", "NUL in message header")
    TOO_MANY_HOPS = _r(554, "5.4.0", "Too many hops ({count} Received headers)")

    # Closing the session
    TIMEOUT = _r(421, "4.4.2", "{hostname} timeout; closing connection")
    TOO_MANY_ERRORS = _r(421, "4.7.0", "Too many errors; closing connection")
    TOO_MANY_JUNK = _r(421, "4.7.0", "Too many unrecognized commands; closing connection")
    SHUTDOWN = _r(421, "4.3.2", "{hostname} shutting down")
    LOCAL_ERROR = _r(421, "4.3.0", "{hostname} local error; try again later")
    TOO_MANY_SESSIONS = _r(421, "4.3.2", "{hostname} too many sessions; try again later")

    # Extensions not offered
    AUTH_UNAVAILABLE = _r(502, "5.5.1", "AUTH not available")

    # Policy (meta1/policy, spec/policy.md): access map, relaying, local users, DNSBL,
    # greylisting, connection limits
    CLIENT_REFUSED = _r(554, "5.7.1", "{hostname} access denied")
    CLIENT_TEMPFAIL = _r(421, "4.7.0", "{hostname} access temporarily denied; closing connection")
    SESSION_REFUSED = _r(503, "5.7.1", "Access denied; only QUIT is accepted")
    ACCESS_DENIED = _r(550, "5.7.1", "Access denied")
    ACCESS_TEMPFAIL = _r(450, "4.7.1", "Access temporarily denied; try again later")
    MAP_TEMPFAIL = _r(451, "4.3.0", "Temporary lookup failure; try again later")
    RELAY_DENIED = _r(550, "5.7.1", "<{address}>: relaying denied")
    PROTECTED_RECIPIENT = _r(550, "5.7.1", "<{address}>: recipient not accepted from this client")
    UNKNOWN_USER = _r(550, "5.1.1", "<{address}>: unknown user")
    ALIAS_LOOP = _r(550, "5.4.6", "<{address}>: alias loop or expansion too deep")
    ALIAS_TARGET_REFUSED = _r(550, "5.7.1", "<{address}>: delivery to files and programs is not allowed")
    DNSBL_LISTED = _r(554, "5.7.1", "Client {address} is listed at {name}")
    GREYLISTED = _r(450, "4.7.1", "Greylisted; try again later")
    TOO_MANY_CONNECTIONS = _r(421, "4.7.0", "{hostname} too many connections from {address}; try again later")
    CONNECTION_RATE = _r(421, "4.7.0", "{hostname} too many connections per minute from {address}; try again later")

    # LMTP (meta1 lmtpd, RFC 2033); the other replies lmtpd sends are the ones above
    LMTP_GREETING = _r(220, None, "{hostname} LMTP meta1")
    NOT_LMTP = _r(500, "5.5.1", "This is an LMTP server: say LHLO (RFC 2033 4.1)")
    LHLO_SYNTAX = _r(501, "5.5.4", "LHLO needs a domain or address literal")
    NO_SUCH_MAILBOX = _r(550, "5.1.1", "<{address}>: no such mailbox")
    DELIVERED = _r(250, "2.0.0", "<{address}> delivered")
    MAILBOX_WRITE_ERROR = _r(451, "4.3.0", "<{address}> mailbox write error; try again later")


def catalogue() -> dict[str, Reply]:
    """Every reply of :class:`R` by its name, in definition order."""
    return {name: value for name, value in vars(R).items() if isinstance(value, Reply)}
