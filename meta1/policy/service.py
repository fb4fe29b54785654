"""Running the checks of SMTP sessions: each session's SessionChecks, its plans, its DNS.

Responsibilities
    smtps asks, for each session, a verdict on the client (at connect), the sender
    (MAIL) and each recipient (RCPT) — a :class:`Question`. :class:`PolicyService`
    answers it, with ``answer(outcome, reply)``:

    * it keeps one :class:`~meta1.policy.session.SessionChecks` per session (delay_checks
      and what earlier stages held) until the session ends;
    * it runs the stage's lookup plan (:mod:`meta1.policy.checks`) over a map *driver*
      (``driver.run(plan, on_done) -> bool``: True when the plan finished at once);
    * at connect, given a DNS resolver, it checks the client's name (PTR and back,
      ``cltname:``/``cltresolve:``) and asks the DNS block lists; for a client the
      session goes on with, it reads the client's ``smtps_session_conf:`` entry
      (:mod:`meta1.policy.sessionconf`) and answers with the parsed options, or with
      ``421 4.3.0`` when the entry cannot be read or is not valid (B33, D-POL-26);
    * at RCPT it asks greylisting last, given a store.

    smar runs it with its maps (:class:`~meta1.maps.driver.MapDriver`), its resolver and a
    SQLite greylist store. smtps runs it itself, with :class:`NoMaps` and no DNS, when the
    configuration gives smar nothing to look up for sessions (:func:`asks_smar`): the
    relay rule and local domains still apply.

Outcomes
    ``"ok"``, ``"refused"`` (the reply is a 4xx/5xx; at connect a 554 — then only QUIT),
    ``"close"`` (a 421) and ``"discard"`` (accept, then throw away: DISCARD). Besides the
    reply, ``answer`` gets ``routes`` for an accepted recipient and ``session_conf`` for an
    accepted client with an ``smtps_session_conf:`` entry.

Loopback clients (D-POL-19)
    Without an access map, a client connecting from a loopback address (127.0.0.0/8,
    ::1) holds a relay grant, as a local program submitting mail: Postfix's default
    ``mynetworks_style = host`` does the same. With an access map the map decides, for
    loopback clients too (``cltaddr:127. RELAY`` restores the grant). Every other client
    needs an access-map RELAY entry (or AUTH/TLS, later issues). A loopback client's name
    is ``localhost``, without a DNS lookup.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

from meta1.maps.base import NOT_FOUND, run_plan
from meta1.policy.access import NO_ENTRY, ResolveStatus, client_resolution, forward_names
from meta1.policy.checks import connect_plan, dnsbl_needed, mail_plan, rcpt_plan
from meta1.policy.dnsbl import NOT_LISTED_VERDICT, answer_from_records, dnsbl_verdict, query_name
from meta1.policy.greylist import check as greylist_check, triplet
from meta1.policy.plan import Plan
from meta1.policy.rhs import Stage, failure_reply
from meta1.policy.route import ERROR_NEXTHOP
from meta1.policy.session import SessionChecks
from meta1.policy.sessionconf import session_conf_steps
from meta1.policy.settings import PolicySettings
from meta1.smtp.address import Mailbox, parse_forward_path
from meta1.smtp.replies import R, Reply

log = logging.getLogger("meta1.policy")

#: ``answer(outcome, reply, routes=(), session_conf=None)``: ``routes``, for an accepted
#: recipient, are its copies as (next hop, address) pairs (D-POL-21); ``session_conf``, for
#: an accepted client, the options of its ``smtps_session_conf:`` entry (D-POL-26).
Answer = Callable[..., object]


@dataclass(frozen=True)
class Question:
    """One check: ``stage`` "connect", "mail" or "rcpt" of session ``session_id`` on
    smtps server ``server`` (None: the unnamed one)."""

    session_id: str
    stage: str
    client_address: str
    helo: str = ""
    sender: str | None = None
    recipient: str | None = None
    relay_granted: bool = False
    server: str | None = None
    mailbox: Mailbox | None = None     # the recipient parsed already (smtps asking itself)


class NoMaps:
    """A map driver for a configuration without maps: every lookup is "not found"."""

    @staticmethod
    def run(plan, on_done) -> bool:
        run_plan(plan, lambda request: NOT_FOUND)
        return True


@functools.lru_cache(maxsize=1024)   # asked at every connect; clients come back
def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


#: The smar sections that make a session's checks smar's business.
POLICY_SECTIONS = ("access_map", "local_user_map", "aliases", "mailertable", "greylisting")


def asks_smar(config) -> bool:
    """Whether the configuration gives smar something to check for sessions (else smtps
    runs the checks itself, without maps)."""
    smar = config.smar
    return any(smar.sections.get(name) is not None for name in POLICY_SECTIONS) or bool(smar.dnsbl)


def qmgr_admits(config) -> bool:
    """Whether qmgr admits each new session: its configuration map may limit the
    connections per client (``icm:``, ``icr:``; :mod:`meta1.qmgr.admission`). Then every
    session's connect check goes to qmgr, and its end too, even when smtps decides the
    rest itself."""
    return isinstance(config.qmgr.config_map, str)


def reply_line(reply: Reply) -> str:
    """The reply as one line for the IPC record: code, status, first text line."""
    status = f" {reply.status}" if reply.status else ""
    return f"{reply.code}{status} {reply.lines[0]}".rstrip()


class PolicyService:
    """See the module docstring. ``hostname``: ours; ``clock``: seconds (greylisting)."""

    def __init__(self, config, hostname: str, *, driver, resolver=None, greylist_store=None,
                 clock: Callable[[], float] = time.time, trace=None):
        self.config = config
        self.hostname = hostname
        self.driver = driver
        self.resolver = resolver
        self.store = greylist_store
        self.clock = clock
        self.trace = trace
        self.sessions: dict[str, SessionChecks] = {}
        self._in_transaction: set[str] = set()
        self._settings: dict[str | None, PolicySettings] = {}

    def settings(self, server: str | None) -> PolicySettings:
        settings = self._settings.get(server)
        if settings is None:
            settings = self._settings[server] = PolicySettings.from_config(self.config, self.hostname, server)
        return settings

    # -- the stages --------------------------------------------------------------------------

    def ask(self, question: Question, answer: Answer) -> None:
        """Answer ``question`` (now or later) with ``answer(outcome, reply)``."""
        if question.stage == "connect":
            self._connect(question, answer)
            return
        if question.session_id not in self.sessions:
            # smar restarted during the session: check the client again first, so that
            # what delay_checks holds is not forgotten.
            def then(outcome: str, reply: Reply | None) -> None:
                if outcome in ("refused", "close"):
                    answer("refused" if question.stage != "connect" else outcome, reply)
                else:
                    self.ask(question, answer)
            # The session's settings were made at its start: not read again.
            self._connect(replace(question, stage="connect"), then, session_conf=False)
            return
        if question.stage == "mail":
            self._mail(question, answer)
        elif question.stage == "rcpt":
            self._rcpt(question, answer)
        else:
            answer("close", R.LOCAL_ERROR.format(hostname=self.hostname))

    def end(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self._in_transaction.discard(session_id)

    def _connect(self, question: Question, answer: Answer, session_conf: bool = True) -> None:
        settings = self.settings(question.server)
        session = SessionChecks(client_addr=question.client_address, hostname=self.hostname,
                                delay_checks=settings.delay_checks, greylisting=settings.greylisting is not None,
                                session_id=question.session_id, trace=self.trace)
        self.sessions[question.session_id] = session

        def resolved(status: ResolveStatus, name: str) -> None:
            plan = connect_plan(settings, question.client_address, name, status)

            def checked(_result) -> None:
                check = plan.result
                if dnsbl_needed(settings, check) and self.resolver is not None:
                    self._dnsbl(settings, question.client_address,
                                lambda verdict: finish(check, verdict, name))
                else:
                    finish(check, NOT_LISTED_VERDICT, name)

            if self.driver.run(plan, checked):
                checked(plan.result)

        loopback = is_loopback(question.client_address)

        def finish(check, verdict, name: str) -> None:
            if loopback and settings.access_map is None:
                session.grants = replace(session.grants, client=True)     # D-POL-19
            reply = session.connect(check, verdict, name)
            outcome = "discard" if session.discard_session else "ok"
            if reply is not None:
                answer("close" if reply.code == 421 else "refused", reply)
            elif session_conf and settings.access_map is not None:
                self._session_conf(question, settings.access_map, name, outcome, answer)
            else:
                answer(outcome, None)

        if loopback or self.resolver is None or settings.access_map is None:
            resolved(ResolveStatus.OK if loopback else ResolveStatus.FAIL, "localhost" if loopback else "")
        else:
            self._client_name(question.client_address, resolved)

    def _session_conf(self, question: Question, access_map: str, name: str, outcome: str, answer: Answer) -> None:
        """The client goes on: its ``smtps_session_conf:`` entry, parsed, goes with the
        verdict; a failed lookup or a bad value closes the session (B33, D-POL-26)."""
        plan = Plan(session_conf_steps(access_map, question.client_address, name))

        def looked_up(_result) -> None:
            found = plan.result
            if found.failed:
                log.error("%s: session configuration unusable, session refused: %s", question.session_id,
                          found.failure)
                answer("close", failure_reply(Stage.CONNECT, self.hostname))
                return
            if found.conf is not None:
                log.info("%s: session configuration from %s", question.session_id, found.key)
            answer(outcome, None, session_conf=found.conf)

        if self.driver.run(plan, looked_up):
            looked_up(plan.result)

    def _mail(self, question: Question, answer: Answer) -> None:
        session = self.sessions[question.session_id]
        if question.session_id in self._in_transaction:
            session.end()            # a new MAIL: the previous transaction is over
        settings = self.settings(question.server)
        sender = question.sender or ""
        plan = mail_plan(settings, sender)

        def checked(_result) -> None:
            reply = session.mail(sender, plan.result)
            if reply is None:
                self._in_transaction.add(question.session_id)
                answer("discard" if session.discard_transaction or session.discard_session else "ok", None)
            else:
                answer("close" if reply.code == 421 else "refused", reply)

        if self.driver.run(plan, checked):
            checked(plan.result)

    def _rcpt(self, question: Question, answer: Answer) -> None:
        session = self.sessions[question.session_id]
        settings = self.settings(question.server)
        mailbox = question.mailbox
        if mailbox is None:
            try:
                mailbox = parse_forward_path(f"<{question.recipient}>", smtputf8=True).mailbox
            except ValueError:
                answer("refused", R.BAD_RECIPIENT)
                return
        plan = rcpt_plan(settings, mailbox, question.client_address, session.grants)

        def checked(_result) -> None:
            verdict = session.rcpt(plan.result)
            if verdict.greylist and self.store is not None and settings.greylisting is not None:
                key = triplet(question.client_address, session.sender, verdict_address(plan.result),
                              settings.greylisting)
                verdict = verdict.with_greylisting(greylist_check(self.store, key, int(self.clock()),
                                                                  settings.greylisting))
            if verdict.reason:
                log.info("%s: rcpt %s: %s", question.session_id, question.recipient, verdict.reason)
            if verdict.accepted:
                answer("discard" if verdict.discard else "ok", None, copies(verdict.routes, plan.result.resolution))
            else:
                answer("close" if verdict.reply.code == 421 else "refused", verdict.reply)

        if self.driver.run(plan, checked):
            checked(plan.result)

    # -- DNS ------------------------------------------------------------------------------------

    def _client_name(self, address: str, done: Callable[[ResolveStatus, str], None]) -> None:
        """PTR, then each name's addresses: the client resolution (``cltresolve:``)."""
        def got_ptr(ptr) -> None:
            names = forward_names(ptr)
            if not names:
                done(*client_resolution(address, ptr, {}))
                return
            forward: dict = {}

            def got_addresses(name: str, result) -> None:
                forward[name] = result
                if len(forward) == len(names):
                    done(*client_resolution(address, ptr, forward))

            for name in names:
                self.resolver.resolve_addresses(name, lambda result, name=name: got_addresses(name, result))

        try:
            self.resolver.resolve_ptr(address, got_ptr)
        except ValueError:
            done(ResolveStatus.FAIL, "")

    def _dnsbl(self, settings: PolicySettings, address: str, done) -> None:
        from meta1.smar.plans import RecordsPlan
        answers: dict = {}
        lists = settings.dnsbl

        def got(name: str, result) -> None:
            answers[name] = answer_from_records(result)
            if len(answers) == len(lists):
                verdict = dnsbl_verdict(lists, answers)
                for warning in verdict.warnings + verdict.failed:
                    log.warning("DNSBL for %s: %s", address, warning)
                done(verdict)

        for entry in lists:
            name = query_name(address, entry.domain)
            self.resolver.run(RecordsPlan(name, "A"), lambda result, key=entry.name: got(key, result))


def copies(routes, resolution) -> tuple[tuple[str, str], ...]:
    """An accepted recipient's copies as (next hop, address): its routes, and each target
    that failed for good as next hop ``error:<reply>``, which qmgr bounces (a DSN naming
    the target and the recipient it came from, D-POL-21)."""
    failed = resolution.failures if resolution is not None else ()
    return (tuple((route.nexthop, route.address) for route in routes)
            + tuple((f"{ERROR_NEXTHOP}{reply_line(f.reply)}", f.address) for f in failed if not f.temporary))


def verdict_address(result) -> str:
    """The recipient address a recipient result is about (for the greylist triplet)."""
    return getattr(result, "address", "")


__all__ = ["Question", "PolicyService", "NoMaps", "reply_line", "is_loopback", "asks_smar", "qmgr_admits",
           "NO_ENTRY"]
