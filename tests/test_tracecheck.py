"""Trace validation: a real relay run (smtps, qmgr, smar, smtpc) writes every transition
of every machine to ``trace_file``; meta1.tools.tracecheck finds each one a row of its
table, each instance's records chained, and smtpc's deliveries among qmgr's
transactions. Tampered traces are caught."""

from __future__ import annotations

import json
import os

import pytest

from dnsserver import DnsServer
from meta1.tools.tracecheck import check
from mta import MTA, wait_for
from test_delivery import ZONES, send
from test_smtpc_interop import _wait_dumps, needs_sink, sink  # noqa: F401 (fixture)


@pytest.fixture
def traced_relay_run(tmp_path, sink) -> MTA:  # noqa: F811
    """A relay run (smtps, qmgr, smar, smtpc to smtp-sink) with ``trace_file =
    trace.ndjson``: one message delivered to two recipients, one bounced, whose DSN is
    delivered too. Returns the stopped MTA; its logs are ``base/*.log``. (Also used by
    tests/test_trace.py.)"""
    server = sink()
    with DnsServer(ZONES) as dns:
        host, port = dns.address
        mta = MTA(tmp_path, extra_global=(f"trace_file = trace.ndjson;\n"
                                          f"smar {{ nameserver = {{ {host}:{port} }}; DNS_timeout = 2; }}\n"
                                          f"smtpc {{ remote_port = {server.port}; IO_timeout = 10s; }}\n"
                                          "qmgr { min_queue_delay = 1h; }\n"))
        with mta:
            mta.spawn("smar")
            mta.spawn("smtpc")
            mta.wait_log("qmgr", "smtpc connected")
            send(mta, "sender@example.test", ["rcpt@example.test", "second@example.test"])
            send(mta, "sender@example.test", ["nobody@unknown.test"])      # bounces: a DSN goes out too
            _wait_dumps(server, 2)
            wait_for(lambda: not mta.content_files(), timeout=30, what="every message done")
    return mta


@needs_sink
def test_a_relay_run_is_row_by_row_its_tables(traced_relay_run) -> None:
    lines = (traced_relay_run.queue / "trace.ndjson").read_text().splitlines()
    report = check(lines)
    assert report.ok, report.text()
    assert {"smtps-session", "qmgr-recipient", "smtpc-plan", "smtpc-session", "smar-exchange"} <= set(
        report.per_machine), report.per_machine
    finals = {json.loads(line)["new"] for line in lines if '"qmgr-recipient"' in line}
    assert {"DELIVERED", "BOUNCED"} <= finals


GOOD = [
    {"daemon": "qmgr", "machine": "qmgr-recipient", "id": "S00000000000000A700-0000",
     "old": "INCOMING", "input": "ADMIT", "new": "ROUTING", "time": 1},
    {"daemon": "qmgr", "machine": "qmgr-recipient", "id": "S00000000000000A700-0000",
     "old": "ROUTING", "input": "ROUTED", "new": "READY", "time": 2},
]


def lines(records) -> list[str]:
    return [json.dumps(r) for r in records]


def test_a_step_that_is_no_row_is_caught() -> None:
    assert check(lines(GOOD)).ok
    wrong = dict(GOOD[1], new="DELIVERED")
    report = check(lines([GOOD[0], wrong]))
    assert not report.ok and "ROUTING --ROUTED--> DELIVERED is no row (the table says READY)" in report.text()


def test_a_gap_in_an_instance_is_caught() -> None:
    report = check(lines([GOOD[1]] + [dict(GOOD[1], time=3)]))
    assert "was READY, the record starts from ROUTING" in report.text()


def test_a_delivery_qmgr_never_scheduled_is_caught() -> None:
    plan = {"daemon": "smtpc", "machine": "smtpc-plan", "id": "S00000000000000B800/3", "old": "CHOOSING",
            "input": "NEXT", "new": "CONNECTING", "time": 4}
    report = check(lines(GOOD + [plan]))
    assert "smtpc delivered transaction S00000000000000B800, which qmgr never scheduled" in report.text()


def test_garbage_and_unknown_machines_are_violations() -> None:
    report = check(["{not json", json.dumps(dict(GOOD[0], machine="nonsense"))])
    assert len(report.violations) == 2


def test_a_trace_file_that_cannot_be_written_stops_the_trace_not_the_daemon(monkeypatch, caplog) -> None:
    """/dev/full answers every write with ENOSPC: the sink logs once and goes quiet."""
    from meta1.runtime.process import TRACE_FD_ENV, trace_sink
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        monkeypatch.setenv(TRACE_FD_ENV, str(fd))
        sink = trace_sink(config=None)
        for _ in range(3):
            sink(GOOD[0])
    finally:
        os.close(fd)
    assert [r.getMessage() for r in caplog.records] == [
        "trace_file: No space left on device; this process writes no more trace records"]
