"""qmgr passes policy checks on: smtps asks, smar decides, qmgr carries both ways — and
admits each new session first when its configuration map limits connections.

Responsibilities
    smtps talks only to qmgr and qmgr to smar (DESIGN.md). A :class:`PolicyCheck` that
    arrives on an smtps link goes to smar with qmgr's own request id; the
    :class:`PolicyVerdict` that comes back goes to the smtps link that asked, as it came
    (routes, session configuration) but with the request id smtps used. ``stage = "end"``
    (a session is over) is passed on and has no answer.

Admission (``icm:``, ``icr:``; :mod:`meta1.qmgr.admission`, D-POL-22)
    With ``qmgr { config_map }`` every session's connect check comes here first, even when
    smtps decides the rest of the session itself (:func:`~meta1.policy.service.qmgr_admits`).
    A session over its client's limits is answered ``close`` with the ``421 4.7.0`` (a
    failed lookup: ``421 4.3.0``) and never reaches smar; an admitted one is counted and
    its check goes on to smar — or, when smar has nothing to check for sessions
    (:func:`~meta1.policy.service.asks_smar` is false), is answered ``ok`` here, and smtps
    runs its own checks. The session's ``end`` frees its slot; a lost smtps link frees
    every slot it held.

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
from meta1.policy.service import reply_line
from meta1.runtime.link import RecordLink

log = logging.getLogger("meta1.qmgr")

UNAVAILABLE_AT_CONNECT = "421 4.3.0 policy service not available; try again later"
UNAVAILABLE = "451 4.3.0 policy service not available; try again later"


def unavailable(stage: str) -> tuple[str, str]:
    """(outcome, reply) of a check nobody could decide."""
    return ("close", UNAVAILABLE_AT_CONNECT) if stage == "connect" else ("refused", UNAVAILABLE)


class PolicyRelay:
    """See the module docstring. ``smar`` is the LinkClient to smar; ``forwards``: smar
    has checks to run for sessions; ``admission``: the :class:`~meta1.qmgr.admission.Admission`
    of new sessions, None without a configuration map."""

    def __init__(self, smar, *, forwards: bool = True, admission=None):
        self.smar = smar
        self.forwards = forwards
        self.admission = admission
        self.pending: dict[int, tuple[RecordLink, PolicyCheck]] = {}
        self._ids = iter(range(1, 1 << 62))

    def check(self, link: RecordLink, record: PolicyCheck) -> None:
        """From smtps."""
        if record.stage == "end":
            if self.admission is not None:
                self.admission.ended(link, record.session_id)
            if self.forwards and self.smar.ready:
                self.smar.send(record)
            return
        if record.stage == "connect" and self.admission is not None:
            self.admission.admit(link, record.session_id, record.client_address,
                                 lambda refusal: self._admitted(link, record, refusal))
            return
        self._forward(link, record)

    def _admitted(self, link: RecordLink, record: PolicyCheck, refusal) -> None:
        if refusal is not None:
            self._answer(link, record, "close", reply_line(refusal))
        elif self.forwards:
            self._forward(link, record)
        else:
            self._answer(link, record, "ok", "")

    def _forward(self, link: RecordLink, record: PolicyCheck) -> None:
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
        if self.admission is not None:
            self.admission.owner_lost(link)

    @staticmethod
    def _answer(link: RecordLink, check: PolicyCheck, outcome: str, reply: str) -> None:
        if not link.closed:
            link.send(PolicyVerdict(check.request_id, outcome, reply))
