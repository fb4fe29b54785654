"""smar, the address resolver daemon: routes for qmgr, from DNS, without blocking.

Responsibilities
    * Listen on ``smar/smarqmgr`` in the queue directory for qmgr (qmgr is the client:
      its ``wait_for_server`` is how long it waits for smar at start).
    * Answer every :class:`~meta1.ipc.records.RouteRequest` with one
      :class:`~meta1.ipc.records.RouteResult`: the domain's mail exchangers in preference
      order with their addresses (:meth:`Resolver.resolve_mx`: MX, implicit MX, null MX,
      CNAMEs, "good enough" when any exchanger has an address — spec/smar.md), or a
      temporary or permanent failure with its enhanced status code.
    * An address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, RFC 5321 §4.1.3) is its
      own route: no DNS. A bracketed host name (``[mx.example.org]``, a mailertable's
      "no MX lookup") is routed to that host's addresses (:meth:`Resolver.resolve_addresses`).
    * Answer every :class:`~meta1.ipc.records.PolicyCheck` qmgr passes on from smtps
      (:mod:`meta1.smar.policy`).

Strategy
    Requests are independent and answered as they complete, not in order; each carries
    qmgr's ``request_id``. The resolver shares identical questions in flight and caches
    answers by their TTL, so qmgr may ask for every delivery without a cache of its own
    (``ttl`` in the answer is 0: "ask again"). Nothing here blocks: the resolver's
    sockets and timers run on the daemon's event loop.

Start-up (B62)
    Without a nameserver — none configured and ``use_resolvconf`` off, or a resolv.conf
    without one — smar refuses to start: the error names the option, the exit status is
    78 (EX_CONFIG), so a supervisor does not restart it until the configuration changes.
"""

from __future__ import annotations

import ipaddress
import logging
import signal

from meta1.eventloop import EventLoop
from meta1.ipc.records import Exchanger, PolicyCheck, RouteRequest, RouteResult
from meta1.queue.layout import QueueLayout
from meta1.runtime.link import LinkServer, RecordLink
from meta1.runtime.process import announce_ready, run_loop, trace_sink
from meta1.smar.cache import TtlCache
from meta1.smar.nameservers import RESOLV_CONF, load_resolver_settings
from meta1.smar.plans import AddressResult, MxResult
from meta1.smar.policy import SmarPolicy
from meta1.smar.resolver import Resolver

log = logging.getLogger("meta1.smar")


def address_literal_route(request: RouteRequest) -> RouteResult | None:
    """The route of an address-literal domain, or None if ``domain`` is a name."""
    domain = request.domain
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        if domain[1:-1] == text and text and not text.isdigit() and ":" not in text:
            return None             # "[host]" from a mailertable: the host's addresses
        return RouteResult(request.request_id, domain, "permanent", (), "5.1.2",
                           f"bad address literal {domain}", 0)
    return RouteResult(request.request_id, domain, "ok", (Exchanger(0, domain, (address,)),),
                       "2.0.0", "address literal", 0)


def route_result(request_id: int, result: MxResult) -> RouteResult:
    """The IPC answer for a resolver's MX result (exchangers without address included:
    qmgr and the logs may say why one was skipped)."""
    exchangers = tuple(Exchanger(x.preference, x.name, tuple(x.addresses)) for x in result.exchangers)
    return RouteResult(request_id, result.domain, result.verdict.value, exchangers,
                       result.status, result.reason, 0)


class AddressResolver:
    """The smar process: the qmgr listener and the DNS resolver."""

    def __init__(self, config, *, loop: EventLoop | None = None, resolv_conf: str = RESOLV_CONF):
        self.config = config
        self.loop = loop or EventLoop()
        self.layout = QueueLayout(config.queue_directory, config.cdb_base_directory)
        self.layout.ensure()
        settings = load_resolver_settings(config.smar, resolv_conf)   # NoNameserverError: B62
        self.nameservers = settings.nameservers
        self.resolver = Resolver.from_settings(self.loop, settings, cache=TtlCache(), trace=trace_sink(config))
        self.qmgr = LinkServer(self.loop, self.layout.smar_socket, role="smar", peer_role="qmgr",
                               on_record=self._record)
        self.policy = SmarPolicy(config, self.loop, self.resolver, trace=trace_sink(config))

    def _record(self, link: RecordLink, record: object) -> None:
        if isinstance(record, PolicyCheck):
            self.policy.check(link, record)
            return
        if not isinstance(record, RouteRequest):
            log.error("unexpected record %s from qmgr; closing the link", type(record).__name__)
            link.close()
            return
        literal = address_literal_route(record)
        if literal is not None:
            link.send(literal)
            return

        def answer(result: MxResult) -> None:
            log.info("route %s: %s %s %s", result.domain, result.verdict.value, result.status,
                     ", ".join(f"{x.preference} {x.name}" for x in result.usable) or result.reason)
            if not link.closed:
                link.send(route_result(record.request_id, result))

        if record.domain.startswith("["):
            # A mailertable's "[host]": the host itself, no MX lookup (D-POL-21).
            host = record.domain[1:-1]

            def answer_host(result: AddressResult) -> None:
                log.info("route %s: %s %s %s", record.domain, result.verdict.value, result.status,
                         " ".join(result.addresses) or result.reason)
                if not link.closed:
                    exchangers = (Exchanger(0, host, result.addresses),) if result.addresses else ()
                    link.send(RouteResult(record.request_id, record.domain, result.verdict.value, exchangers,
                                          result.status, result.reason, 0))

            self.resolver.resolve_addresses(host, answer_host)
            return
        self.resolver.resolve_mx(record.domain, answer)

    def start(self) -> None:
        self.policy.start()
        self.qmgr.start()
        self.loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        self.loop.add_signal_handler(signal.SIGINT, self.shutdown)
        announce_ready(log, "nameservers %s; qmgr socket %s",
                       ", ".join(f"{host}:{port}" for host, port in self.nameservers), self.layout.smar_socket)

    def shutdown(self) -> None:
        log.info("shutting down")
        self.qmgr.close()
        self.loop.call_soon(self.loop.stop)

    def run(self) -> None:
        self.start()
        run_loop(self.loop, self._close, log)

    def _close(self) -> None:
        self.policy.close()
        self.resolver.close()


def serve(config) -> int:
    AddressResolver(config).run()
    return 0
