"""qmgr passes policy checks on: smtps asks, smar decides, qmgr carries both ways.

Responsibilities
    smtps talks only to qmgr and qmgr to smar (DESIGN.md). A :class:`PolicyCheck` that
    arrives on an smtps link goes to smar with qmgr's own request id; the
    :class:`PolicyVerdict` that comes back goes to the smtps link that asked, as it came
    (routes, session configuration) but with the request id smtps used. ``stage = "end"``
    (a session is over) is passed on and has no answer.

When smar cannot answer
    A check that cannot be sent (smar not connected) or whose answer cannot come (the
    link to smar is lost) is answered here with a temporary failure: ``421 4.3.0`` at
    connect (the session closes), ``451 4.3.0`` at MAIL and RCPT — never "ok", so that a
    policy outage never opens a relay (reliability S8) nor accepts mail for users it
    cannot check (B27).
"""

from __future__ import annotations

import dataclasses
import logging

from meta1.ipc.records import PolicyCheck, PolicyVerdict
from meta1.runtime.link import RecordLink

log = logging.getLogger("meta1.qmgr")

UNAVAILABLE_AT_CONNECT = "421 4.3.0 policy service not available; try again later"
UNAVAILABLE = "451 4.3.0 policy service not available; try again later"


def unavailable(stage: str) -> tuple[str, str]:
    """(outcome, reply) of a check nobody could decide."""
    return ("close", UNAVAILABLE_AT_CONNECT) if stage == "connect" else ("refused", UNAVAILABLE)


class PolicyRelay:
    """See the module docstring. ``smar`` is the LinkClient to smar."""

    def __init__(self, smar):
        self.smar = smar
        self.pending: dict[int, tuple[RecordLink, PolicyCheck]] = {}
        self._ids = iter(range(1, 1 << 62))

    def check(self, link: RecordLink, record: PolicyCheck) -> None:
        """From smtps."""
        if record.stage == "end":
            if self.smar.ready:
                self.smar.send(record)
            return
        if not self.smar.ready:
            self._answer(link, record, *unavailable(record.stage))
            return
        request_id = next(self._ids)
        self.pending[request_id] = (link, record)
        self.smar.send(dataclasses.replace(record, request_id=request_id))

    def verdict(self, record: PolicyVerdict) -> None:
        """From smar."""
        entry = self.pending.pop(record.request_id, None)
        if entry is None:
            log.error("smar answered policy check %d, which was not asked", record.request_id)
            return
        link, check = entry
        if not link.closed:
            link.send(dataclasses.replace(record, request_id=check.request_id))

    def smar_lost(self) -> None:
        pending, self.pending = self.pending, {}
        for link, check in pending.values():
            self._answer(link, check, *unavailable(check.stage))

    def smtps_lost(self, link: RecordLink) -> None:
        for request_id in [r for r, (owner, _) in self.pending.items() if owner is link]:
            del self.pending[request_id]

    @staticmethod
    def _answer(link: RecordLink, check: PolicyCheck, outcome: str, reply: str) -> None:
        if not link.closed:
            link.send(PolicyVerdict(check.request_id, outcome, reply))
