"""Check a recorded state-machine trace against the transition tables.

    python3 -m meta1.tools.tracecheck TRACE.ndjson        (``trace_file`` of a run)

Responsibilities
    Every transition of every machine goes through one function that can write it as a
    JSON line — ``{"daemon", "machine", "id", "old", "input", "new", "time", "pid"}``
    (:mod:`meta1.machine`; qmgr's scheduler writes the same record). This tool reads such
    a trace, written by all daemons of a run into one file, and checks that

    * every record is a row of its machine's table: ``(old, input)`` exists and leads to
      ``new`` — the code did nothing its table does not say;
    * every instance's records chain: each ``old`` is the previous ``new`` of the same
      machine instance in the same process (``pid``: a restarted daemon begins its
      instances again) — no transition happened outside the trace;
    * ids agree across daemons: every delivery plan smtpc traced (its instance is the
      transaction id) is for a transaction whose recipients qmgr traced — smtpc delivered
      nothing qmgr did not hand it — and every recipient qmgr traced belongs to a
      transaction id of MeTA1's format.

    It prints the counts per machine and every violation (exit 1 when there is one). The
    end-to-end tests record traces and run it (``tests/test_tracecheck.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from meta1.tools.machinespec import MACHINES

TA_ID = re.compile(r"S[0-9A-F]{18}")
RCPT_ID = re.compile(r"(S[0-9A-F]{18})-[0-9A-F]{4}")
#: smtpc's address plan of one delivery: ``<ta-id>/<delivery id>``.
PLAN_ID = re.compile(r"(S[0-9A-F]{18})/[0-9]+")


def transaction_of(instance: str) -> str | None:
    """The transaction a recipient or delivery-plan instance id belongs to (None: other)."""
    match = RCPT_ID.fullmatch(instance) or PLAN_ID.fullmatch(instance)
    return match[1] if match is not None else None


@dataclass
class Report:
    records: int = 0
    per_machine: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and self.records > 0

    def text(self) -> str:
        lines = [f"{self.records} transitions: " + ", ".join(f"{m} {n}" for m, n in sorted(self.per_machine.items()))]
        lines += [f"VIOLATION: {v}" for v in self.violations] or ["every transition is a row of its table"]
        return "\n".join(lines)


def _tables():
    tables = {}
    for machine, module_name in MACHINES.items():
        module = importlib.import_module(module_name)
        tables[machine] = {(state.name, input.name): row.next.name for (state, input), row in module.TABLE.items()}
    return tables


def check(lines: Iterable[str]) -> Report:
    """The report on a trace given as its lines (see the module docstring)."""
    tables = _tables()
    report = Report()
    last: dict[tuple[str, str, str], str] = {}
    qmgr_transactions: set[str] = set()
    smtpc_plans: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            daemon, machine, instance = record["daemon"], record["machine"], record["id"]
            old, input, new = record["old"], record["input"], record["new"]
        except (ValueError, KeyError, TypeError) as error:
            report.violations.append(f"line {number}: not a trace record ({error})")
            continue
        report.records += 1
        report.per_machine[machine] += 1
        table = tables.get(machine)
        if table is None:
            report.violations.append(f"line {number}: unknown machine {machine!r}")
            continue
        if table.get((old, input)) != new:
            expected = table.get((old, input))
            report.violations.append(f"line {number}: {machine} {instance}: {old} --{input}--> {new} is no row "
                                     f"(the table says {expected or 'nothing'})")
        key = (daemon, record.get("pid"), machine, str(instance))
        if key in last and last[key] != old:
            report.violations.append(f"line {number}: {machine} {instance} was {last[key]}, "
                                     f"the record starts from {old}")
        last[key] = new
        if machine == "qmgr-recipient":
            match = RCPT_ID.fullmatch(str(instance))
            if match is None:
                report.violations.append(f"line {number}: qmgr recipient id {instance!r} is not <ta-id>-NNNN")
            else:
                qmgr_transactions.add(match.group(1))
        elif machine == "smtpc-plan" and PLAN_ID.fullmatch(str(instance)):
            smtpc_plans.add(str(transaction_of(str(instance))))
    for ta_id in sorted(smtpc_plans - qmgr_transactions):
        report.violations.append(f"smtpc delivered transaction {ta_id}, which qmgr never scheduled")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m meta1.tools.tracecheck", description=__doc__.split("\n")[0])
    parser.add_argument("trace", help="the NDJSON trace file (trace_file of a run)")
    args = parser.parse_args(argv)
    with open(args.trace, encoding="utf-8", errors="surrogateescape") as f:
        report = check(f)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
