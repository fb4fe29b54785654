"""Which mailbox a recipient's mail goes to, and what a delivery asks for. No I/O.

Responsibilities
    * :func:`mailbox_for` turns a recipient address into the name of its mailbox — the
      directory below ``mail_directory`` that holds its Maildir — or ``None`` when the
      address has no mailbox here (lmtpd then refuses the RCPT with ``550 5.1.1``).
    * :class:`DeliveryRequest` and :class:`Outcome` are the values that travel between
      the session (:mod:`meta1.lmtpd.session`), the daemon and the Maildir writer
      (:mod:`meta1.lmtpd.maildir`): what to store where, and what became of it.

Mailbox rules (spec/lmtpd.md, D-LMTPD-2)
    The mailbox is the local part of the address, lower-cased, with everything from the
    first ``+`` removed (``Alice+lists@host`` → ``alice``: the "detail" of sub-addressing,
    RFC 5233, goes to the same mailbox). The result must consist of ``a-z 0-9 . _ -``
    only, must not start with a dot, and must be 1 to 64 characters long (RFC 5321
    §4.5.3.1.1 limits a local part to 64 octets). ``postmaster`` is always valid
    (RFC 5321 §4.5.1), including the bare ``<Postmaster>`` that has no domain.

    The domain is not looked at: smtpc sends only the MTA's local recipients here
    (spec/delivery-path.md, D-DLV-6), and a mailbox name must never depend on it.

Why so narrow
    The name becomes a path component. Refusing everything but a small portable set
    excludes ``/``, ``..``, a leading dot (hidden files, ``.`` and ``..``), control and
    8-bit characters, and letter-case twins (``Alice`` and ``alice`` are one mailbox,
    as RFC 5321 §2.4 lets a host decide), so no address can name a file outside its
    Maildir or two Maildirs that a case-insensitive file system would merge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meta1.smtp.address import MAX_LOCAL_PART

#: The one mailbox every mail system must have (RFC 5321 §4.5.1).
POSTMASTER = "postmaster"
_MAILBOX = re.compile(r"[a-z0-9_-][a-z0-9._-]*", re.ASCII)
_DETAIL_SEPARATOR = "+"


def mailbox_for(local_part: str) -> str | None:
    """The mailbox name of a recipient with ``local_part``, or None if it has none.

    ``local_part`` is the decoded local part (quotes removed), as
    :class:`meta1.smtp.address.Mailbox` holds it.
    """
    if not local_part.isascii():
        # Checked before lower-casing: str.lower() maps some non-ASCII letters to ASCII
        # ones (KELVIN SIGN U+212A becomes "k"), which would make a second spelling of a
        # mailbox.
        return None
    name = local_part.lower().partition(_DETAIL_SEPARATOR)[0]
    if name == POSTMASTER:
        return name
    if len(name) > MAX_LOCAL_PART or _MAILBOX.fullmatch(name) is None:
        return None
    return name


@dataclass(frozen=True)
class LocalRecipient:
    """An accepted recipient: its address as written in RCPT and its mailbox name."""

    address: str
    mailbox: str


@dataclass(frozen=True)
class DeliveryRequest:
    """One message for one or more mailboxes.

    ``content`` is the message exactly as received, dot-unstuffed, with its CRLF line
    ends; ``sender`` is the reverse path without brackets (``""`` for ``<>``);
    ``utf8``: the sender declared SMTPUTF8, so addresses may carry UTF-8 (RFC 6531).
    """

    sender: str
    recipients: tuple[LocalRecipient, ...]
    content: bytes
    utf8: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one recipient: ``durable`` — the message is in ``new/`` and synced;
    ``where`` is the file's path then, else the reason it is not."""

    durable: bool
    where: str
