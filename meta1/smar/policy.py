"""smar's policy service: the verdict on each PolicyCheck qmgr passes on from smtps.

Responsibilities
    Answer every :class:`~meta1.ipc.records.PolicyCheck` (client at connect, sender at
    MAIL, recipient at RCPT) with one :class:`~meta1.ipc.records.PolicyVerdict`, and
    forget a session at its "end". The decisions — the access map and its tags,
    ``delay_checks``, relaying, local users, aliases, DNSBL, greylisting, the
    ``smtps_session_conf:`` entry at connect, parsed here (D-POL-26) — are
    :class:`meta1.policy.service.PolicyService`'s (spec/policy.md), run here over smar's
    maps (:func:`meta1.maps.driver.open_maps`, a map that cannot be opened answers PERM:
    its checks fail temporarily, they never accept), smar's resolver and the greylisting
    database (:mod:`meta1.smar.greylistdb`).
"""

from __future__ import annotations

import logging
import os

from meta1.ipc.records import PolicyCheck, PolicyVerdict, ResolvedRecipient
from meta1.maps.driver import MapDriver, open_maps
from meta1.policy.service import PolicyService, Question, reply_line
from meta1.qmgr.policy import unavailable
from meta1.runtime.link import RecordLink
from meta1.runtime.process import local_hostname

log = logging.getLogger("meta1.smar")


class SmarPolicy:
    """See the module docstring."""

    def __init__(self, config, loop, resolver, *, trace=None):
        self.maps = MapDriver(open_maps(config, loop, strict=False, trace=trace))
        greylisting = config.smar.greylisting
        store = None
        if greylisting is not None:
            from meta1.smar.greylistdb import SqliteGreylistStore
            store = SqliteGreylistStore(os.path.join(config.queue_directory, str(greylisting.database)))
        self.store = store
        self.service = PolicyService(config, local_hostname(config.hostname), driver=self.maps,
                                     resolver=resolver, greylist_store=store, trace=trace)

    def start(self) -> None:
        self.maps.start()

    def close(self) -> None:
        self.maps.close()
        if self.store is not None:
            self.store.close()

    def check(self, link: RecordLink, record: PolicyCheck) -> None:
        if record.stage == "end":
            self.service.end(record.session_id)
            return

        def answer(outcome: str, reply, routes=(), session_conf=None) -> None:
            if not link.closed:
                text = reply if isinstance(reply, str) else reply_line(reply) if reply is not None else ""
                link.send(PolicyVerdict(record.request_id, outcome, text,
                                        tuple(ResolvedRecipient(nexthop, address) for nexthop, address in routes),
                                        session_conf))

        question = Question(record.session_id, record.stage, record.client_address, record.helo, record.sender,
                            record.recipient, record.relay_granted, record.server or None)
        try:
            self.service.ask(question, answer)
        except Exception:         # a bug here must not take smar down: a 4xx, logged
            log.exception("%s: policy check at %s failed", record.session_id, record.stage)
            answer(*unavailable(record.stage))
