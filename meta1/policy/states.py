"""The session check machine: what the access checks decided so far, and when it applies.

Responsibilities
    This file *is* delay_checks (README 3.12.2, reference §2.6, B43–B46): for one SMTP
    session it says, stage by stage, whether a rejection found by the client checks
    (``cltaddr:``, ``cltname:``, ``cltresolve:``, a DNS block list) or the sender check
    (``from:``) is given at once or *held* until RCPT, where a recipient entry or a relay
    grant may override it. :class:`meta1.policy.session.SessionChecks` classifies each
    stage's result into an input and runs the row's action; the held replies themselves
    are data, the *shape* of what is held is the state.

Reading the table
    Session states (no transaction): ``OPEN`` nothing against the client; ``HELD`` a
    client rejection held for RCPT (delay_checks); ``LISTED`` a DNSBL listing applied at
    MAIL unless the sender clears it (no delay_checks); ``LISTED_HELD`` a listing held for
    RCPT unless the sender clears it (delay_checks); ``REFUSED`` the client was refused
    at connect (554 greeting, then 503 to everything but QUIT; or 421 and close).

    Transaction states remember the session state they return to at ``END`` (RSET, the
    end of DATA, HELO/EHLO): ``TX_OPEN`` (nothing held), ``TX_OPEN_HELD`` (the sender's
    rejection held), ``TX_HELD`` (the client's rejection held), ``TX_LISTED`` (the
    sender cleared a listing that MAIL would have applied), ``TX_LISTED_CLEAR`` (the
    sender cleared a held listing) and ``TX_LISTED_HELD`` (the listing, and perhaps the
    sender's rejection, held).

    Inputs are classified from the stage's result and the flag: a rejection is
    ``*_REFUSE`` without delay_checks or with ``QUICK:``, ``*_HOLD`` with delay_checks.
    ``SENDER_CLEAR`` is a sender that clears a DNS listing: a ``from:`` OK or RELAY
    (B45), or any sender of a client that holds a relay grant. At RCPT,
    ``check_recipient_held`` gives the held rejection unless a ``to:`` OK/RELAY or a
    relay grant (cltaddr/cltname RELAY, AUTH, TLS) overrides it — which is how a
    ``cltresolve:`` denial gives way to AUTH under delay_checks (B44).
"""

from __future__ import annotations

from meta1.machine import FastEnum, Transition


class State(FastEnum):
    NEW = "new"
    OPEN = "open"
    HELD = "held"
    LISTED = "listed"
    LISTED_HELD = "listed_held"
    REFUSED = "refused"
    TX_OPEN = "tx_open"
    TX_OPEN_HELD = "tx_open_held"
    TX_HELD = "tx_held"
    TX_LISTED = "tx_listed"
    TX_LISTED_CLEAR = "tx_listed_clear"
    TX_LISTED_HELD = "tx_listed_held"


class Input(FastEnum):
    CLIENT_PASS = "client checks: no rejection (no entry, OK, RELAY, DISCARD)"
    CLIENT_REFUSE = "client rejection applied now (no delay_checks, or QUICK:)"
    CLIENT_HOLD = "client rejection or lookup failure, delay_checks"
    CLIENT_LISTED = "DNSBL listing, no delay_checks"
    CLIENT_LISTED_HOLD = "DNSBL listing, delay_checks"
    GRANT = "relay granted by AUTH or a TLS client certificate"
    SENDER_PASS = "sender check: no rejection, listing not cleared"
    SENDER_CLEAR = "sender check: from: OK/RELAY, or the client holds a relay grant"
    SENDER_REFUSE = "sender rejection applied now (no delay_checks, or QUICK:)"
    SENDER_HOLD = "sender rejection or lookup failure, delay_checks"
    RCPT = "a recipient's checks are in"
    END = "the transaction ends (RSET, end of DATA, HELO/EHLO)"
    COMMAND = "a command other than QUIT in a refused session"


S, I, T = State, Input, Transition

SESSION_STATES = (S.OPEN, S.HELD, S.LISTED, S.LISTED_HELD)
TRANSACTION_STATES = (S.TX_OPEN, S.TX_OPEN_HELD, S.TX_HELD, S.TX_LISTED, S.TX_LISTED_CLEAR, S.TX_LISTED_HELD)
HELD_STATES = (S.TX_OPEN_HELD, S.TX_HELD, S.TX_LISTED_HELD)

TABLE: dict[tuple[State, Input], Transition[State]] = {
    # connect
    (S.NEW, I.CLIENT_PASS): T("accept_client", S.OPEN),
    (S.NEW, I.CLIENT_REFUSE): T("refuse_session", S.REFUSED),
    (S.NEW, I.CLIENT_HOLD): T("hold_client", S.HELD),
    (S.NEW, I.CLIENT_LISTED): T("note_listing", S.LISTED),
    (S.NEW, I.CLIENT_LISTED_HOLD): T("hold_listing", S.LISTED_HELD),

    # a refused session answers nothing but QUIT
    (S.REFUSED, I.COMMAND): T("refuse_command", S.REFUSED),

    # MAIL
    (S.OPEN, I.SENDER_PASS): T("open_transaction", S.TX_OPEN),
    (S.OPEN, I.SENDER_CLEAR): T("open_transaction", S.TX_OPEN),
    (S.OPEN, I.SENDER_REFUSE): T("refuse_sender", S.OPEN),
    (S.OPEN, I.SENDER_HOLD): T("hold_sender", S.TX_OPEN_HELD),

    (S.HELD, I.SENDER_PASS): T("open_transaction", S.TX_HELD),
    (S.HELD, I.SENDER_CLEAR): T("open_transaction", S.TX_HELD),
    (S.HELD, I.SENDER_REFUSE): T("refuse_sender", S.HELD),
    (S.HELD, I.SENDER_HOLD): T("hold_sender", S.TX_HELD),

    (S.LISTED, I.SENDER_PASS): T("refuse_listed", S.LISTED),
    (S.LISTED, I.SENDER_CLEAR): T("open_transaction", S.TX_LISTED),
    (S.LISTED, I.SENDER_REFUSE): T("refuse_sender", S.LISTED),

    (S.LISTED_HELD, I.SENDER_PASS): T("open_transaction", S.TX_LISTED_HELD),
    (S.LISTED_HELD, I.SENDER_CLEAR): T("open_transaction", S.TX_LISTED_CLEAR),
    (S.LISTED_HELD, I.SENDER_REFUSE): T("refuse_sender", S.LISTED_HELD),
    (S.LISTED_HELD, I.SENDER_HOLD): T("hold_sender", S.TX_LISTED_HELD),

    # RCPT
    (S.TX_OPEN, I.RCPT): T("check_recipient", S.TX_OPEN),
    (S.TX_OPEN_HELD, I.RCPT): T("check_recipient_held", S.TX_OPEN_HELD),
    (S.TX_HELD, I.RCPT): T("check_recipient_held", S.TX_HELD),
    (S.TX_LISTED, I.RCPT): T("check_recipient", S.TX_LISTED),
    (S.TX_LISTED_CLEAR, I.RCPT): T("check_recipient", S.TX_LISTED_CLEAR),
    (S.TX_LISTED_HELD, I.RCPT): T("check_recipient_held", S.TX_LISTED_HELD),

    # end of the transaction: back to the session state it came from
    (S.TX_OPEN, I.END): T("end_transaction", S.OPEN),
    (S.TX_OPEN_HELD, I.END): T("end_transaction", S.OPEN),
    (S.TX_HELD, I.END): T("end_transaction", S.HELD),
    (S.TX_LISTED, I.END): T("end_transaction", S.LISTED),
    (S.TX_LISTED_CLEAR, I.END): T("end_transaction", S.LISTED_HELD),
    (S.TX_LISTED_HELD, I.END): T("end_transaction", S.LISTED_HELD),

    # outside a transaction RSET changes nothing; AUTH or STARTTLS may grant relaying
    (S.OPEN, I.END): T("nothing", S.OPEN),
    (S.HELD, I.END): T("nothing", S.HELD),
    (S.LISTED, I.END): T("nothing", S.LISTED),
    (S.LISTED_HELD, I.END): T("nothing", S.LISTED_HELD),
    (S.OPEN, I.GRANT): T("grant_relay", S.OPEN),
    (S.HELD, I.GRANT): T("grant_relay", S.HELD),
    (S.LISTED, I.GRANT): T("grant_relay", S.LISTED),
    (S.LISTED_HELD, I.GRANT): T("grant_relay", S.LISTED_HELD),
}
