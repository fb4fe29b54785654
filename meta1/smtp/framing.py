"""Byte framing of an SMTP server session: command lines, DATA, and content checks.

Responsibilities
    * :class:`LineFramer` cuts the command stream into lines (RFC 5321 §2.3.8).
    * :class:`DataDecoder` finds the end of DATA and removes dot-stuffing (§4.1.1.4,
      §4.5.2).
    * :class:`ContentScanner` watches the unstuffed content of DATA or BDAT for what the
      server refuses at its end: too big, bare CR or LF, overlong lines, NUL in the
      header, too many Received headers.

All three are pure (bytes in, events or bytes out), keep bounded state, work in time
linear in their input and give the same result however the input is split into
segments; the tests check that for every split point.

Command lines (LineFramer)
    Only CRLF ends a line. A CR followed by anything but LF stays in the line and marks
    it ``bare_cr``; a CR at the end of the buffer waits for the next feed. An LF not
    preceded by CR yields :class:`BareLF`: the server answers and closes, because a
    client that frames with bare LF will also end DATA with ``<LF>.<LF>`` (SMTP
    smuggling, reliability §3.1) and no answer keeps such a session in step. BareLF is
    sticky: the framer yields nothing else afterwards.

    A line longer than ``max_length`` (counted with its CRLF; RFC 5321 §4.5.3.1.4 gives
    512) is read through to its real CRLF and reported once as :class:`LineTooLong`;
    none of its bytes is ever returned as a command. This is what Python's
    ``StreamReader.readline()`` gets wrong: it drops the buffer and later returns the
    tail of the line as a new command (reliability §3.2, T05, T06). While discarding,
    the framer keeps only a count, so a 10 MB line costs no memory.

    Lines are cut lazily by ``pop()``, so bytes after a line stay raw until asked for:
    ``take_rest()`` hands them over when the session switches to DATA, BDAT or TLS. The
    caller calls it right after popping the line that switches, before the next feed.
    When the unconsumed bytes are a single LF-less line that is already too long, the
    framer starts discarding at once (in ``feed()`` or ``pop()``), so a client that
    never sends LF cannot grow the buffer. The protocol for a caller: after each
    ``feed()``, ``pop()`` until it returns None (or the mode changes).

DATA (DataDecoder)
    The one and only terminator is CRLF "." CRLF, where the first CRLF belongs to the
    content; ".\\r\\n" as the very first line ends an empty message. After a CRLF, a "."
    followed by any other character is removed (dot-unstuffing). Everything else --
    ``\\n.\\n``, ``\\r.\\r``, ``\\r\\n.\\r``, ``\\r\\n.\\r\\r\\n``, ``\\r\\n\\x00.\\r\\n``,
    ``\\n.\\r\\n`` -- is content, kept byte for byte, and the scanner then rejects the
    message for its bare CR or LF (spec/smtp.md, "The smuggling catalogue"). The decoder
    holds back at most the two bytes ``.\\r`` that could still begin the terminator; it
    keeps them as a state, not as a buffer.

Content (ContentScanner)
    Counts and flags, never stores content. Lines are separated by LF for length
    purposes (a CR just before the LF is not counted); any CR not followed by LF or LF
    not preceded by CR is a bare line ending, including a CR that is the very last byte
    at ``finish()``. The header section is everything before the first empty line
    (CRLF CRLF, or CRLF at the very start); NUL there, and header fields named
    ``Received`` (case-insensitive, up to 16 blanks allowed before the colon as in
    RFC 5322's obsolete syntax), are counted. NUL in the body is accepted (D-SMTP-13).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from meta1.smtp.replies import R, Reply

CR, LF, DOT = 0x0D, 0x0A, 0x2E


# --- command lines ---------------------------------------------------------------------

@dataclass(frozen=True)
class CommandLine:
    """A command line without its CRLF; ``bare_cr`` when it contains a CR."""

    text: bytes
    bare_cr: bool


@dataclass(frozen=True)
class LineTooLong:
    """A line longer than the limit was read through; ``length`` counts its CRLF."""

    length: int


@dataclass(frozen=True)
class BareLF:
    """An LF not preceded by CR was seen in the command phase."""


class LineFramer:
    """CRLF-only command-line framing with a length limit; see the module documentation."""

    def __init__(self, max_length: int):
        if max_length < 2:
            raise ValueError("max_length counts the CRLF and must be at least 2")
        self.max_length = max_length
        self._buffer = bytearray()
        self._start = 0            # first unconsumed byte of _buffer
        self._scanned = 0          # bytes after _start known to contain no LF
        self._discarded = 0        # > 0: inside an overlong line, this many bytes dropped
        self._discarded_cr = False  # the last byte dropped was a CR
        # Items found by feed() while discarding, handed out by pop() before any line.
        self._pending: deque[LineTooLong] = deque()
        self._bare_lf = False

    @property
    def buffered(self) -> int:
        """Bytes held that no pop() has consumed yet."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> None:
        if self._bare_lf or not data:
            return
        if self._discarded:
            data = self._discard(data)
            if not data:
                return
        self._buffer += data
        self._check_partial_line()

    def _check_partial_line(self) -> None:
        """Start discarding when the unconsumed bytes are one LF-less, overlong line."""
        if self._buffer.find(b"\n", self._start + self._scanned) >= 0:
            return
        self._scanned = self.buffered
        if self.buffered >= self.max_length:  # even a CRLF right now would not fit
            self._discarded = self.buffered
            self._discarded_cr = self._buffer[-1] == CR
            self._reset_buffer()

    def _discard(self, data: bytes) -> bytes:
        """Drop bytes of an overlong line; return what follows its CRLF, if it ended."""
        if self._discarded_cr and data[0] == LF:
            index = 0
        else:
            index = data.find(b"\n")
            if index < 0:
                self._discarded += len(data)
                self._discarded_cr = data[-1] == CR
                return b""
            if index == 0 or data[index - 1] != CR:
                self._bare_lf = True
                return b""
        self._pending.append(LineTooLong(self._discarded + index + 1))
        self._discarded, self._discarded_cr = 0, False
        return data[index + 1:]

    def _reset_buffer(self) -> None:
        self._buffer = bytearray()
        self._start = self._scanned = 0

    def pop(self) -> CommandLine | LineTooLong | BareLF | None:
        """The next complete item, or None when more bytes are needed."""
        if self._pending:
            return self._pending.popleft()
        if self._bare_lf:
            return BareLF()
        if self._discarded:
            return None
        buffer, start = self._buffer, self._start
        index = buffer.find(b"\n", start + self._scanned)
        if index < 0:
            self._check_partial_line()
            return None
        if index == start or buffer[index - 1] != CR:
            self._bare_lf = True
            self._reset_buffer()
            return BareLF()
        length = index + 1 - start
        line = bytes(buffer[start:index - 1])
        self._consume(index + 1)
        if length > self.max_length:
            return LineTooLong(length)
        return CommandLine(line, b"\r" in line)

    def _consume(self, end: int) -> None:
        self._start, self._scanned = end, 0
        # Compact now and then, not per line: deleting a prefix copies the rest.
        if self._start > 4096 and self._start * 2 > len(self._buffer):
            del self._buffer[:self._start]
            self._start = 0

    def take_rest(self) -> bytes:
        """Remove and return every unconsumed byte, leaving the framer empty and at the
        start of a line (for the switch to DATA, BDAT or TLS)."""
        rest = bytes(self._buffer[self._start:])
        self._reset_buffer()
        self._discarded, self._discarded_cr = 0, False
        self._pending.clear()
        return rest


# --- DATA ------------------------------------------------------------------------------

class _Data:
    """States of the DATA decoder: where the next byte falls."""

    BOL = 0         # at the start of a line (after CRLF, or at the very start)
    DOT = 1         # a "." was the first byte of the line (held back)
    DOT_CR = 2      # ".\r" at the start of the line (held back)
    CR = 3          # inside a line, the last byte was a CR (already passed on)
    MID = 4         # inside a line


class DataDecoder:
    """DATA-phase decoder: dot-unstuffing and the one true terminator <CRLF>.<CRLF>."""

    def __init__(self) -> None:
        self._state = _Data.BOL
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        """The content decoded from ``data``; after the terminator, bytes go to ``rest``."""
        if self.done:
            self.rest += data
            return b""
        out = bytearray()
        state, i, n = self._state, 0, len(data)
        while i < n:
            if state == _Data.MID:
                # Only a dot at the start of a line needs attention: jump to the next.
                found = data.find(b"\r\n.", i)
                if found >= 0:
                    out += data[i:found + 2]
                    i, state = found + 3, _Data.DOT
                    continue
                out += data[i:]
                if data[n - 1] == CR:
                    state = _Data.CR
                elif data[n - 1] == LF and n - 2 >= i and data[n - 2] == CR:
                    state = _Data.BOL
                break
            byte = data[i]
            if state == _Data.BOL:
                if byte == DOT:
                    state, i = _Data.DOT, i + 1
                else:
                    state = _Data.MID
            elif state == _Data.DOT:
                # Dot-unstuffing: the dot goes; what follows is an ordinary line.
                if byte == CR:
                    state, i = _Data.DOT_CR, i + 1
                else:
                    state = _Data.MID
            elif state == _Data.DOT_CR:
                if byte == LF:
                    self.done, self.rest = True, bytes(data[i + 1:])
                    break
                out += b"\r"  # ".\r" and something else: an unstuffed line starting with CR
                state = _Data.CR
            else:  # _Data.CR: the CR was passed on; an LF now completes a CRLF
                if byte == LF:
                    out.append(LF)
                    state, i = _Data.BOL, i + 1
                else:
                    state = _Data.MID
        self._state = state
        return bytes(out)


# --- content checks --------------------------------------------------------------------

# "Received" at the start of a header line, RFC 5322 obs-optional blanks before ":".
_RECEIVED = re.compile(rb"\r\nreceived[ \t]{0,16}:", re.IGNORECASE)
_HEADER_END = b"\r\n\r\n"
_CARRY = 32  # > the longest _RECEIVED match (27) and _HEADER_END; see _scan_header


@dataclass(kw_only=True)
class ContentScanner:
    """Checks on unstuffed message content, for DATA and BDAT alike."""

    max_size: int
    max_line_length: int      # octets, CRLF not counted
    max_hops: int = 100       # the most Received headers accepted (RFC 5321 §6.3)
    size: int = field(default=0, init=False)
    too_big: bool = field(default=False, init=False)
    line_too_long: bool = field(default=False, init=False)
    bare_line_ending: bool = field(default=False, init=False)
    header_nul: bool = field(default=False, init=False)
    eight_bit: bool = field(default=False, init=False)
    hops: int = field(default=0, init=False)
    # The header section is scanned with the last _CARRY bytes of the previous chunk in
    # front, starting from a virtual CRLF so that the first line is a line like any other.
    _header_carry: bytes | None = field(default=b"\r\n", init=False, repr=False)
    _line_length: int = field(default=0, init=False, repr=False)  # of the unfinished line
    _last_cr: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_size < 0 or self.max_line_length < 1 or self.max_hops < 0:
            raise ValueError("limits must be positive")

    def feed(self, content: bytes) -> None:
        if not content:
            return
        self.size += len(content)
        if self.size > self.max_size:
            self.too_big = True  # the verdict is fixed; the rest need not be looked at
            return
        if not self.eight_bit and not content.isascii():
            self.eight_bit = True
        if not self.bare_line_ending:
            self._scan_line_endings(content)
        if not self.line_too_long:
            self._scan_line_lengths(content)
        if self._header_carry is not None:
            self._scan_header(content)
        self._last_cr = content[-1] == CR

    def _scan_line_endings(self, content: bytes) -> None:
        crlf = content.count(b"\r\n")
        joined = self._last_cr and content[0] == LF   # a CRLF split by the chunk boundary
        if self._last_cr and not joined:
            self.bare_line_ending = True               # the previous chunk's final CR
        trailing_cr = content[-1] == CR                # decided by the next byte, or finish()
        if (content.count(b"\r") - crlf - trailing_cr > 0
                or content.count(b"\n") - crlf - joined > 0):
            self.bare_line_ending = True

    def _scan_line_lengths(self, content: bytes) -> None:
        limit = self.max_line_length
        last_lf = content.rfind(b"\n")
        # Cheap bound first: no line finished in this chunk is longer than this.
        if last_lf >= 0 and self._line_length + last_lf > limit:
            lines = content[:last_lf].split(b"\n")
            # A CR just before the LF belongs to the line ending, not to the line.
            first_cr = lines[0].endswith(b"\r") if lines[0] else self._last_cr
            if self._line_length + len(lines[0]) - first_cr > limit or (
                    max(map(len, lines[1:]), default=0) > limit  # C-level pre-test
                    and any(len(line) - line.endswith(b"\r") > limit for line in lines[1:])):
                self.line_too_long = True
        if last_lf >= 0:
            self._line_length = len(content) - last_lf - 1
        else:
            self._line_length += len(content)
        # The unfinished line may already be too long, whatever follows; its final CR may
        # still turn out to be the CR of its CRLF.
        if self._line_length - (content[-1] == CR) > limit:
            self.line_too_long = True

    def _scan_header(self, content: bytes) -> None:
        carry = self._header_carry
        window = carry + content
        end = window.find(_HEADER_END)
        header_end = len(window) if end < 0 else end + 2  # the empty line is not header
        # Matches wholly inside the carry were counted with the previous chunk.
        self.hops += sum(1 for match in _RECEIVED.finditer(window, 0, header_end)
                         if match.end() > len(carry))
        if b"\x00" in content[:max(0, header_end - len(carry))]:
            self.header_nul = True
        self._header_carry = None if end >= 0 else window[-_CARRY:]

    def finish(self) -> Reply | None:
        """The verdict on the whole content, ``None`` when it is acceptable."""
        if self.too_big:
            return R.SIZE_EXCEEDED
        if self.bare_line_ending or self._last_cr:
            self.bare_line_ending = True
            return R.BARE_LINE_ENDING
        if self.line_too_long or self._line_length > self.max_line_length:
            self.line_too_long = True
            return R.DATA_LINE_TOO_LONG.format(limit=self.max_line_length)
        if self.header_nul:
            return R.HEADER_NUL
        if self.hops > self.max_hops:
            return R.TOO_MANY_HOPS.format(count=self.hops)
        return None
