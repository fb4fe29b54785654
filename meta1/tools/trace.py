"""``meta1 trace ID``: the life of one message across the daemons, read from the logs.

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

Strategy
    Pure functions over lines (:func:`trace`), the file reading in :func:`main`. Every
    daemon writes ``TIME daemon[pid]: message`` with the ids first in the message
    (D-LOG-1), so a line belongs to an id when the id appears in it as a word. Lines of
    other formats (tracebacks, a sink's output) are skipped. Two passes: the first
    collects the ids that belong to the message (its session, its DSNs), the second picks
    the lines.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Iterable

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
    wanted = related_ids(parsed, queue_id)
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


def main(queue_id: str, paths: list[str]) -> int:
    lines: list[str] = []
    for path in paths:
        try:
            if path == "-":
                lines += sys.stdin.read().splitlines()
            else:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines += f.read().splitlines()
        except OSError as error:
            print(f"meta1 trace: {path}: {error.strerror}", file=sys.stderr)
            return 1
    queue_id = queue_id.upper()
    events = trace(lines, queue_id)
    sys.stdout.write(format_events(events, queue_id))
    return 0 if events else 1


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="queue id (the S… of the 250 reply)")
    parser.add_argument("--log", action="append", metavar="PATH",
                        help="log file to read (repeatable; - for standard input); default: the MTA's log file")
