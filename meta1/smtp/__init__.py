"""The SMTP vocabulary: replies, addresses, ESMTP parameters, framing. No I/O.

The pieces every SMTP speaker of meta1 shares -- the smtps and lmtpd session machines,
smtpc -- and nothing that depends on a socket, a file, the clock or the configuration:

* :mod:`meta1.smtp.replies` -- :class:`Reply` and the catalogue :class:`R`;
* :mod:`meta1.smtp.text` -- printable reduction of untrusted text, RFC 5322 dates;
* :mod:`meta1.smtp.address` -- reverse and forward paths (RFC 5321 §4.1.2, RFC 6531);
* :mod:`meta1.smtp.params` -- MAIL/RCPT arguments and their ESMTP parameters, xtext;
* :mod:`meta1.smtp.framing` -- command lines, DATA dot-unstuffing, content checks;
* :mod:`meta1.smtp.server` -- the effects and engine of a server session (smtps, lmtpd).

spec/smtp.md describes the rules and the decisions (D-SMTP-n) these modules implement.
"""

from __future__ import annotations

from meta1.smtp.address import (AddressError, Mailbox, Path, SMTPError, parse_forward_path,
                                parse_reverse_path)
from meta1.smtp.framing import (BareLF, CommandLine, ContentScanner, DataDecoder, LineFramer,
                                LineTooLong)
from meta1.smtp.params import (Extensions, MailArgs, ParamError, RcptArgs, parse_mail,
                               parse_rcpt, xtext_decode, xtext_encode)
from meta1.smtp.replies import MAX_REPLY_LINE, R, Reply, catalogue, reply_from_line
from meta1.smtp.text import comment_safe, format_date, is_printable, printable

__all__ = [
    "AddressError", "BareLF", "CommandLine", "ContentScanner", "DataDecoder", "Extensions",
    "LineFramer", "LineTooLong", "MAX_REPLY_LINE", "MailArgs", "Mailbox", "ParamError", "Path",
    "R", "RcptArgs", "Reply", "SMTPError", "catalogue", "comment_safe", "format_date",
    "is_printable", "parse_forward_path", "parse_mail", "parse_rcpt", "parse_reverse_path",
    "printable", "reply_from_line", "xtext_decode", "xtext_encode",
]
