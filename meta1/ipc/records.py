"""The records the daemons exchange, and those qmgr keeps in its incoming log.

Responsibilities
    Name every record type of the inter-daemon protocols with its type id, and check the
    opening handshake. S2Q marks smtps → qmgr, Q2S qmgr → smtps; Q2A/A2Q qmgr ↔ smar
    (routes, and the policy checks qmgr passes on from smtps); Q2C/C2Q qmgr ↔ smtpc (deliveries);
    Ctl2Q/Q2Ctl ``meta1 qmgrctl`` ↔ qmgr (operator commands). The table of ids is in spec/queue.md.

Protocol
    Each side's first record on a connection is :class:`Hello`; the other side checks it
    with :func:`handshake_check` (right version, the expected peer role) and closes the
    connection on a :class:`ProtocolError`. MeTA1's design document says modules of
    different versions are not expected to interoperate (reference meta1.md §1.2a, the
    functional-spec chapter), so there is no negotiation: one :data:`PROTOCOL_VERSION`, and a mismatch is an error.

    smtps then sends one :class:`Commit` per transaction, after the content file is
    durable; qmgr answers each with a :class:`CommitResult` once the transaction is
    durable in IBDB (or not). Several of either may travel in one write (batching).

Why these shapes
    A :class:`Transaction` is stored in IBDB exactly as it arrived (spec/receive-path.md,
    "Record files"), so it holds everything qmgr needs after a restart: the envelope, the
    ESMTP parameters that change delivery (RFC 3461 DSN: NOTIFY, ORCPT, RET, ENVID;
    RFC 6152 BODY; RFC 6531 SMTPUTF8; RFC 4954 AUTH), what the Received header and the
    logs need about the client, and where the content is. Times are 64-bit integers
    (``arrival`` is microseconds since the epoch), never ``time_t``.

    Ids are id strings, not ints, because they are also file names and log keys
    (``S`` + 16 + 2 hex digits, spec/receive-path.md "Identifiers"); the ``sender`` is
    ``""`` for the null reverse-path ``<>``. Strings hold the bytes the client sent
    (surrogate-escaped where they are not UTF-8), after the SMTP layer's own checks.
"""

from __future__ import annotations

from meta1.ipc.codec import ProtocolError, record

PROTOCOL_VERSION = 4   # 2: recipients carry the next hop resolved at RCPT (D-POL-21)
                       # 3: the connect verdict carries the session's smtps options (D-POL-26)
                       # 4: delivery targets carry smtpc's reply timers per server (D-POL-28)


@record(1)
class Hello:
    """First record on every connection, in both directions."""

    version: int
    role: str  # the sender's role: "smtps", "qmgr", …
    pid: int
    instance: int  # the process index (the last two hex digits of smtps' ids)


@record(10)
class Recipient:
    """One RCPT TO: its id (``<ta-id>-NNNN``), address and DSN parameters (RFC 3461 §4)."""

    rcpt_id: str
    address: str
    notify: tuple[str, ...] | None  # None: no NOTIFY parameter; else e.g. ("SUCCESS", "FAILURE")
    orcpt_type: str | None  # ORCPT's addr-type ("rfc822"), None without ORCPT
    orcpt: str | None  # ORCPT's address, xtext-decoded
    # Where it goes, as smar resolved it at RCPT (D-POL-21, spec/policy.md "Routing"): a
    # domain (MX lookup), "[host]" (the host's addresses, no MX lookup), "lmtp:PATH"
    # ("lmtp:" alone: smtpc's LMTP_socket), "file:" or "program:". "" : not resolved (a
    # message qmgr generates): qmgr routes by the address's domain.
    nexthop: str = ""


@record(11)
class Transaction:
    """One accepted mail transaction, as committed to IBDB."""

    ta_id: str
    session_id: str
    arrival: int  # microseconds since the epoch
    sender: str  # "" for the null path <>
    size: int  # octets of content in the content file
    body: str | None  # BODY=: "7BIT", "8BITMIME", "BINARYMIME" or None
    smtputf8: bool
    ret: str | None  # RET=: "FULL" or "HDRS"
    envid: str | None  # ENVID=, xtext-decoded
    auth: str | None  # AUTH= of MAIL, xtext-decoded ("<>" kept as is)
    client_address: str
    client_port: int
    helo: str
    recipients: tuple[Recipient, ...]
    content: str  # the content file, relative to the queue directory ("cdb/a/S…")


@record(111)
class RecipientsDone:
    """IBDB: recipients of one transaction that reached a final state.

    ``outcome`` is ``"delivered"`` (a 2xx from the next hop), ``"bounced"`` (a DSN
    about them is queued in the same IBDB batch, or none was due), or ``"deleted"`` (by
    the operator). A transaction all of whose recipients are done is complete: replay
    leaves it out and its content file may be removed. Written by qmgr only, after the
    result that made them final; one record per transaction and batch of results.
    """

    ta_id: str
    rcpt_ids: tuple[str, ...]
    outcome: str
    time: int  # microseconds since the epoch


@record(20)
class Commit:
    """S2Q: make this transaction durable, then answer with a CommitResult."""

    transaction: Transaction


@record(21)
class CommitResult:
    """Q2S: ``ok`` — the transaction is durable in IBDB; otherwise ``reason`` says why not."""

    ta_id: str
    ok: bool
    reason: str


# -- smtps -> qmgr -> smar: policy checks (spec/policy.md) -----------------------------------

@record(60)
class PolicyCheck:
    """S2Q, then Q2A: the verdict on a session's client (``stage`` "connect"), sender
    ("mail") or recipient ("rcpt"); "end" says the session is over (no answer). qmgr
    passes it on to smar with its own ``request_id``. ``relay_granted``: AUTH or a client
    certificate gave relay rights (later issues)."""

    request_id: int
    session_id: str
    stage: str
    client_address: str
    client_port: int
    helo: str
    sender: str | None
    recipient: str | None
    relay_granted: bool
    server: str          # the smtps section's name ("" for the unnamed one): its delay_checks


@record(62)
class ResolvedRecipient:
    """One copy of an accepted recipient: the address to deliver to (an alias's target, or
    the recipient itself) and its next hop (as :attr:`Recipient.nexthop`)."""

    nexthop: str
    address: str


@record(63)
class SessionConf:
    """The smtps options an ``smtps_session_conf:`` entry sets for one session, as smar
    parsed and checked them (D-POL-26; the options are ``SMTPS_SESSION_OPTIONS`` of
    :mod:`meta1.config.schema`, fields named by their keys). None, or a flag in neither
    list: the smtps section's own value stands. Intervals are seconds, sizes octets."""

    flags_on: tuple[str, ...] = ()
    flags_off: tuple[str, ...] = ()
    io_timeout: int | None = None
    max_message_size: int | None = None
    max_rcpts_per_transaction: int | None = None
    max_errors_per_session: int | None = None
    max_junk_commands: int | None = None
    max_command_line_length: int | None = None
    max_data_line_length: int | None = None


@record(61)
class PolicyVerdict:
    """A2Q, then Q2S: ``outcome`` "ok", "refused" (``reply``, a 4xx/5xx), "close" (``reply``,
    a 421) or "discard"; ``reply`` is the whole reply line, e.g. "550 5.7.1 Relaying denied".
    An "ok" at RCPT carries the recipient's ``routes``: where each copy goes (D-POL-21). An
    "ok" or "discard" at connect carries ``session_conf`` when the access map has an
    ``smtps_session_conf:`` entry for the client (D-POL-26): no record more per session."""

    request_id: int
    outcome: str
    reply: str
    routes: tuple[ResolvedRecipient, ...] = ()
    session_conf: SessionConf | None = None


# -- qmgr <-> smar: routes ------------------------------------------------------------------

@record(30)
class RouteRequest:
    """Q2A: where does mail for ``domain`` go? Answered by one RouteResult."""

    request_id: int
    domain: str


@record(31)
class Exchanger:
    """One mail exchanger of a route: its MX preference, name and addresses (may be none)."""

    preference: int
    host: str
    addresses: tuple[str, ...]


@record(32)
class RouteResult:
    """A2Q: the route for a RouteRequest.

    ``outcome`` is ``"ok"`` (``exchangers`` in preference order, at least one with an
    address), ``"temporary"`` (try later: SERVFAIL, timeouts) or ``"permanent"``
    (NXDOMAIN, null MX, no address at all); ``status`` is the enhanced status code and
    ``reason`` the text for the DSN and the logs; ``ttl`` how long qmgr may reuse it (s).
    """

    request_id: int
    domain: str
    outcome: str
    exchangers: tuple[Exchanger, ...]
    status: str
    reason: str
    ttl: int


# -- qmgr <-> smtpc: deliveries --------------------------------------------------------------

@record(40)
class Target:
    """One address smtpc may connect to for a delivery, in the order to try, with the
    timers of a session to it from qmgr's configuration map, in seconds (0: smtpc's own
    setting): ``connect_timeout`` for the connect (``oct:``, else ``IO_timeout``),
    ``io_timeout`` for the greeting and each reply, ``final_dot_timeout`` for the reply to
    the end of data (``smtpc_session_conf:``, D-POL-28; RFC 5321 §4.5.3.2). They hold for
    every reply wait of the connection while it serves this delivery, also when it is a
    kept connection reused."""

    host: str
    address: str
    port: int
    preference: int
    connect_timeout: int = 0
    io_timeout: int = 0
    final_dot_timeout: int = 0


@record(41)
class Delivery:
    """Q2C: deliver ``transaction`` (only the recipients it lists) to one of ``targets``.

    The transaction is the one from IBDB with its recipients cut down to those of this
    delivery, so smtpc has the envelope, the DSN parameters and the content path. ``lmtp``
    selects LMTP (LHLO, one reply per recipient after the data). ``reuse``: use the idle
    connection to the first target that an earlier DeliveryResult reported ``kept_open``
    (a new one only if it is gone meanwhile); without it smtpc always connects anew, so
    qmgr's count of connections per address stays exact.
    """

    delivery_id: int
    transaction: Transaction
    targets: tuple[Target, ...]
    lmtp: bool
    reuse: bool


@record(42)
class RecipientResult:
    """One recipient's outcome: the reply that decided it (RFC 5321 code, RFC 3463 status)."""

    rcpt_id: str
    code: int
    status: str
    text: str


@record(43)
class DeliveryResult:
    """C2Q: the outcome of a Delivery, one result per recipient it listed.

    ``address`` is the server address whose session carried the transaction (empty when
    no session got that far), ``tried`` every address a connection was attempted to, in
    order, and ``kept_open`` says that session now waits idle for reuse — it counts as a
    connection to ``address`` until an IdleClosed for it.
    """

    delivery_id: int
    results: tuple[RecipientResult, ...]
    address: str
    tried: tuple[str, ...]
    kept_open: bool


@record(44)
class IdleClosed:
    """C2Q: an idle connection smtpc had reported ``kept_open`` is closed."""

    address: str


# -- qmgrctl <-> qmgr: operator commands (spec/qmgrctl.md) ------------------------------------

@record(50)
class FlushQueue:
    """Ctl2Q: make deferred recipients due now: those for ``nexthop`` (a domain, lower
    case), or all when it is None. Answered by one ControlResult."""

    nexthop: str | None


@record(51)
class HoldMessage:
    """Ctl2Q: hold the transaction ``ta_id``: nothing of it is started until released."""

    ta_id: str


@record(52)
class ReleaseMessage:
    """Ctl2Q: release a held transaction; its recipients are due at once."""

    ta_id: str


@record(53)
class DeleteMessage:
    """Ctl2Q: delete the transaction without a DSN; deliveries in flight finish."""

    ta_id: str


@record(54)
class ControlResult:
    """Q2Ctl: the answer to one command, in the order of the commands: ``ok``, and a line
    of text for the operator (what was done, or why not)."""

    ok: bool
    text: str


def handshake_check(rec: object, expected_role: str) -> Hello:
    """Validate the first record of a connection: a Hello of our version from ``expected_role``."""
    if not isinstance(rec, Hello):
        raise ProtocolError(f"expected Hello as the first record, got {type(rec).__name__}")
    if rec.version != PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {rec.version}, this is version {PROTOCOL_VERSION}")
    if rec.role != expected_role:
        raise ProtocolError(f"peer says it is {rec.role!r}, expected {expected_role!r}")
    return rec
