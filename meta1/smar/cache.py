"""A bounded TTL cache of DNS outcomes, positive and negative.

Responsibilities
    Remember what a question gave (:class:`meta1.smar.exchange.Outcome`) for as long as
    the DNS says it may be remembered, so that a queue full of mail for one domain costs
    one MX lookup, not one per message. The time is passed in (``now_us``, integer
    microseconds on any clock that does not go backwards); nothing here reads a clock.

Data it owns
    An ``OrderedDict`` from :class:`~meta1.smar.exchange.Question` to ``(expires_us,
    outcome)`` in least-recently-used order, at most ``max_entries`` long.

Strategies and why
    * Positive answers live for the smallest TTL of the answer section's records (the
      CNAME chain included: the answer is only as good as its weakest link), at most
      ``max_ttl``.
    * Negative answers — NXDOMAIN and NOERROR without records (NODATA) — live for
      ``min(SOA TTL, SOA MINIMUM)`` of the SOA in the authority section (RFC 2308 §5),
      at most ``max_negative_ttl`` (RFC 2308 §5 suggests 1–3 hours as the ceiling); a
      negative answer without an SOA is not cached (RFC 2308 §5: "SHOULD NOT be cached").
    * Temporary failures are never cached (D-SMAR-6): qmgr already waits before it asks
      again, and a cached SERVFAIL would keep failing mail after the resolver recovered.
    * A TTL of 0 means "use once" (RFC 1035 §3.2.1): not cached.
    * When full, the least recently used entry goes. Expired entries are dropped when met
      (lookup) or when they reach the old end; the bound holds either way.
"""

from __future__ import annotations

from collections import OrderedDict

import dns.message
import dns.rdatatype

from meta1.smar.exchange import Outcome, Question, Status

MICROSECONDS = 1_000_000


def negative_ttl(message: dns.message.Message) -> int | None:
    """RFC 2308 §5: ``min(SOA TTL, SOA MINIMUM)`` of the authority section's SOA, or None."""
    for rrset in message.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(rrset.ttl, min(rdata.minimum for rdata in rrset))
    return None


def positive_ttl(message: dns.message.Message, question: Question) -> int | None:
    """The smallest TTL of the answer section if it holds records of the asked type, else None."""
    if any(rrset.rdtype == question.rdtype for rrset in message.answer):
        return min(rrset.ttl for rrset in message.answer)
    return None


class TtlCache:
    """A bounded LRU cache of outcomes by question; see the module documentation."""

    def __init__(self, max_entries: int = 10_000, *, max_ttl: int = 86_400,
                 max_negative_ttl: int = 3 * 3600) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[Question, tuple[int, Outcome]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, question: Question, now_us: int) -> Outcome | None:
        """The cached outcome for ``question`` if it has not expired at ``now_us``."""
        entry = self._entries.get(question)
        if entry is None:
            return None
        expires_us, outcome = entry
        if now_us >= expires_us:
            del self._entries[question]
            return None
        self._entries.move_to_end(question)
        return outcome

    def put(self, question: Question, outcome: Outcome, now_us: int) -> bool:
        """Remember ``outcome`` if the DNS allows it; True if it was cached."""
        message = outcome.message
        if outcome.status is Status.TEMPFAIL or message is None:
            return False
        ttl = positive_ttl(message, question) if outcome.status is Status.ANSWER else None
        if ttl is not None:
            ttl = min(ttl, self.max_ttl)
        else:
            ttl = negative_ttl(message)
            if ttl is None:
                return False
            ttl = min(ttl, self.max_negative_ttl)
        if ttl <= 0:
            return False
        self._entries[question] = (now_us + ttl * MICROSECONDS, outcome)
        self._entries.move_to_end(question)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def expire(self, now_us: int) -> int:
        """Drop every entry expired at ``now_us``; the number dropped."""
        dead = [q for q, (expires_us, _) in self._entries.items() if now_us >= expires_us]
        for question in dead:
            del self._entries[question]
        return len(dead)
