"""Every state machine of meta1, and its table rendered as Markdown and as a Graphviz diagram.

:data:`MACHINES` names each machine and the module that holds its ``State``, ``Input``
and ``TABLE``: the one list :mod:`meta1.tools.specgen` writes ``spec/machines/`` from and
:mod:`meta1.tools.tracecheck` checks recorded traces against, so a new machine is
documented and checkable by adding one line. The renderers are pure functions of the
table (:mod:`meta1.machine`); the drift test renders them again, so the diagrams are
the code.
"""

from __future__ import annotations

import enum
import inspect
from collections import defaultdict
from typing import Mapping

from meta1.machine import Transition

#: Machine name (as its trace records give it) → the module holding its State, Input, TABLE.
MACHINES = {
    "smtps-session": "meta1.smtps.states",
    "smtpc-session": "meta1.smtpc.states",
    "smtpc-plan": "meta1.smtpc.plan",
    "smar-exchange": "meta1.smar.states",
    "sockmap-connection": "meta1.maps.states",
    "qmgr-recipient": "meta1.qmgr.states",
    "qmgr-admission": "meta1.qmgr.admission",
    "mcp-service": "meta1.mcp.states",
    "lmtpd-session": "meta1.lmtpd.states",
    "policy-session": "meta1.policy.states",
    "greylist-entry": "meta1.policy.greylist",
}


def summary(module) -> str:
    """The one-line description of a machine: the first line of its module's docstring."""
    return (inspect.getdoc(module) or "").partition("\n")[0].strip()


def render_markdown(name: str, module, states: type[enum.Enum], inputs: type[enum.Enum],
                    table: Mapping[tuple[enum.Enum, enum.Enum], Transition]) -> str:
    rest = (inspect.getdoc(module) or "").partition("\n")[2]
    lines = [f"# Machine `{name}`", "", f"*{summary(module)}* (`{module.__name__}`)", "", rest.strip(), "",
             f"Diagram: [`{name}.svg`]({name}.svg), drawn by graphviz from [`{name}.dot`]({name}.dot).", "",
             "## States", ""]
    used = {state for state, _ in table} | {row.next for row in table.values()}
    for state in states:
        lines.append(f"- `{state.name}`" + ("" if state in used else " (unused)"))
    lines += ["", "## Inputs", ""]
    lines += [f"- `{i.name}` — {i.value}" for i in inputs]
    lines += ["", f"## Transitions ({len(table)} rows)", "",
              "A pair not listed is a protocol error.", "",
              "| state | input | action | next state |", "|---|---|---|---|"]
    order_s = {s: n for n, s in enumerate(states)}
    order_i = {i: n for n, i in enumerate(inputs)}
    for (state, input), row in sorted(table.items(), key=lambda kv: (order_s[kv[0][0]], order_i[kv[0][1]])):
        nxt = "(same)" if row.next is state else f"`{row.next.name}`"
        lines.append(f"| `{state.name}` | `{input.name}` | {row.action} | {nxt} |")
    return "\n".join(lines) + "\n"


def render_dot(name: str, states: type[enum.Enum],
               table: Mapping[tuple[enum.Enum, enum.Enum], Transition]) -> str:
    """One node per state, one edge per (state, next) pair labelled with its inputs.

    Rows that stay in the same state are left out to keep the picture readable; the
    Markdown table lists them all.
    """
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (state, input), row in table.items():
        if row.next is not state:
            edges[(state.name, row.next.name)].append(input.name)
    lines = [f'digraph "{name}" {{', "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    lines += [f"  {s.name};" for s in states]
    for (a, b), labels in sorted(edges.items()):
        label = "\\n".join(sorted(labels))
        lines.append(f'  {a} -> {b} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
