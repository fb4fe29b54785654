"""``meta1 trace``'s reading of the logs (pure): which lines belong to a message, their
stages, the DSNs it caused, the summary."""

from __future__ import annotations

from meta1.tools.trace import format_events, trace

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
