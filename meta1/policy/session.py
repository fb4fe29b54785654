"""One SMTP session's access decisions: delay_checks, overrides, the reply at each stage.

Responsibilities
    :class:`SessionChecks` lives in smtps beside the SMTP session. It takes each stage's
    check result (from the plans of :mod:`meta1.policy.checks`, run by smar), classifies
    it into an input of the session check machine (:mod:`meta1.policy.states`, the table
    that *is* delay_checks), fires it, runs the row's action and says what to answer:

    * :meth:`connect` — ``None`` (greet as usual) or the reply that refuses the session:
      ``554`` (then :meth:`command` answers ``503`` to all but QUIT, RFC 5321 §3.1) or
      ``421`` (close);
    * :meth:`grant` — AUTH succeeded, or a TLS client certificate allows relaying;
    * :meth:`mail` — ``None`` (accept) or the reply refusing MAIL;
    * :meth:`rcpt` — a :class:`RcptVerdict`: the reply, the routes, whether the recipient
      is discarded, whether greylisting still has to be asked;
    * :meth:`end` — the transaction is over (RSET, end of DATA, HELO/EHLO).

Data it owns
    The decisions of each stage (what was found, what is held and its reply), the relay
    grants (:class:`~meta1.policy.relay.RelayGrants`), whether the session or the
    transaction is discarded, and the macro values for literal replies.

What overrides what (reference §2.6; B43–B46; D-POL-1, D-POL-2)
    * Without delay_checks a rejection is given at its own stage: the client's at
      connect, the sender's at MAIL, a DNS listing at MAIL (after the sender check, so
      that ``from:`` OK can clear it, B45).
    * With delay_checks they are held until RCPT. There a ``to:`` entry decides first: a
      rejection for the recipient is given; an OK or RELAY overrides whatever is held
      (so ``postmaster`` stays reachable). Then a relay grant — ``cltaddr:``/``cltname:``
      RELAY, AUTH, a TLS certificate — overrides what is held, including a ``cltresolve:``
      denial (B44, MeTA1 2014-07-07). Otherwise the first held rejection is the reply:
      the client's, else the listing's, else the sender's.
    * ``QUICK:`` rejections are given at once and nothing overrides them (B46).
    * A failed lookup (TEMP, PERM, a broken RHS) is a rejection with a 4xx reply: held or
      given like the others, never "not found" (B27, B28).
    * A DNS listing is also cleared by a ``from:`` OK and by a relay grant; an accepting
      client entry means the lists are not even asked.

After the held rejections (:func:`decide_recipient`)
    ``protectedrcpt:`` (the client must be listed, B22, B48), the relay rule (B41, B42),
    the routing (unknown local user 550 5.1.1, B47), and greylisting (B49) — which
    exempts clients with an accepting entry or a relay grant, senders and recipients with
    an OK or RELAY entry, and discarded recipients.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meta1.machine import Machine, TraceSink
from meta1.policy.access import CLTRESOLVE, Check
from meta1.policy.checks import RecipientResult
from meta1.policy.dnsbl import NOT_LISTED_VERDICT, DnsblVerdict
from meta1.policy.greylist import GreyDecision
from meta1.policy.relay import RelayGrants
from meta1.policy.rhs import Action, Macros, Rhs, Stage, failure_reply, reply_at
from meta1.policy.route import Route
from meta1.policy.states import HELD_STATES, TABLE, Input, State
from meta1.smtp.replies import R, Reply


@dataclass(frozen=True)
class Hold:
    """A rejection found at an earlier stage, held for RCPT: an RHS, a failure, or a
    DNS listing (its reply made at connect). ``source`` names the key or list."""

    source: str
    rhs: Rhs | None = None
    failure: str = ""
    listing: DnsblVerdict | None = None

    def reply(self, macros: Macros) -> Reply:
        if self.failure:
            return failure_reply(Stage.RCPT)
        if self.listing is not None:
            return self.listing.reply(macros)
        assert self.rhs is not None
        return reply_at(self.rhs, Stage.RCPT, macros)


@dataclass(frozen=True)
class RcptVerdict:
    """The decision on one recipient. ``greylist``: accepted, but greylisting is still to
    be asked (:meth:`with_greylisting`). ``reason`` is for the log."""

    reply: Reply
    routes: tuple[Route, ...] = ()
    discard: bool = False
    greylist: bool = False
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.reply.positive

    def with_greylisting(self, decision: GreyDecision) -> RcptVerdict:
        """The verdict after greylisting has answered for this triplet."""
        if not self.greylist or decision.passed:
            return replace(self, greylist=False)
        return RcptVerdict(R.GREYLISTED, reason=f"greylisted ({decision.action}, retry in {decision.wait}s)")


class SessionChecks:
    """See the module documentation. ``delay_checks`` is the smtps server's flag;
    ``greylisting`` whether smar greylists."""

    def __init__(self, *, client_addr: str, hostname: str = "", delay_checks: bool = False,
                 greylisting: bool = False, session_id: str = "", trace: TraceSink | None = None):
        self.client_addr = client_addr
        self.client_name = ""
        self.hostname = hostname
        self.delay_checks = delay_checks
        self.greylisting = greylisting
        self.machine: Machine[State, Input] = Machine("policy-session", TABLE, State.NEW, instance=session_id,
                                                      daemon="smtps", trace=trace)
        self.grants = RelayGrants()
        self.client_accepted = False      # an OK/RELAY client entry
        self.client_hold: Hold | None = None
        self.refusal: Reply | None = None
        self.discard_session = False
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.sender = ""
        self.sender_accepted = False
        self.sender_hold: Hold | None = None
        self.discard_transaction = False

    # -- what smtps reads ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def refused(self) -> bool:
        return self.machine.state is State.REFUSED

    def macros(self, rcpt: str = "") -> Macros:
        return Macros(client_addr=self.client_addr, client_name=self.client_name, sender=self.sender,
                      rcpt=rcpt, hostname=self.hostname)

    def _hold_or_refuse(self, quick: bool) -> bool:
        return self.delay_checks and not quick

    # -- connect ------------------------------------------------------------------------------

    def connect(self, check: Check, listing: DnsblVerdict = NOT_LISTED_VERDICT, client_name: str = "") -> Reply | None:
        """The client check's result (and the DNSBL verdict): None to greet as usual, or
        the reply refusing the session (554: then only QUIT; 421: close)."""
        self.client_name = client_name
        rhs = check.rhs
        if check.failed:
            if self.delay_checks:
                self.client_hold = Hold(check.failure, failure=check.failure)
                self._fire(Input.CLIENT_HOLD)
                return None
            self.refusal = failure_reply(Stage.CONNECT, self.hostname)
            self._fire(Input.CLIENT_REFUSE)
            return self.refusal
        if rhs is not None and rhs.rejects:
            assert check.entry is not None
            if self._hold_or_refuse(rhs.quick):
                self.client_hold = Hold(check.entry.key, rhs)
                self._fire(Input.CLIENT_HOLD)
                return None
            self.refusal = reply_at(rhs, Stage.CONNECT, self.macros())
            self._fire(Input.CLIENT_REFUSE)
            return self.refusal
        if rhs is not None:
            self.client_accepted = rhs.accepts
            self.discard_session = rhs.action is Action.DISCARD
            if rhs.action is Action.RELAY and not check.entry.key.startswith(CLTRESOLVE):
                self.grants = replace(self.grants, client=True)
            self._fire(Input.CLIENT_PASS)
            return None
        if listing.listed:
            self.client_hold = Hold(listing.listed_by.name, listing=listing)
            self._fire(Input.CLIENT_LISTED_HOLD if self.delay_checks else Input.CLIENT_LISTED)
            return None
        self._fire(Input.CLIENT_PASS)
        return None

    def command(self) -> Reply:
        """The answer to any command but QUIT in a refused session."""
        self._fire(Input.COMMAND)
        return R.SESSION_REFUSED

    # -- AUTH, STARTTLS -----------------------------------------------------------------------

    def grant(self, *, auth: bool = False, tls: bool = False) -> None:
        """AUTH succeeded (``auth``) or the TLS client certificate allows relaying (``tls``)."""
        self.grants = replace(self.grants, auth=self.grants.auth or auth, tls=self.grants.tls or tls)
        self._fire(Input.GRANT)

    # -- MAIL ---------------------------------------------------------------------------------

    def mail(self, sender: str, check: Check) -> Reply | None:
        """The sender check's result: None to accept MAIL, or the reply refusing it."""
        if self.refused:
            return self.command()
        self.sender = sender
        rhs = check.rhs
        if check.failed or (rhs is not None and rhs.rejects):
            quick = rhs.quick if rhs is not None and not check.failed else False
            if self._hold_or_refuse(quick):
                source = check.failure or check.entry.key
                self._fire(Input.SENDER_HOLD)
                self.sender_hold = Hold(source, None if check.failed else rhs, check.failure)
                return None
            reply = failure_reply(Stage.MAIL) if check.failed else reply_at(rhs, Stage.MAIL, self.macros())
            self._fire(Input.SENDER_REFUSE)
            self.sender = ""
            return reply
        self.sender_accepted = rhs is not None and rhs.accepts
        clears = self.sender_accepted or self.grants.any
        self.discard_transaction = rhs is not None and rhs.action is Action.DISCARD
        row = self._fire(Input.SENDER_CLEAR if clears else Input.SENDER_PASS)
        if row.action == "refuse_listed":
            assert self.client_hold is not None
            reply = self.client_hold.reply(self.macros())
            self._reset_transaction()
            return reply
        return None

    # -- RCPT ---------------------------------------------------------------------------------

    def rcpt(self, result: RecipientResult) -> RcptVerdict:
        """The recipient's checks (from :func:`meta1.policy.checks.rcpt_plan`): the verdict."""
        if self.refused:
            return RcptVerdict(self.command(), reason="session refused")
        held = self.machine.state in HELD_STATES
        self._fire(Input.RCPT)
        holds = [h for h in (self.client_hold, self.sender_hold) if h is not None] if held else []
        return decide_recipient(result, holds=holds, grants=self.grants, macros=self.macros(result.address),
                                discard=self.discard_session or self.discard_transaction,
                                greylisting=self.greylisting and not (
                                    self.client_accepted or self.sender_accepted or self.grants.any))

    def end(self) -> None:
        """The transaction is over: RSET, the end of DATA, HELO/EHLO."""
        if self.refused:
            return
        self._fire(Input.END)
        self._reset_transaction()

    def _fire(self, input: Input):
        return self.machine.fire(input)


def decide_recipient(result: RecipientResult, *, holds: list[Hold], grants: RelayGrants, macros: Macros,
                     discard: bool = False, greylisting: bool = False) -> RcptVerdict:
    """The RCPT decision (module documentation, "What overrides what" and after)."""
    address = result.address
    check, rhs = result.check, result.check.rhs
    if check.failed:
        return RcptVerdict(failure_reply(Stage.RCPT), reason=check.failure)
    if rhs is not None and rhs.rejects:
        return RcptVerdict(reply_at(rhs, Stage.RCPT, macros), reason=f"{check.entry.key} {rhs}")
    rcpt_accepts = rhs is not None and rhs.accepts
    if holds and not (rcpt_accepts or grants.any):
        hold = holds[0]
        return RcptVerdict(hold.reply(macros), reason=f"held: {hold.source}")
    protection = result.protection
    if protection.failed:
        return RcptVerdict(failure_reply(Stage.RCPT), reason=protection.failure)
    if not protection.allowed:
        return RcptVerdict(R.PROTECTED_RECIPIENT.format(address=address),
                           reason=f"{protection.key}: client {macros.client_addr} not listed")
    if not (result.local or result.rcpt_relay or grants.any):
        return RcptVerdict(R.RELAY_DENIED.format(address=address), reason="relaying denied")
    resolution = result.resolution
    if resolution is None:
        return RcptVerdict(failure_reply(Stage.RCPT), reason="recipient not routed (stale relay grants)")
    if resolution.reply is not None:
        details = "; ".join(f.detail for f in resolution.failures)
        return RcptVerdict(resolution.reply, reason=details)
    discard = discard or (rhs is not None and rhs.action is Action.DISCARD)
    grey = greylisting and not rcpt_accepts and not discard
    reason = "; ".join(f"{f.address}: {f.detail}" for f in resolution.failures)
    return RcptVerdict(R.RECIPIENT_OK.format(address=address), resolution.routes, discard, grey, reason)
