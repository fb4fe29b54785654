"""smtps' side of the policy checks: a verdict for each :class:`CheckPolicy` a session asks.

Responsibilities
    A session asks for a verdict on its client (at connect), its sender (MAIL) and each
    recipient (RCPT) and waits (:mod:`meta1.smtps.session`). :class:`PolicyClient` gets
    the verdict and hands it back: at once (``Services.policy`` returns it), or later
    through ``session.policy_result``. The decisions are smar's (spec/policy.md).

Where the verdict comes from
    * A configuration that gives smar nothing to look up for sessions (no access map, no
      local users, aliases, mailertable, DNS lists or greylisting) leaves nothing to ask:
      the same policy core (:class:`meta1.policy.service.PolicyService`, without maps)
      decides here, at once — local domains, the relay rule, loopback clients.
    * Otherwise the check goes to qmgr (which passes it to smar, DESIGN.md) as a
      :class:`~meta1.ipc.records.PolicyCheck`, and the :class:`PolicyVerdict` comes back
      on the same link. qmgr not connected, the link lost, or no answer within
      ``IO_timeout``: a temporary failure (``421 4.3.0`` at connect, ``451 4.3.0`` at
      MAIL/RCPT), never "ok". When a session that asked smar ends, smar is told
      (stage "end") so that it can forget the session.
    * With ``qmgr { config_map }`` qmgr admits every new session (``icm:``, ``icr:``,
      :mod:`meta1.qmgr.admission`): the connect check always goes to qmgr, and the end
      always follows, so that qmgr counts the session from its admission to its end. When
      smar has nothing to check, qmgr answers the connect check itself ("ok", or the
      ``421`` of a refusal) and the checks of the session — connect included — are then
      made here as above (D-POL-22).

The session's own settings
    A connect verdict may carry the options of the client's ``smtps_session_conf:``
    entry, parsed and checked by smar (D-POL-26). They become the session's
    :class:`~meta1.smtps.session.Settings` (:meth:`PolicyClient.session_settings`: this
    server's section with the entry's options laid over), which the session takes before
    its greeting.
"""

from __future__ import annotations

import logging

from meta1.ipc.records import PolicyCheck, PolicyVerdict, ResolvedRecipient, SessionConf
from meta1.smtp import R, reply_from_line
from meta1.policy.service import NoMaps, PolicyService, Question
from meta1.smtps.session import CheckPolicy, Outcome, Settings

log = logging.getLogger("meta1.smtps")

OUTCOMES = {"ok": Outcome.OK, "refused": Outcome.REFUSED, "close": Outcome.CLOSE, "discard": Outcome.DISCARD}
UNAVAILABLE = {"connect": (Outcome.CLOSE, "421 4.3.0 policy service not available; try again later"),
               "mail": (Outcome.REFUSED, "451 4.3.0 policy service not available; try again later"),
               "rcpt": (Outcome.REFUSED, "451 4.3.0 policy service not available; try again later")}


class PolicyClient:
    """See the module docstring; ``server`` is the SmtpServer (its loop, its qmgr link,
    its connections by session id); ``remote``: smar checks the sessions; ``admitted``:
    qmgr admits each new session."""

    def __init__(self, server, remote: bool, admitted: bool = False):
        self.server = server
        self.remote = remote
        self.admitted = admitted
        # Nothing for smar to look up: the same policy (local domains, the relay rule,
        # loopback clients) decided here, at once (module docstring).
        self.local = None if remote else PolicyService(server.config, server.settings.hostname, driver=NoMaps())
        self.timeout = server.settings.io_timeout
        self.pending: dict[int, tuple[str, object, CheckPolicy]] = {}   # request id -> (session id, timer, check)
        self.asked: set[str] = set()                          # sessions qmgr (and smar) know
        self._ids = iter(range(1, 1 << 62))

    def check(self, session, request: CheckPolicy):
        """The verdict on ``request`` if known at once, else None (asked of qmgr/smar)."""
        if not self.remote and not (self.admitted and request.stage == "connect"):
            return self._decide_here(session, request)
        qmgr = self.server.qmgr
        if not qmgr.ready:
            return self._unavailable(session.id, request.stage, "qmgr not connected")
        request_id = next(self._ids)
        timer = self.server.loop.call_later(self.timeout, lambda: self._expire(request_id))
        self.pending[request_id] = (session.id, timer, request)
        self.asked.add(session.id)
        qmgr.client.send(PolicyCheck(request_id, session.id, request.stage, session.client_address,
                                     session.client_port, session.helo or "", request.sender, request.recipient,
                                     False, self.server.name or ""))
        return None

    def verdict(self, record: PolicyVerdict) -> None:
        """From qmgr: the answer to one of our checks."""
        entry = self.pending.pop(record.request_id, None)
        if entry is None:
            return                      # expired meanwhile: answered already
        session_id, timer, request = entry
        timer.cancel()
        try:
            outcome = OUTCOMES[record.outcome]
            reply = reply_from_line(record.reply) if record.reply else None
        except (KeyError, ValueError):
            log.error("%s: unusable policy verdict %r %r", session_id, record.outcome, record.reply[:80])
            outcome, reply = Outcome.CLOSE, R.LOCAL_ERROR.format(hostname=self.server.settings.hostname)
        routes, settings = record.routes, self.session_settings(record.session_conf)
        if outcome is Outcome.OK and not self.remote:
            # qmgr admitted the session; the checks are ours (module docstring).
            connection = self.server.connection_of(session_id)
            if connection is None or connection.session is None:
                return
            outcome, reply, routes, settings = self._decide_here(connection.session, request)
        self._deliver(session_id, outcome, reply, routes, settings)

    def session_settings(self, conf: SessionConf | None) -> Settings | None:
        """The settings of a session whose client has an ``smtps_session_conf:`` entry:
        this server's, with the options smar parsed and checked laid over (D-POL-26)."""
        if conf is None:
            return None
        return Settings.from_config(self.server.node, self.server.settings.hostname, conf)

    def link_lost(self) -> None:
        for request_id in list(self.pending):
            self._expire(request_id)

    def session_ended(self, session) -> None:
        if self.local is not None:
            self.local.end(session.id)
        if session.id in self.asked:
            self.asked.discard(session.id)
            if self.server.qmgr.ready:
                self.server.qmgr.client.send(PolicyCheck(0, session.id, "end", session.client_address,
                                                         session.client_port, "", None, None, False,
                                                         self.server.name or ""))

    def _decide_here(self, session, request: CheckPolicy):
        """The verdict of the policy core run here, without maps (at once)."""
        verdict: list = []
        self.local.ask(Question(session.id, request.stage, session.client_address, session.helo or "",
                                request.sender, request.recipient, False, self.server.name, request.mailbox),
                       lambda outcome, reply, routes=(), session_conf=None: verdict.append(
                           (OUTCOMES[outcome], reply, tuple(ResolvedRecipient(*route) for route in routes),
                            self.session_settings(session_conf))))
        return verdict[0]

    def _expire(self, request_id: int) -> None:
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return
        session_id, timer, request = entry
        timer.cancel()
        connection = self.server.connection_of(session_id)
        if connection is None:
            return
        outcome, reply = self._unavailable(session_id, request.stage, "no verdict from qmgr/smar")
        connection.apply(connection.session.policy_result(outcome, reply))

    def _unavailable(self, session_id: str, stage: str, why: str):
        log.warning("%s: policy check at %s not possible: %s", session_id, stage, why)
        outcome, line = UNAVAILABLE[stage]
        return outcome, reply_from_line(line)

    def _deliver(self, session_id: str, outcome: Outcome, reply, routes=(), settings=None) -> None:
        connection = self.server.connection_of(session_id)
        if connection is not None and connection.session is not None:
            connection.apply(connection.session.policy_result(outcome, reply, routes, settings))
