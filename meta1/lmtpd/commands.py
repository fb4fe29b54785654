"""The lmtpd command table: which verbs an LMTP session knows and how each is read.

Responsibilities
    Commands are data (DESIGN.md), in the shape smtps uses
    (:class:`meta1.smtps.commands.Command`: verb, machine input, argument rule); the
    sequence rules are the transition table in :mod:`meta1.lmtpd.states`, the argument
    parsers live with the session (``_parse_<verb>``).

    The verbs are RFC 2033's: ESMTP's minimum set (RFC 5321 §4.5.1: MAIL, RCPT, DATA,
    RSET, NOOP, QUIT, VRFY) with LHLO in place of EHLO and HELO (§4.1). HELO and EHLO
    are listed so that they are refused with a reply that says why (``500``, "say
    LHLO") instead of "command unrecognized". Anything else — HELP, BDAT, STARTTLS,
    AUTH — is an unknown command: lmtpd offers none of those extensions.
"""

from __future__ import annotations

from meta1.lmtpd.states import Input
from meta1.smtps.commands import Command, split_command

__all__ = ["COMMANDS", "Command", "split_command"]

COMMANDS: dict[str, Command] = {c.verb: c for c in (
    Command("LHLO", Input.LHLO, "required", group_end=True, help="LHLO domain"),
    Command("HELO", Input.HELO, "optional", group_end=True),
    Command("EHLO", Input.EHLO, "optional", group_end=True),
    Command("MAIL", Input.MAIL, "required", help="MAIL FROM:<reverse-path> [parameters]"),
    Command("RCPT", Input.RCPT, "required", help="RCPT TO:<forward-path>"),
    Command("DATA", Input.DATA, "none", group_end=True, help="DATA"),
    Command("RSET", Input.RSET, "none", help="RSET"),
    Command("NOOP", Input.NOOP, "optional", group_end=True, help="NOOP"),
    Command("VRFY", Input.VRFY, "required", group_end=True, help="VRFY string"),
    Command("QUIT", Input.QUIT, "none", group_end=True, help="QUIT"),
)}
