"""Micro-benchmarks of the policy core smtps runs for every message (pytest-benchmark).

    python3 -m pytest benchmarks/bench_policy.py

Not part of the test suite (it asserts nothing about time); run it to compare changes.
On a configuration without maps smtps decides connect, MAIL and RCPT itself
(:class:`meta1.policy.service.PolicyService` over ``NoMaps``, D-POL-19): that is on the
accept path of every message, so its cost per message is a share of smtps's CPU.
With an access map the same core runs in smar, whose lookups are answered here from an
inline map.
"""

from __future__ import annotations

import itertools

import pytest

from meta1.config import load_default, load_text
from meta1.maps.driver import MapDriver, open_maps
from meta1.policy.service import NoMaps, PolicyService, Question
from meta1.smtp.address import parse_forward_path

RECIPIENT = "user@example.net"
MAILBOX = parse_forward_path(f"<{RECIPIENT}>", smtputf8=False).mailbox
ACCESS_MAP = """
smar { map acc { type = inline; entries = { "cltaddr:10. REJECT", "from:spam.example REJECT",
                                             "to:example.net RELAY" }; }
       access_map { name = acc; } }
"""


def one_message(service: PolicyService, ids, mailbox=None) -> None:
    """connect, MAIL, RCPT and the session's end, as smtps asks them."""
    session = f"S{next(ids)}"
    outcomes = []
    answer = lambda outcome, reply, routes=(), session_conf=None: outcomes.append(outcome)  # noqa: E731
    service.ask(Question(session, "connect", "127.0.0.1"), answer)
    service.ask(Question(session, "mail", "127.0.0.1", "client", sender="sender@example.org"), answer)
    service.ask(Question(session, "rcpt", "127.0.0.1", "client", sender="sender@example.org",
                         recipient=RECIPIENT, mailbox=mailbox), answer)
    service.end(session)
    assert outcomes == ["ok", "ok", "ok"], outcomes


@pytest.mark.benchmark(group="policy")
def test_one_message_without_maps(benchmark, tmp_path) -> None:
    service = PolicyService(load_default(home=str(tmp_path)), "mx.example", driver=NoMaps())
    benchmark(one_message, service, itertools.count(), MAILBOX)


@pytest.mark.benchmark(group="policy")
def test_one_message_with_an_inline_access_map(benchmark, tmp_path) -> None:
    config = load_text(f'queue_directory = "{tmp_path}";\n' + ACCESS_MAP, "bench.conf")
    from meta1.eventloop import EventLoop
    loop = EventLoop()
    driver = MapDriver(open_maps(config, loop))     # an inline map answers within the call
    service = PolicyService(config, "mx.example", driver=driver)
    try:
        benchmark(one_message, service, itertools.count())
    finally:
        loop.close()
