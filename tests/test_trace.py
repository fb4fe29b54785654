"""``meta1 trace``'s reading of the logs (pure): which lines belong to a message, their
stages, the DSNs it caused, the summary; with ``trace_file``, the transitions of the
message's machine instances — on recorded lines, and end to end on a real relay run."""

from __future__ import annotations

import json
import re

from meta1.tools.trace import format_events, format_transitions, main, trace, transitions
from test_smtpc_interop import needs_sink, sink  # noqa: F401 (fixture)
from test_tracecheck import traced_relay_run  # noqa: F401 (fixture)

TA = "S000661D35AD3F42700"
SESSION = "S000661D35AD3F42600"
OTHER = "S000661D35AD3F42800"
DSN = "S000661D35ACE6B05FF"
LOG = f"""\
2026-12-04T18:50:54.100Z smtps[1]: {SESSION}: connect from [127.0.0.1]:38800
2026-12-04T18:50:54.101Z smtps[1]: {SESSION}: ta={TA} mail from=<a@home.test>
2026-12-04T18:50:54.102Z smtps[1]: {SESSION}: ta={TA} accepted size=300 nrcpts=2
2026-12-04T18:50:54.103Z smtps[1]: {SESSION}: ta={OTHER} mail from=<b@home.test>
2026-12-04T18:50:54.103Z qmgr[2]: {TA}: queued from=<a@home.test> size=300 nrcpts=2
2026-12-04T18:50:54.104Z smtps[1]: {SESSION}: disconnect from [127.0.0.1]:38800 (quit) commands=9 transactions=2 errors=0
2026-12-04T18:50:54.104Z qmgr[2]: {OTHER}: queued from=<b@home.test> size=30 nrcpts=1
Traceback (most recent call last):
2026-12-04T18:50:54.105Z qmgr[2]: {TA}: scheduled: delivery 1 of 2 recipients to far.test via mx.far.test [127.0.0.1]
2026-12-04T18:50:54.107Z smtpc[3]: {TA}-0000: to=<x@far.test> relay=mx.far.test [127.0.0.1]:25 code=250 status=2.0.0 ok
2026-12-04T18:50:54.107Z smtpc[3]: {TA}-0001: to=<y@far.test> relay=mx.far.test [127.0.0.1]:25 code=550 status=5.1.1 no
2026-12-04T18:50:54.109Z qmgr[2]: {TA}: DSN {DSN} queued to <a@home.test>
2026-12-04T18:50:54.108Z qmgr[2]: {TA}-0000: delivered: 250 2.0.0 ok
2026-12-04T18:50:54.110Z qmgr[2]: {TA}-0001: bounced: 550 5.1.1 no
2026-12-04T18:50:54.111Z qmgr[2]: {TA}: removed (every recipient is done)
2026-12-04T18:50:54.112Z qmgr[2]: {DSN}: scheduled: delivery 2 of 1 recipient to home.test via mx.home.test [::1]
2026-12-04T18:50:54.113Z qmgr[2]: {DSN}-0000: delivered: 250 ok
"""


def test_the_lines_of_one_message_its_session_and_its_dsn_in_time_order() -> None:
    events = trace(LOG.splitlines(), TA)
    assert [e.stage for e in events] == ["connected", "MAIL", "accepted", "queued", "disconnected", "scheduled",
                                         "reply", "reply", "delivered", "DSN", "bounced", "done", "scheduled",
                                         "delivered"]
    assert all(OTHER not in e.text for e in events)
    assert [e.daemon for e in events][:4] == ["smtps", "smtps", "smtps", "qmgr"]
    assert [e.time for e in events] == sorted(e.time for e in events)


def test_the_summary_counts_the_messages_own_recipients() -> None:
    text = format_events(trace(LOG.splitlines(), TA), TA)
    assert text.splitlines()[-1] == f"{TA}: 1 delivered, 1 bounced; done"
    assert f"{TA}-0000" in text and DSN in text


def test_an_unknown_id_has_no_events() -> None:
    assert trace(LOG.splitlines(), "S0000000000000000000") == []
    assert format_events([], "S0000000000000000000") == "S0000000000000000000: no log line names it\n"


# -- the machine transitions (trace_file) ----------------------------------------------------------

def record(machine: str, instance: str, old: str, input: str, new: str, daemon: str = "qmgr") -> str:
    return json.dumps({"daemon": daemon, "machine": machine, "id": instance, "old": old, "input": input,
                       "new": new, "time": None})


RECORDS = [
    record("smtps-session", SESSION, "CONNECTED", "START", "CHECKING_CLIENT", "smtps"),
    record("qmgr-recipient", f"{TA}-0001", "INCOMING", "ADMIT", "ROUTING"),
    record("qmgr-recipient", f"{OTHER}-0000", "INCOMING", "ADMIT", "ROUTING"),
    "not a record",
    record("smar-exchange", "far.test. MX", "CHOOSING", "SEND", "UDP_WAIT", "smar"),
    record("smtpc-session", "127.0.0.1:25/1", "CONNECTING", "CONNECTED", "GREETING", "smtpc"),
    record("smtpc-plan", f"{TA}/7", "CHOOSING", "CANDIDATE", "CONNECTING", "smtpc"),
    record("qmgr-recipient", f"{DSN}-0000", "INCOMING", "ADMIT", "ROUTING"),
]


def test_the_transitions_of_the_messages_own_instances_in_file_order() -> None:
    wanted = {TA, SESSION, DSN}
    found = transitions(RECORDS, wanted)
    assert [(r["machine"], r["id"]) for r in found] == [
        ("smtps-session", SESSION), ("qmgr-recipient", f"{TA}-0001"), ("smtpc-plan", f"{TA}/7"),
        ("qmgr-recipient", f"{DSN}-0000")]
    text = format_transitions(found, "trace.ndjson")
    assert f"qmgr   qmgr-recipient  {TA}-0001 INCOMING --ADMIT--> ROUTING" in text
    assert text.splitlines()[-1] == "4 transitions of 4 machine instances"
    assert format_transitions([], "t.ndjson") == "no machine transition in t.ndjson names it\n"


def test_with_trace_file_the_transitions_follow_the_story(tmp_path, capsys) -> None:
    log = tmp_path / "meta1.log"
    log.write_text(LOG)
    traced = tmp_path / "trace.ndjson"
    traced.write_text("\n".join(RECORDS) + "\n")
    assert main(TA, [str(log)], str(traced)) == 0
    story, transitions_part = capsys.readouterr().out.split("\n\n")
    assert story.splitlines()[-1] == f"{TA}: 1 delivered, 1 bounced; done"
    assert transitions_part.splitlines()[-1] == "4 transitions of 4 machine instances"
    # An unreadable trace file leaves the story standing.
    assert main(TA, [str(log)], str(tmp_path / "missing.ndjson")) == 0
    captured = capsys.readouterr()
    assert "machine transitions" not in captured.out and "missing.ndjson" in captured.err


# -- end to end: a relay run with trace_file -------------------------------------------------------

@needs_sink
def test_a_bounced_message_and_its_dsn_through_the_machines(traced_relay_run) -> None:
    mta = traced_relay_run
    logs = mta.all_logs()
    bounced = re.search(r"(S[0-9A-F]{18})-0000: bounced", logs)[1]
    session = re.search(rf"(S[0-9A-F]{{18}}): ta={bounced} accepted", logs)[1]
    dsn = re.search(rf"{bounced}: DSN (S[0-9A-F]{{18}}) queued", logs)[1]
    result = mta.meta1("trace", "-f", str(mta.config),
                       *[arg for path in sorted(mta.base.glob("*.log")) for arg in ("--log", str(path))], bounced)
    assert result.returncode == 0, result.stderr
    story, transitions_part = result.stdout.split("\n\n")
    assert story.splitlines()[-1] == f"{bounced}: 1 bounced; done"
    rows = transitions_part.splitlines()[1:-1]
    instances = {tuple(row.split()[1:3]) for row in rows}
    plans = {instance for machine, instance in instances if machine == "smtpc-plan"}
    # Its session, its recipient, and the DSN it caused: the recipient and smtpc's plan.
    assert instances == {("smtps-session", session), ("qmgr-recipient", f"{bounced}-0000"),
                         ("qmgr-recipient", f"{dsn}-0000")} | {("smtpc-plan", plan) for plan in plans}
    assert plans and all(plan.startswith(f"{dsn}/") for plan in plans)
    assert f"{bounced}-0000 ROUTING --BOUNCE--> BOUNCED" in transitions_part
    assert f"{dsn}-0000 ACTIVE --DELIVERED--> DELIVERED" in transitions_part
    assert rows[0].endswith("CONNECTED --START--> CHECKING_CLIENT")
    # Every row is a record of the trace file, in the file's order.
    recorded = [json.loads(line) for line in (mta.queue / "trace.ndjson").read_text().splitlines()]
    shown = [(r["machine"], r["id"], r["old"], r["input"], r["new"]) for r in recorded
             if (r["machine"], r["id"]) in instances]
    assert [(row.split()[1], row.split()[2], row.split()[3], row.split()[4][2:-3], row.split()[5])
            for row in rows] == shown
