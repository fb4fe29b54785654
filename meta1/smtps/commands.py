"""The smtps command table: which verbs exist and how each one is read.

Responsibilities
    Commands are data (DESIGN.md). Each :class:`Command` names its verb, the machine
    :class:`~meta1.smtps.states.Input` it becomes, whether it takes an argument, and the
    flags the session applies before the transition table sees it:

    ``argument``
        ``"none"`` — anything after the verb is ``501 5.5.4``; ``"required"`` — a
        missing argument is ``501``; ``"optional"``.
    ``junk``
        counts toward ``max_junk_commands`` (NOOP, RSET, VRFY, HELP and unknown verbs; the
        Postfix ``smtpd_junk_command_limit`` idea: commands that move no mail).
    ``group_end``
        RFC 2920 §3.1: the command may only be the last of a pipelined group (EHLO, DATA,
        VRFY, QUIT, NOOP, …). Kept as data for the client side and the spec; the server
        answers pipelined commands in order either way (RFC 2920 §3.2).

    The argument parsers live with the session (``_parse_<verb>``), next to the checks
    that need session state (limits, sizes, free space); the sequence rules live in the
    transition table. Verbs compare without case (RFC 5321 §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meta1.smtps.states import Input


@dataclass(frozen=True)
class Command:
    verb: str
    input: Input
    argument: Literal["none", "optional", "required"]
    junk: bool = False
    group_end: bool = False
    help: str = ""


COMMANDS: dict[str, Command] = {c.verb: c for c in (
    Command("HELO", Input.HELO, "required", group_end=True, help="HELO domain"),
    Command("EHLO", Input.EHLO, "required", group_end=True, help="EHLO domain"),
    Command("MAIL", Input.MAIL, "required", help="MAIL FROM:<reverse-path> [parameters]"),
    Command("RCPT", Input.RCPT, "required", help="RCPT TO:<forward-path> [parameters]"),
    Command("DATA", Input.DATA, "none", group_end=True, help="DATA"),
    Command("BDAT", Input.BDAT, "required", help="BDAT size [LAST]"),
    Command("RSET", Input.RSET, "none", junk=True, help="RSET"),
    Command("NOOP", Input.NOOP, "optional", junk=True, group_end=True, help="NOOP"),
    Command("QUIT", Input.QUIT, "none", group_end=True, help="QUIT"),
    Command("VRFY", Input.VRFY, "required", junk=True, group_end=True, help="VRFY string"),
    Command("HELP", Input.HELP, "optional", junk=True, group_end=True, help="HELP"),
    Command("STARTTLS", Input.STARTTLS, "none", group_end=True, help="STARTTLS"),
    Command("AUTH", Input.AUTH, "required", group_end=True, help="AUTH mechanism [initial-response]"),
)}


def split_command(line: str) -> tuple[str, str | None]:
    """``"MAIL FROM:<a@b>"`` → ``("MAIL", "FROM:<a@b>")``; the verb upper-cased.

    The verb ends at the first space (RFC 5321 §4.1.1: ``verb SP argument``); an empty
    argument after the space counts as no argument.
    """
    verb, sep, argument = line.partition(" ")
    return verb.upper(), (argument if sep and argument != "" else None)
