"""Arguments of MAIL and RCPT: the path and the ESMTP parameters after it.

Responsibilities
    ``parse_mail("FROM:<a@b> SIZE=10", ext)`` and ``parse_rcpt("TO:<x@y> NOTIFY=NEVER",
    ext, smtputf8=...)`` split a command's argument into its path and its parameters
    (RFC 5321 §4.1.1.2-3, §4.1.2 ``Mail-parameters``/``Rcpt-parameters``), check every
    parameter against what the server advertised (:class:`Extensions`) and return
    immutable :class:`MailArgs`/:class:`RcptArgs`, or raise an :class:`SMTPError` whose
    ``reply`` is the answer. ``xtext_decode``/``xtext_encode`` implement RFC 3461 §4.

Parameters understood (keyword: extension that must have been advertised)
    ======== ============ ==================================================== =========
    keyword  extension    value                                                RFC
    ======== ============ ==================================================== =========
    SIZE     size         1..20 ASCII digits                                   1870 §6
    BODY     eightbitmime 7BIT or 8BITMIME (BINARYMIME is not offered)        6152 §3
    SMTPUTF8 smtputf8     none                                                 6531 §3.4
    RET      dsn          FULL or HDRS                                         3461 §4.3
    ENVID    dsn          xtext, at most 100 characters                        3461 §4.4
    AUTH     auth         xtext mailbox or "<>"                                4954 §5
    NOTIFY   dsn          NEVER, or a list of SUCCESS, FAILURE, DELAY (RCPT)   3461 §4.1
    ORCPT    dsn          addr-type ";" xtext, at most 500 characters (RCPT)   3461 §4.2
    ======== ============ ==================================================== =========

Errors, in the order they are looked for
    no ``FROM:``/``TO:`` → 501 5.5.2 ``SYNTAX``; no path in angle brackets, or garbage
    glued to its ``>`` → the path's error (501 5.1.7 / 5.1.3); a parameter that is not
    ``keyword[=value]`` → ``SYNTAX``; an unknown or unadvertised keyword → 555 5.5.4
    ``PARAM_UNKNOWN``; a keyword given twice → 501 5.5.4 ``PARAM_DUPLICATE``; a bad or
    missing value → 501 5.5.4 ``PARAM_INVALID``; then the path itself (after the
    parameters, because MAIL's SMTPUTF8 decides whether a UTF-8 reverse path is legal).

Security strategy
    Decoded xtext never contains a control character (CR, LF, NUL, ...) or invalid UTF-8:
    Exim's CVE-2020-28021 (``AUTH=``) and CVE-2020-28026 (``ORCPT=``) wrote decoded
    newlines into spool files (reliability S5, T19). Every loop is bounded by the command
    line, every value by its RFC limit, and parsing stops at the first error, so a
    hostile argument costs at most one pass over at most one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from meta1.smtp.address import (AddressError, Path, SMTPError, parse_forward_path,
                                parse_reverse_path)
from meta1.smtp.replies import R, Reply
from meta1.smtp.text import is_printable

MAX_ENVID = 100  # characters of the xtext value (RFC 3461 §4.4)
MAX_ORCPT = 500  # characters of the whole value "addr-type;xtext" (RFC 3461 §4.2)

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*", re.ASCII)   # esmtp-keyword
_SIZE = re.compile(r"[0-9]{1,20}", re.ASCII)                     # size-value, RFC 1870
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*", re.ASCII)  # RFC 3461 §4: xchar / hexchar
# RFC 822 atom: any CHAR except specials, SPACE and CTLs.
_ATOM = re.compile(r"[!#$%&'*+\-/0-9=?A-Z^_`a-z{|}~]+", re.ASCII)
_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")


class ParamError(SMTPError):
    """An ESMTP parameter is refused."""


@dataclass(frozen=True)
class Extensions:
    """The extensions the server advertised in its EHLO reply. A parameter belonging to
    an extension that was not advertised is unknown (555 5.5.4)."""

    size: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    dsn: bool = True
    auth: bool = False


@dataclass(frozen=True)
class MailArgs:
    path: Path
    size: int | None = None
    body: str | None = None      # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None       # "FULL" or "HDRS"
    envid: str | None = None     # xtext-decoded
    auth: str | None = None      # xtext-decoded; "<>" kept as "<>"


@dataclass(frozen=True)
class RcptArgs:
    path: Path
    notify: tuple[str, ...] | None = None   # ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY
    orcpt: tuple[str, str] | None = None    # (addr-type upper-cased, decoded address)


# --- xtext (RFC 3461 §4) ---------------------------------------------------------------

def xtext_decode(text: str) -> str:
    """Decode xtext; raise :class:`ParamError` on a malformed ``+XX`` (two upper-case hex
    digits), a character outside xchar, invalid UTF-8, or any control character (CR,
    LF, NUL, ...) in the result."""
    if not _XTEXT.fullmatch(text):
        raise ParamError(R.PARAM_INVALID.format(name="xtext"), f"malformed xtext: {text!r}")
    head, *escaped = text.split("+")
    octets = bytearray(head.encode("ascii"))
    for part in escaped:
        octets.append(int(part[:2], 16))
        octets += part[2:].encode("ascii")
    try:
        decoded = octets.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError(R.PARAM_INVALID.format(name="xtext"),
                         f"xtext is not UTF-8: {text!r}") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in decoded):
        raise ParamError(R.PARAM_INVALID.format(name="xtext"),
                         f"control character in decoded xtext: {text!r}")
    return decoded


def xtext_encode(text: str) -> str:
    """Encode ``text`` (as UTF-8) into xtext: every octet outside ``!``..``~`` and the
    octets ``+`` and ``=`` become ``+XX``."""
    return "".join(chr(o) if 0x21 <= o <= 0x7E and o not in (0x2B, 0x3D) else f"+{o:02X}"
                   for o in text.encode("utf-8"))


# --- parameter values ------------------------------------------------------------------

class _BadValue(Exception):
    """Internal: the value of a known parameter is refused."""


def _needs_value(value: str | None) -> str:
    if value is None:
        raise _BadValue("value required")
    return value


def _one_of(*choices: str) -> Callable[[str | None], str]:
    def convert(value: str | None) -> str:
        word = _needs_value(value).upper()
        if word not in choices:
            raise _BadValue(f"not one of {choices}")
        return word
    return convert


def _size(value: str | None) -> int:
    if not _SIZE.fullmatch(_needs_value(value)):
        raise _BadValue("SIZE needs 1 to 20 digits")
    return int(value)


def _flag(value: str | None) -> bool:
    if value is not None:
        raise _BadValue("no value allowed")
    return True


def _decoded(value: str) -> str:
    try:
        return xtext_decode(value)
    except ParamError as exc:
        raise _BadValue(exc.detail) from None


def _envid(value: str | None) -> str:
    if len(_needs_value(value)) > MAX_ENVID:
        raise _BadValue(f"ENVID longer than {MAX_ENVID} characters")
    decoded = _decoded(value)
    if not decoded or not is_printable(decoded):  # RFC 3461 §4.4: printable US-ASCII
        raise _BadValue("ENVID must be printable US-ASCII")
    return decoded


def _auth(value: str | None) -> str:
    decoded = _decoded(_needs_value(value))
    if not decoded:
        raise _BadValue("empty AUTH identity")
    return decoded


def _notify(value: str | None) -> tuple[str, ...]:
    words = [word.upper() for word in _needs_value(value).split(",")]
    if words == ["NEVER"]:
        return ("NEVER",)
    if len(set(words)) != len(words) or not set(words) <= set(_NOTIFY_ORDER):
        raise _BadValue("NOTIFY is NEVER or distinct SUCCESS, FAILURE, DELAY")
    return tuple(word for word in _NOTIFY_ORDER if word in words)


def _orcpt(value: str | None) -> tuple[str, str]:
    if len(_needs_value(value)) > MAX_ORCPT:
        raise _BadValue(f"ORCPT longer than {MAX_ORCPT} characters")
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ATOM.fullmatch(addr_type):
        raise _BadValue("ORCPT is addr-type;xtext")
    decoded = _decoded(address)
    if not decoded:
        raise _BadValue("empty ORCPT address")
    return addr_type.upper(), decoded


@dataclass(frozen=True)
class _Param:
    field: str                                  # attribute of MailArgs/RcptArgs
    extension: str                              # attribute of Extensions
    convert: Callable[[str | None], Any]


_MAIL_PARAMS = {
    "SIZE": _Param("size", "size", _size),
    "BODY": _Param("body", "eightbitmime", _one_of("7BIT", "8BITMIME")),
    "SMTPUTF8": _Param("smtputf8", "smtputf8", _flag),
    "RET": _Param("ret", "dsn", _one_of("FULL", "HDRS")),
    "ENVID": _Param("envid", "dsn", _envid),
    "AUTH": _Param("auth", "auth", _auth),
}
_RCPT_PARAMS = {
    "NOTIFY": _Param("notify", "dsn", _notify),
    "ORCPT": _Param("orcpt", "dsn", _orcpt),
}


def _is_esmtp_value(value: str) -> bool:
    # esmtp-value = 1*(%d33-60 / %d62-126), =/ UTF8-non-ascii (RFC 6531 §3.3)
    return bool(value) and "=" not in value and all(
        "!" <= c <= "~" or ord(c) > 0x9F and c.isprintable() for c in value)


def _parse_params(text: str, table: dict[str, _Param], ext: Extensions) -> dict[str, Any]:
    """Field values of the SP-separated ``keyword[=value]`` list in ``text``."""
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for token in text.split(" "):
        if not token:  # runs of spaces and trailing spaces are tolerated (D-SMTP-2)
            continue
        keyword, equals, value = token.partition("=")
        if not _KEYWORD.fullmatch(keyword):
            raise ParamError(R.SYNTAX, f"malformed parameter: {token!r}")
        name = keyword.upper()
        param = table.get(name)
        if param is None or not getattr(ext, param.extension):
            raise ParamError(R.PARAM_UNKNOWN.format(name=keyword), f"unknown parameter {name}")
        if name in seen:
            raise ParamError(R.PARAM_DUPLICATE.format(name=name), f"{name} given twice")
        seen.add(name)
        try:
            if equals and not _is_esmtp_value(value):
                raise _BadValue("not an esmtp-value")
            fields[param.field] = param.convert(value if equals else None)
        except _BadValue as exc:
            raise ParamError(R.PARAM_INVALID.format(name=name), f"{name}: {exc}") from None
    return fields


# --- MAIL and RCPT ---------------------------------------------------------------------

def _path_end(text: str) -> int:
    """Index of the first ``>`` outside a quoted string, or -1."""
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ">":
            return i
    return -1


def _split(argument: str, prefix: str, bad_path: Reply) -> tuple[str, str]:
    """(path text, parameter text) of ``prefix <path> params``."""
    # The caller may or may not have removed the SP after the verb; both are fine.
    text = argument.lstrip(" ")
    if text[:len(prefix)].upper() != prefix:
        raise SMTPError(R.SYNTAX, f"{prefix} missing")
    text = text[len(prefix):].lstrip(" ")  # "MAIL FROM: <a@b>" is common (D-SMTP-1)
    end = _path_end(text)
    if not text.startswith("<") or end < 0:
        raise AddressError(bad_path, f"no path in angle brackets: {text!r}")
    path, params = text[:end + 1], text[end + 1:]
    if params and not params.startswith(" "):
        raise SMTPError(R.SYNTAX, f"garbage after the path: {params!r}")
    return path, params


def parse_mail(argument: str, ext: Extensions) -> MailArgs:
    """The argument of MAIL (everything after the verb, e.g. ``FROM:<a@b> SIZE=10``)."""
    path, params = _split(argument, "FROM:", R.BAD_SENDER)
    fields = _parse_params(params, _MAIL_PARAMS, ext)
    return MailArgs(parse_reverse_path(path, smtputf8=fields.get("smtputf8", False)), **fields)


def parse_rcpt(argument: str, ext: Extensions, *, smtputf8: bool) -> RcptArgs:
    """The argument of RCPT (``TO:<x@y> NOTIFY=NEVER``); ``smtputf8`` is whether the
    transaction's MAIL carried SMTPUTF8."""
    path, params = _split(argument, "TO:", R.BAD_RECIPIENT)
    fields = _parse_params(params, _RCPT_PARAMS, ext)
    return RcptArgs(parse_forward_path(path, smtputf8=smtputf8), **fields)
