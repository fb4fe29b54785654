"""Server replies as a client reads them: strict, bounded, never out of step.

Responsibilities
    :class:`ReplyParser` turns the bytes an SMTP or LMTP server sends into
    :class:`~meta1.smtp.replies.Reply` values, one per command the client is waiting
    for. It is the client half of RFC 5321 §4.2::

        Reply-line = *( Reply-code "-" [ textstring ] CRLF )
                        Reply-code [ SP textstring ] CRLF
        Reply-code = %x32-35 %x30-35 %x30-39

    and splits off the RFC 3463 enhanced status code that RFC 2034 puts at the start of
    every line's text (``250-2.1.5 ok``), when one is there and its class matches the
    reply code.

What is a protocol error (:class:`ReplyError`, sticky: the parser says nothing else
afterwards)
    * a line that does not start with three digits of the grammar (first digit 2..5,
      second 0..5), or whose fourth octet is neither SP, ``-`` nor the end of the line;
    * a multi-line reply whose lines do not all carry the same code (reliability table,
      "Client-side reply parsing": OpenSMTPD's CVE-2020-8794 began with a parser that
      trusted mixed replies);
    * a line longer than ``max_line_length`` octets with its CRLF (RFC 5321 §4.5.3.1.5:
      512), detected as soon as that many octets without an LF are buffered, so a
      server that never ends a line costs bounded memory;
    * a reply of more than ``max_lines`` lines;
    * an LF not preceded by CR, a CR inside a line, or any other control character than
      HT (RFC 5321 §2.3.8 and the ``textstring`` rule);
    * **unsolicited data**: any octet that arrives while the caller waits for no reply.
      The caller says how many replies it still awaits on every :meth:`ReplyParser.pop`;
      a reply beyond that number is never returned, because it would be taken as the
      answer to the next command (a pipelining client would then attribute a 250 to a
      RCPT the server never accepted — the "response injection" class of CVE-2021-38371).

What is tolerated (D-SMTPC-3 in spec/smtpc.md)
    * an empty text, with or without the SP (``250``, ``250 ``, ``250-``): smtp-sink ends
      its EHLO reply with ``250 ``;
    * 8-bit octets in the text (RFC 6531 servers may send UTF-8): they are reduced to
      ``?`` like every other untrusted text that reaches a log or a DSN (reliability S9);
      HT becomes a space. The code and the structure are never guessed.

Strategy
    Bytes are buffered until a line is complete; lines of the reply in progress are
    kept as parsed (code, text) pairs, so a reply costs at most ``max_lines`` ×
    ``max_line_length`` octets. A complete reply is a frozen ``Reply``: the same value
    type the server side sends, so results, logs and DSNs speak one vocabulary.
"""

from __future__ import annotations

import re

from meta1.smtp.replies import MAX_REPLY_LINE, Reply
from meta1.smtp.text import printable

#: A reply of more lines than this is refused. Real EHLO replies have about 15.
MAX_REPLY_LINES = 100

_LINE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_PREFIX = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)", re.ASCII)


class ReplyError(Exception):
    """The server broke the reply syntax, a limit, or spoke out of turn."""


class ReplyParser:
    """Bytes from the server in, complete replies out; see the module documentation."""

    def __init__(self, max_line_length: int = MAX_REPLY_LINE, max_lines: int = MAX_REPLY_LINES):
        if max_line_length < 6 or max_lines < 1:
            raise ValueError("a reply line needs at least 6 octets and a reply one line")
        self.max_line_length = max_line_length
        self.max_lines = max_lines
        self._buffer = bytearray()
        self._lines: list[tuple[int, str]] = []   # lines of the reply in progress
        self.error: ReplyError | None = None

    @property
    def buffered(self) -> int:
        """Octets received and not yet part of a returned reply."""
        return len(self._buffer) + sum(len(text) + 6 for _, text in self._lines)

    def feed(self, data: bytes) -> None:
        """Buffer ``data``; replies come out of :meth:`pop`."""
        if self.error is None:
            self._buffer += data

    def pop(self, awaited: int) -> Reply | None:
        """The next complete reply, or None when more bytes are needed.

        ``awaited`` is the number of replies the caller still waits for (commands sent
        and not yet answered). With ``awaited == 0`` any buffered octet is unsolicited.
        Raises :class:`ReplyError` on every call once an error was found.
        """
        if self.error is not None:
            raise self.error
        if awaited <= 0:
            if self._buffer or self._lines:
                self._fail(f"unsolicited data from the server: {bytes(self._buffer[:40])!r}")
            return None
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= self.max_line_length:
                    self._fail(f"reply line longer than {self.max_line_length} octets")
                return None
            if end + 1 > self.max_line_length:
                self._fail(f"reply line longer than {self.max_line_length} octets")
            if end == 0 or self._buffer[end - 1] != 0x0D:
                self._fail("reply line not ended by CRLF")
            line = bytes(self._buffer[:end - 1])
            del self._buffer[:end + 1]
            reply = self._line(line)
            if reply is not None:
                return reply

    def _line(self, line: bytes) -> Reply | None:
        match = _LINE.fullmatch(line)
        if match is None:
            self._fail(f"malformed reply line: {line[:40]!r}")
        if _CONTROL.search(line):
            self._fail(f"control character in reply line: {line[:40]!r}")
        code = int(match.group(1))
        if self._lines and self._lines[0][0] != code:
            self._fail(f"multi-line reply changes its code from {self._lines[0][0]} to {code}")
        if len(self._lines) >= self.max_lines:
            self._fail(f"reply longer than {self.max_lines} lines")
        text = printable((match.group(3) or b"").decode("latin-1").replace("\t", " "))
        self._lines.append((code, text))
        if match.group(2) == b"-":
            return None
        lines, self._lines = self._lines, []
        return _reply(code, [text for _, text in lines])

    def _fail(self, why: str) -> None:
        self.error = ReplyError(why)
        self._buffer.clear()
        self._lines.clear()
        raise self.error


def _reply(code: int, texts: list[str]) -> Reply:
    """The Reply of ``code`` and the line ``texts``, with its enhanced status split off.

    The status is taken from the first line when it is of the code's class; it is then
    removed from every line that starts with it (RFC 2034 §3 repeats it on each line).
    """
    status = None
    found = _STATUS_PREFIX.match(texts[0])
    if found and int(found.group(1)[0]) == code // 100:
        status = found.group(1)
        texts = [_without_status(text, status) for text in texts]
    # Text longer than a Reply may hold (a parser configured above 512 octets) is cut.
    room = MAX_REPLY_LINE - 2 - len(f"{code} {status} " if status else f"{code} ")
    return Reply(code, status, tuple(text[:room] for text in texts))


def _without_status(text: str, status: str) -> str:
    if text == status:
        return ""
    if text.startswith(status + " "):
        return text[len(status) + 1:]
    return text
