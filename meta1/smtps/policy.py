"""smtps' side of the policy checks: a verdict for each :class:`CheckPolicy` a session asks.

Responsibilities
    A session asks for a verdict on its client (at connect), its sender (MAIL) and each
    recipient (RCPT) and waits (:mod:`meta1.smtps.session`). :class:`PolicyClient` gets
    the verdict and hands it back with ``session.policy_result``. The decisions themselves
    are smar's (spec/policy.md): the access map, local users, aliases, relaying.

Strategy
    In this version no policy is configured yet, so every check is answered at once with
    ``Outcome.OK``, returned straight to the session (``Services.policy``), so a check
    costs a function call. When smar's policy lands, checks that
    need a map go to qmgr (which asks smar) and wait, and checks that need none are
    answered here by the same pure core.
"""

from __future__ import annotations

from meta1.smtps.session import CheckPolicy, Outcome


class PolicyClient:
    """See the module docstring; ``server`` is the SmtpServer."""

    def __init__(self, server):
        self.server = server

    def check(self, session, request: CheckPolicy):
        """The verdict on ``request`` if known at once, else None (asked elsewhere; the
        answer then comes through ``session.policy_result``)."""
        return Outcome.OK, None
