"""``meta1 trace ID``: the life of one message across the daemons, read from the logs,
and its path through the state machines when the daemons record their transitions.

    meta1 trace [-f FILE] [--log PATH ...] ID

Responsibilities
    Find, in the log lines of every daemon (one file: ``log_file``, or ``meta1.log`` in
    the queue directory where ``meta1 start`` puts it; or the files given with ``--log``,
    ``-`` for standard input), the lines about the message ``ID`` (a transaction id, the
    ``S…`` of its 250 reply): the session that brought it (by its session id), its
    transaction and recipient ids (``ID-NNNN``), and the DSNs it caused (their ids are
    named in qmgr's "DSN … queued" line, and followed in turn). Print them in time order,
    each with the stage it shows — connected, MAIL, accepted, queued, scheduled, attempt,
    reply, delivered, deferred, bounced, DSN, done — and a summary line.

    When the configuration sets ``trace_file`` (every daemon appends each state-machine
    transition to it as a JSON line, :mod:`meta1.tools.tracecheck`), print next the
    transitions of the machine instances that belong to the message: the smtps session
    that brought it (and its policy checks), each recipient in qmgr's scheduler, smtpc's
    address plan for each delivery, and the same for its DSNs — the message's path
    through the tables of ``spec/machines``, one row per line.

Strategy
    Pure functions over lines (:func:`trace`, :func:`transitions`), the file reading in
    :func:`main`. Every daemon writes ``TIME daemon[pid]: message`` with the ids first in
    the message (D-LOG-1), so a line belongs to an id when the id appears in it as a word.
    Lines of other formats (tracebacks, a sink's output) are skipped. Two passes: the
    first collects the ids that belong to the message (its session, its DSNs), the second
    picks the lines.

    A transition belongs to the message when its instance id is one of those ids, a
    recipient id of one (``ID-NNNN``) or a delivery plan of one (``ID/N``) — the ids the
    records carry, nothing guessed.
    Machines whose instances are not the message's are left out: an smtpc connection
    (``address:port/N``) may carry several messages, a DNS question (``smar-exchange``)
    serves every message for that domain, and a greylisting triplet outlives them.
    Transitions are shown in the order of the file: each is one ``write(2)`` to a file
    opened with O_APPEND, so that is the order they happened in across the daemons,
    whose ``time`` fields come from different clocks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from typing import Iterable

from meta1.tools.tracecheck import transaction_of

LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT[\d:.]+Z) (?P<daemon>[\w.]+)\[(?P<pid>\d+)\]: (?P<text>.*)$")
SESSION_OF = re.compile(r"^(S[0-9A-F]{18}): ta=(S[0-9A-F]{18}) ")
DSN_OF = re.compile(r"^(S[0-9A-F]{18}): (?:DSN|delay warning) (S[0-9A-F]{18}) queued")
ID = re.compile(r"S[0-9A-F]{18}")

#: (pattern in the message text, stage), first match wins.
STAGES = (
    (re.compile(r": connect from "), "connected"),
    (re.compile(r": ta=\S+ mail from="), "MAIL"),
    (re.compile(r": ta=\S+ accepted "), "accepted"),
    (re.compile(r": disconnect from "), "disconnected"),
    (re.compile(r": queued from="), "queued"),
    (re.compile(r": scheduled: "), "scheduled"),
    (re.compile(r": connect to .* failed"), "attempt"),
    (re.compile(r": to=<.*> relay="), "reply"),
    (re.compile(r"-[0-9A-F]{4}: delivered: "), "delivered"),
    (re.compile(r"-[0-9A-F]{4}: deferred "), "deferred"),
    (re.compile(r"-[0-9A-F]{4}: bounced: "), "bounced"),
    (re.compile(r"-[0-9A-F]{4}: deleted"), "deleted"),
    (re.compile(r": (?:DSN|delay warning) \S+ queued"), "DSN"),
    (re.compile(r": no DSN"), "no DSN"),
    (re.compile(r": removed \(every recipient is done\)"), "done"),
    (re.compile(r": (?:held|released)$"), "operator"),
)


@dataclass(frozen=True)
class Event:
    time: str
    daemon: str
    stage: str
    text: str


def _parsed(lines: Iterable[str]) -> list[tuple[str, str, str]]:
    out = []
    for line in lines:
        match = LINE.match(line.rstrip("\n"))
        if match:
            out.append((match["time"], match["daemon"], match["text"]))
    return out


def related_ids(lines: list[tuple[str, str, str]], queue_id: str) -> set[str]:
    """``queue_id``, the session that brought it, and the DSNs it caused (transitively)."""
    wanted = {queue_id}
    for _, _, text in lines:
        session = SESSION_OF.match(text)
        if session and session[2] == queue_id:
            wanted.add(session[1])
    changed = True
    while changed:           # a DSN's own failure may cause another (to the postmaster)
        changed = False
        for _, _, text in lines:
            dsn = DSN_OF.match(text)
            if dsn and dsn[1] in wanted and dsn[2] not in wanted:
                wanted.add(dsn[2])
                changed = True
    return wanted


def trace(lines: Iterable[str], queue_id: str) -> list[Event]:
    """The events about ``queue_id`` (see the module docstring), in time order."""
    parsed = _parsed(lines)
    return _events(parsed, related_ids(parsed, queue_id))


def _events(parsed: list[tuple[str, str, str]], wanted: set[str]) -> list[Event]:
    events = []
    for time, daemon, text in parsed:
        ids = set(ID.findall(text))
        if not ids & wanted:
            continue
        session_line = SESSION_OF.match(text)
        if session_line and session_line[2] not in wanted:
            continue        # another transaction of the same session
        stage = next((name for pattern, name in STAGES if pattern.search(text)), "")
        events.append(Event(time, daemon, stage, text))
    return sorted(events, key=lambda event: event.time)


def summary(events: list[Event], queue_id: str) -> str:
    if not events:
        return f"{queue_id}: no log line names it"
    stages = [e.stage for e in events if e.text.startswith(queue_id)]
    counts = {stage: stages.count(stage) for stage in ("delivered", "deferred", "bounced", "deleted")}
    said = ", ".join(f"{n} {stage}" for stage, n in counts.items() if n)
    done = "done" if "done" in stages else "still queued (or its end is not in these logs)"
    return f"{queue_id}: {said or 'no recipient outcome yet'}; {done}"


def format_events(events: list[Event], queue_id: str) -> str:
    rows = [f"{e.time}  {e.daemon:<8} {e.stage:<12} {e.text}" for e in events]
    return "\n".join(rows + [summary(events, queue_id)]) + "\n"


# -- the machine transitions (trace_file) ---------------------------------------------------------

def _belongs(instance: str, wanted: set[str]) -> bool:
    return instance in wanted or transaction_of(instance) in wanted


def transitions(records: Iterable[str], wanted: set[str]) -> list[dict]:
    """The trace records (NDJSON lines) of the machine instances named by ``wanted`` ids,
    in file order; lines that are no record are skipped (tracecheck reports them)."""
    found = []
    for line in records:
        try:
            record = json.loads(line)
            belongs = _belongs(str(record["id"]), wanted)
        except (ValueError, KeyError, TypeError):
            continue
        if belongs:
            found.append(record)
    return found


def format_transitions(found: list[dict], source: str) -> str:
    if not found:
        return f"no machine transition in {source} names it\n"
    instances = {(r.get("machine"), str(r["id"])) for r in found}
    rows = [f"{r.get('daemon', ''):<6} {r.get('machine', ''):<15} {str(r['id']):<24} "
            f"{r.get('old')} --{r.get('input')}--> {r.get('new')}" for r in found]
    head = f"machine transitions from {source}, in the order they happened:"
    return "\n".join([head, *rows, f"{len(found)} transitions of {len(instances)} machine instances"]) + "\n"


def _read_lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def main(queue_id: str, paths: list[str], trace_file: str | None = None) -> int:
    """Print the story of ``queue_id`` from the logs at ``paths``, then, with
    ``trace_file``, its transitions; 0 when something names it."""
    lines: list[str] = []
    for path in paths:
        try:
            lines += _read_lines(path)
        except OSError as error:
            print(f"meta1 trace: {path}: {error.strerror}", file=sys.stderr)
            return 1
    queue_id = queue_id.upper()
    parsed = _parsed(lines)
    wanted = related_ids(parsed, queue_id)
    events = _events(parsed, wanted)
    sys.stdout.write(format_events(events, queue_id))
    found: list[dict] = []
    if trace_file is not None:
        try:
            with open(trace_file, encoding="utf-8", errors="replace") as records:   # streamed: it only grows
                found = transitions(records, wanted)
        except OSError as error:     # the log story stands on its own
            print(f"meta1 trace: {trace_file}: {error.strerror}", file=sys.stderr)
        else:
            sys.stdout.write("\n" + format_transitions(found, trace_file))
    return 0 if events or found else 1


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="queue id (the S… of the 250 reply)")
    parser.add_argument("--log", action="append", metavar="PATH",
                        help="log file to read (repeatable; - for standard input); default: the MTA's log file")
