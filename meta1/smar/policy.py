"""smar's policy service: the verdict on each PolicyCheck qmgr passes on from smtps.

Responsibilities
    Answer every :class:`~meta1.ipc.records.PolicyCheck` (client at connect, sender at
    MAIL, recipient at RCPT) with one :class:`~meta1.ipc.records.PolicyVerdict`, and
    forget a session at its "end". The decisions — the access map and its tags,
    ``delay_checks``, relaying, local users, aliases, DNSBL, greylisting — are the pure
    cores of :mod:`meta1.policy` (spec/policy.md), run here over smar's maps.

State of this version
    The policy cores are being wired: every check is answered "ok" until then.
"""

from __future__ import annotations

import logging

from meta1.ipc.records import PolicyCheck, PolicyVerdict
from meta1.runtime.link import RecordLink

log = logging.getLogger("meta1.smar")


class PolicyService:
    """See the module docstring."""

    def __init__(self, config):
        self.config = config

    def check(self, link: RecordLink, record: PolicyCheck) -> None:
        if record.stage == "end":
            return
        if not link.closed:
            link.send(PolicyVerdict(record.request_id, "ok", ""))
