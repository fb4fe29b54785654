"""SMTP transcripts (conformance/smtp/*.in → *.ref), on the session and on the daemon.

Each ``.in`` file is replayed against the sans-I/O session (every transcript) and
against real smtps+qmgr processes over TCP (those without session settings); the
server's replies must be exactly the ``.ref`` file. A few transcripts also pin what was
committed (how many transactions, which content), since a reply alone cannot show that
the smuggled text stayed inside the message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.transcripts import TRANSCRIPTS, expected, read_in, run_server, run_session
from mta import MTA, body_of

FILES = sorted(TRANSCRIPTS.glob("*.in"))


def test_there_are_transcripts():
    assert len(FILES) >= 20
    for path in FILES:
        assert path.with_suffix(".ref").exists(), f"{path.name} has no .ref"
        assert path.read_text().startswith("#"), f"{path.name} does not say what it tests"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript_on_the_session(path: Path):
    steps, options = read_in(path)
    output, _commits = run_session(steps, options)
    assert output == expected(path)


def commits_of(name: str):
    steps, options = read_in(TRANSCRIPTS / f"{name}.in")
    return run_session(steps, options)[1]


def test_pipelined_transactions_are_both_committed():
    commits = commits_of("pipelining")
    assert [t.sender for t, _ in commits] == ["alice@example.org", ""]
    assert [len(t.recipients) for t, _ in commits] == [3, 1]
    assert [r.rcpt_id[-4:] for r in commits[0][0].recipients] == ["0000", "0001", "0002"]
    assert body_of(commits[0][1]) == b"Subject: pipelined\r\n\r\nbody\r\n"


def test_smuggled_text_is_never_a_transaction():
    for name in ("smuggling", "smuggling-variants", "size"):
        assert commits_of(name) == []


def test_bdat_content_is_taken_as_is():
    (transaction, content), = commits_of("bdat")
    assert body_of(content) == b"Subject: chunks\r\n\r\n.\r\nbody\r\n"
    assert transaction.size == len(content)


def test_nul_in_the_body_is_kept():
    (transaction, content), = commits_of("nul")
    assert body_of(content) == b"Subject: ok\r\n\r\nbo\x00dy\r\n"


def test_too_many_recipients_keeps_the_accepted_ones():
    (transaction, _), = commits_of("too-many-recipients")
    assert [r.address for r in transaction.recipients] == [
        "r1@example.net", "r2@example.net", "r3@example.net"]


def test_nothing_is_committed_after_a_hangup_in_data():
    assert commits_of("hangup-in-data") == []


LIVE = [p for p in FILES if not read_in(p)[1] and "@fail-commit" not in p.read_text()]


def test_transcripts_on_the_daemons(tmp_path):
    """The same conversations with real processes over TCP, durable commit included."""
    with MTA(tmp_path) as mta:
        failures = []
        for path in LIVE:
            got = run_server(read_in(path)[0], "127.0.0.1", mta.port)
            want = expected(path)
            if not want.endswith("[closed]\n"):
                want += "[closed]\n"   # the sans-I/O run stops at @eof; the server then closes
            if got != want:
                failures.append(f"{path.name}\n--- expected\n{want}--- got\n{got}")
        assert not failures, "\n".join(failures)
        queued = mta.mailq()
    # basic, helo, pipelining (2), nul, params — each accepted message is in the queue
    assert len(queued) == sum(len(commits_of(p.stem)) for p in LIVE)
