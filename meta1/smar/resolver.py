"""The resolver: smar's DNS lookups driven on meta1's event loop, never blocking.

Responsibilities
    Run the pure plans of :mod:`meta1.smar.plans` (what to ask) and
    :mod:`meta1.smar.exchange` (whom to ask, how, and what a reply means) with real
    sockets, timers and the cache, and hand each lookup's result to a callback:

        resolver = Resolver(loop, [("127.0.0.1", 53)], timeout=5)
        resolver.resolve_mx("example.org", on_mx)        # later: on_mx(MxResult)
        resolver.resolve_addresses("mx.example.org", on_addresses)
        resolver.resolve_ptr("192.0.2.1", on_ptr); resolver.resolve_txt(name, on_txt)

    Every call returns a :class:`Lookup` whose ``cancel()`` drops the callback. The
    callback is always called from the loop, never from inside the ``resolve_*`` call,
    even when the cache knows everything (a caller may hold locks or half-built state).

Data it owns
    * the exchanges in flight, by question: one :class:`_Exchange` (socket, timer, an
      :class:`~meta1.smar.exchange.ExchangePlan`) per distinct question, shared by every
      lookup that waits for it, so a burst of mail for one domain asks once;
    * the lookups in progress, and the :class:`~meta1.smar.cache.TtlCache`.

I/O
    * UDP: a new non-blocking socket per send, ``connect()``ed to the nameserver. The
      kernel picks a random source port and filters datagrams from other addresses, and
      an ICMP port-unreachable comes back as ECONNREFUSED, so a dead server is left at
      once instead of after a timeout. Every readable datagram goes to the plan, which
      ignores those that are not replies to its query (id, question).
    * TCP (after a truncated reply): a non-blocking connect, the query with its 2-octet
      length (RFC 1035 §4.2.2), one reply read up to its length, then the socket is
      closed (one query per connection; RFC 7766 allows reuse, not needed at our rate).
    * One timer per send, from the loop; a reply, an error or the timer ends the send,
      and the others are cancelled.

Clocks
    Timers use the loop's clock. The cache is given ``now_us()`` (default: the loop's
    clock in microseconds), so tests may age the cache without waiting.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from meta1.eventloop.loop import EventLoop, Timer
from meta1.machine import TraceSink
from meta1.smar.cache import TtlCache
from meta1.smar.exchange import ExchangePlan, Nameserver, Outcome, Question, Send
from meta1.smar.nameservers import DEFAULT_ATTEMPTS, ResolverSettings
from meta1.smar.plans import (
    AddressPlan, AddressResult, LookupPlan, MxPlan, MxResult, RecordsResult, ptr_plan, txt_plan,
)

logger = logging.getLogger("meta1.smar")

#: The largest DNS message (a UDP datagram or a TCP-framed message).
MAX_MESSAGE = 65535
#: Datagrams read per readiness event of one UDP socket (ignored ones included).
UDP_READ_BATCH = 16

SocketFactory = Callable[[int, int], socket.socket]


class Lookup:
    """One lookup in progress; :meth:`cancel` drops it (its callback is never called)."""

    __slots__ = ("plan", "callback", "cancelled", "finished", "waiting_on")

    def __init__(self, plan: LookupPlan, callback: Callable[[Any], object]) -> None:
        self.plan = plan
        self.callback = callback
        self.cancelled = False
        self.finished = False
        self.waiting_on: set[_Exchange] = set()

    def cancel(self) -> None:
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        for exchange in list(self.waiting_on):
            exchange.unsubscribe(self)
        self.waiting_on.clear()


class _Exchange:
    """The sockets and timer of one question's :class:`ExchangePlan`."""

    def __init__(self, resolver: Resolver, plan: ExchangePlan) -> None:
        self.resolver = resolver
        self.loop = resolver.loop
        self.plan = plan
        self.subscribers: list[Lookup] = []
        self.sock: socket.socket | None = None
        self.timer: Timer | None = None
        self.out = b""
        self.inbuf = bytearray()
        self.connected = False
        self.aborted = False

    def unsubscribe(self, lookup: Lookup) -> None:
        if lookup in self.subscribers:
            self.subscribers.remove(lookup)
        if not self.subscribers:
            self.abort()

    def abort(self) -> None:
        self.aborted = True
        self._close()
        self.resolver._forget(self)

    def start(self) -> None:
        if not self.aborted:
            self._step()

    def _step(self) -> None:
        self._close()
        send = self.plan.next_send()
        if send is None:
            self.resolver._exchange_done(self)
            return
        self.timer = self.loop.call_later(send.timeout, self._timed_out)
        family = socket.AF_INET6 if ":" in send.server[0] else socket.AF_INET
        try:
            self.sock = self.resolver.socket_factory(family, socket.SOCK_STREAM if send.tcp else socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            if send.tcp:
                self._start_tcp(send)
            else:
                self.sock.connect(send.server)
                self.sock.send(send.wire)
                self.loop.add_reader(self.sock, self._udp_readable)
        except OSError as exc:
            self._failed(exc)

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            self.loop.remove_reader(self.sock)
            self.loop.remove_writer(self.sock)
            self.sock.close()
            self.sock = None

    def _timed_out(self) -> None:
        self.timer = None
        self.plan.timed_out()
        self._step()

    def _failed(self, exc: OSError) -> None:
        self.plan.unreachable(exc.strerror or type(exc).__name__)
        self._step()

    def _reply(self, wire: bytes) -> bool:
        if self.plan.received(wire):
            self._step()
            return True
        return False

    # -- UDP ------------------------------------------------------------------------------

    def _udp_readable(self) -> None:
        sock = self.sock
        assert sock is not None
        for _ in range(UDP_READ_BATCH):
            try:
                data = sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._failed(exc)
                return
            if self._reply(data):
                return

    # -- TCP ------------------------------------------------------------------------------

    def _start_tcp(self, send: Send) -> None:
        assert self.sock is not None
        self.out = struct.pack("!H", len(send.wire)) + send.wire
        self.inbuf = bytearray()
        self.connected = False
        err = self.sock.connect_ex(send.server)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(err, os.strerror(err))
        self.loop.add_writer(self.sock, self._tcp_writable)

    def _tcp_writable(self) -> None:
        sock = self.sock
        assert sock is not None
        try:
            if not self.connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                self.connected = True
            sent = sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(exc)
            return
        self.out = self.out[sent:]
        if not self.out:
            self.loop.remove_writer(sock)
            self.loop.add_reader(sock, self._tcp_readable)

    def _tcp_readable(self) -> None:
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(MAX_MESSAGE + 2 - len(self.inbuf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(exc)
            return
        if not data:
            self._failed(OSError(errno.ECONNRESET, "connection closed before the reply"))
            return
        self.inbuf += data
        if len(self.inbuf) >= 2:
            (length,) = struct.unpack_from("!H", self.inbuf)
            if len(self.inbuf) >= 2 + length:
                self._reply(bytes(self.inbuf[2:2 + length]))


class Resolver:
    """Runs lookup plans over the nameservers; see the module documentation."""

    def __init__(self, loop: EventLoop, nameservers: Sequence[Nameserver], *, timeout: float = 5.0,
                 attempts: int = DEFAULT_ATTEMPTS, rng: random.Random | None = None,
                 cache: TtlCache | None = None, now_us: Callable[[], int] | None = None,
                 socket_factory: SocketFactory = socket.socket, want_ipv6: bool = True,
                 trace: TraceSink | None = None) -> None:
        if not nameservers:
            raise ValueError("the resolver needs at least one nameserver")
        self.loop = loop
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self.attempts = attempts
        self.rng = rng if rng is not None else random.SystemRandom()
        self.cache = cache if cache is not None else TtlCache()
        self.now_us = now_us if now_us is not None else (lambda: int(loop.time() * 1_000_000))
        self.socket_factory = socket_factory
        self.want_ipv6 = want_ipv6
        self.trace = trace
        self._inflight: dict[Question, _Exchange] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, loop: EventLoop, settings: ResolverSettings, **kwargs: Any) -> Resolver:
        """A resolver with the nameservers, timeout and attempts of smar's configuration."""
        return cls(loop, settings.nameservers, timeout=settings.timeout, attempts=settings.attempts,
                   **kwargs)

    @property
    def exchanges_in_flight(self) -> int:
        return len(self._inflight)

    # -- the lookups ------------------------------------------------------------------------

    def resolve_mx(self, domain: str, callback: Callable[[MxResult], object]) -> Lookup:
        """Where mail for ``domain`` goes (:class:`~meta1.smar.plans.MxResult`)."""
        return self.run(MxPlan(domain, want_ipv6=self.want_ipv6), callback)

    def resolve_addresses(self, host: str, callback: Callable[[AddressResult], object]) -> Lookup:
        """The addresses of ``host`` (:class:`~meta1.smar.plans.AddressResult`)."""
        return self.run(AddressPlan(host, want_ipv6=self.want_ipv6), callback)

    def resolve_ptr(self, address: str, callback: Callable[[RecordsResult], object]) -> Lookup:
        """The PTR names of an IP address (ValueError if ``address`` is not one)."""
        return self.run(ptr_plan(address), callback)

    def resolve_txt(self, name: str, callback: Callable[[RecordsResult], object]) -> Lookup:
        """The TXT strings of ``name``."""
        return self.run(txt_plan(name), callback)

    def run(self, plan: LookupPlan, callback: Callable[[Any], object]) -> Lookup:
        """Run any lookup plan; ``callback(plan.result)`` once it is done."""
        if self._closed:
            raise RuntimeError("resolver is closed")
        lookup = Lookup(plan, callback)
        self._advance(lookup, from_loop=False)
        return lookup

    def close(self) -> None:
        """Abort every exchange in flight; pending callbacks are never called."""
        self._closed = True
        for exchange in list(self._inflight.values()):
            for lookup in list(exchange.subscribers):
                lookup.cancel()
            exchange.abort()

    # -- running plans ----------------------------------------------------------------------

    def _advance(self, lookup: Lookup, from_loop: bool) -> None:
        plan = lookup.plan
        while (question := plan.next_query()) is not None:
            cached = self.cache.get(question, self.now_us())
            if cached is not None:
                plan.query_result(question, cached)
                continue
            exchange = self._inflight.get(question)
            if exchange is None:
                exchange = _Exchange(self, ExchangePlan(question, self.nameservers, timeout=self.timeout,
                                                        attempts=self.attempts, rng=self.rng,
                                                        trace=self.trace))
                self._inflight[question] = exchange
                self.loop.call_soon(exchange.start)
            exchange.subscribers.append(lookup)
            lookup.waiting_on.add(exchange)
        if plan.done:
            if from_loop:
                self._finish(lookup)
            else:
                self.loop.call_soon(lambda: self._finish(lookup))

    @staticmethod
    def _finish(lookup: Lookup) -> None:
        if lookup.cancelled or lookup.finished:
            return
        lookup.finished = True
        lookup.callback(lookup.plan.result)

    def _exchange_done(self, exchange: _Exchange) -> None:
        self._forget(exchange)
        outcome = exchange.plan.outcome
        assert outcome is not None
        question = exchange.plan.question
        self.cache.put(question, outcome, self.now_us())
        for lookup in list(exchange.subscribers):
            lookup.waiting_on.discard(exchange)
            if lookup.cancelled:
                continue
            self._deliver(lookup, question, outcome)

    def _deliver(self, lookup: Lookup, question: Question, outcome: Outcome) -> None:
        try:
            lookup.plan.query_result(question, outcome)
            self._advance(lookup, from_loop=True)
        except Exception:
            # One lookup's broken callback must not keep the others of this question waiting.
            logger.exception("lookup %r failed", lookup.plan)

    def _forget(self, exchange: _Exchange) -> None:
        if self._inflight.get(exchange.plan.question) is exchange:
            del self._inflight[exchange.plan.question]
