"""The life cycle of one recipient in qmgr's scheduler: its states, inputs and one table.

Responsibilities
    This file *is* the order in which a queued recipient moves through qmgr
    (reference meta1.md §1.2 steps 3-7, §1.6): it waits in the incoming queue or in the
    deferred queue, enters the active queue (AQ), waits there for its route and for a
    connection slot, is handed to smtpc, and ends delivered, bounced or deleted — or goes
    back to the deferred queue after a temporary failure. :mod:`meta1.qmgr.scheduler`
    runs it: every change of a recipient's state fires one input through ``TABLE``; a pair
    not in the table is a programming error (:class:`meta1.machine.ProtocolViolation`).

States
    ``INCOMING``, ``DEFERRED`` and ``HELD`` are outside the AQ; ``ROUTING``, ``READY`` and
    ``ACTIVE`` are the AQ (bounded by ``AQ_max_entries``); ``DELIVERED``, ``BOUNCED`` and
    ``DELETED`` are final — a recipient in a final state is never scheduled again.
    A recipient starts in ``INCOMING`` (new from IBDB or smtps, never tried), in
    ``DEFERRED`` (replayed from DEFEDB, or from IBDB with earlier attempts) or in ``HELD``
    (its transaction is on hold); there is no row for that first placement.

Reading the table
    A hold or a deletion that reaches a recipient while it is ``ACTIVE`` waits for its
    delivery to end: a temporary failure then fires ``DEFER`` and ``HOLD`` (the deferred
    record is written first), a deletion fires ``DELETE`` unless the recipient was
    delivered meanwhile. ``FLUSH`` makes a deferred recipient due now without changing
    its state. ``RELEASE`` puts a held recipient into the deferred queue, due at once.
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    INCOMING = "incoming"    # arrived, never tried; waits for room in the AQ
    DEFERRED = "deferred"    # in the retry index, waits for its next-try time and AQ room
    HELD = "held"            # operator hold: not scheduled until released
    ROUTING = "routing"      # in the AQ, waits for smar to resolve its next hop
    READY = "ready"          # in the AQ, route known, waits for a connection slot
    ACTIVE = "active"        # handed to smtpc in a delivery
    DELIVERED = "delivered"  # final: accepted by the next hop
    BOUNCED = "bounced"      # final: failed permanently or expired; in a DSN (unless <>)
    DELETED = "deleted"      # final: removed by the operator, no DSN


class Input(FastEnum):
    ADMIT = "admitted to the AQ"
    ROUTED = "route known"
    DISPATCH = "handed to smtpc"
    DELIVERED = "delivered"
    DEFER = "temporary failure"
    BOUNCE = "permanent failure or lifetime reached"
    HOLD = "operator hold"
    RELEASE = "operator release"
    DELETE = "operator delete"
    FLUSH = "operator flush"


S, I, T = State, Input, Transition

#: States that count against ``AQ_max_entries``.
AQ_STATES = frozenset({S.ROUTING, S.READY, S.ACTIVE})
#: States a recipient never leaves.
FINAL_STATES = frozenset({S.DELIVERED, S.BOUNCED, S.DELETED})
#: States in which the transaction's current delivery round is still going on: a DSN for
#: its failed recipients waits until none of its recipients is in one of these.
ROUND_STATES = AQ_STATES | {S.INCOMING}


def _rows() -> dict[tuple[State, Input], Transition[State]]:
    table: dict[tuple[State, Input], Transition[State]] = {
        (S.INCOMING, I.ADMIT): T("admit", S.ROUTING),
        (S.DEFERRED, I.ADMIT): T("admit", S.ROUTING),
        (S.DEFERRED, I.FLUSH): T("make_due", S.DEFERRED),
        (S.HELD, I.RELEASE): T("release", S.DEFERRED),

        (S.ROUTING, I.ROUTED): T("wait_for_slot", S.READY),
        (S.ROUTING, I.DEFER): T("record_deferred", S.DEFERRED),
        (S.ROUTING, I.BOUNCE): T("bounce", S.BOUNCED),

        (S.READY, I.DISPATCH): T("start_delivery", S.ACTIVE),
        # The destination proved unreachable in another delivery (destination status cache);
        # past the queue lifetime that failure bounces.
        (S.READY, I.DEFER): T("record_deferred", S.DEFERRED),
        (S.READY, I.BOUNCE): T("bounce", S.BOUNCED),

        (S.ACTIVE, I.DELIVERED): T("record_delivered", S.DELIVERED),
        (S.ACTIVE, I.DEFER): T("record_deferred", S.DEFERRED),
        (S.ACTIVE, I.BOUNCE): T("bounce", S.BOUNCED),
        (S.ACTIVE, I.DELETE): T("record_deleted", S.DELETED),
    }
    for state in (S.INCOMING, S.DEFERRED, S.ROUTING, S.READY):
        table[(state, I.HOLD)] = T("hold", S.HELD)
    for state in (S.INCOMING, S.DEFERRED, S.HELD, S.ROUTING, S.READY):
        table[(state, I.DELETE)] = T("record_deleted", S.DELETED)
    return table


TABLE: dict[tuple[State, Input], Transition[State]] = _rows()
