"""Render a state machine's transition table as Markdown and as a Graphviz diagram.

Both are pure functions of the table (:mod:`meta1.machine`), used by
:mod:`meta1.tools.specgen` to write ``spec/machines/<machine>.md`` and ``.dot``; the
drift test renders them again, so the diagrams are the code.
"""

from __future__ import annotations

import enum
import inspect
from collections import defaultdict
from typing import Mapping

from meta1.machine import Transition


def render_markdown(name: str, module, states: type[enum.Enum], inputs: type[enum.Enum],
                    table: Mapping[tuple[enum.Enum, enum.Enum], Transition]) -> str:
    doc = inspect.getdoc(module) or ""
    title, _, rest = doc.partition("\n")
    lines = [f"# Machine `{name}`", "", f"*{title.strip()}* (`{module.__name__}`)", "", rest.strip(), "",
             f"Diagram: [`{name}.dot`]({name}.dot) (render with `dot -Tsvg`).", "",
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
