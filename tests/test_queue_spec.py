"""spec/queue.md's table of record types is the registry's: same ids, names and fields."""

from __future__ import annotations

import dataclasses
import re

from meta1.ipc import codec
from meta1.queue import recordfile  # noqa: F401  (registers the file-only records)
from conftest import REPO

ROW = re.compile(r"^\| (\d+) \| `(\w+)` \| [^|]+ \| `(.+)` \|$")


def documented() -> dict[int, tuple[str, str]]:
    text = (REPO / "spec" / "queue.md").read_text(encoding="utf-8")
    return {int(m.group(1)): (m.group(2), m.group(3).replace("\\|", "|"))
            for m in map(ROW.match, text.splitlines()) if m}


def in_code() -> dict[int, tuple[str, str]]:
    registered = {}
    for type_id in range(1, 200):  # the ranges meta1 assigns (test-only records use 60000+)
        cls = codec.record_class(type_id)
        if cls is not None:
            fields = ", ".join(f"{f.name}: {f.type}" for f in dataclasses.fields(cls))
            registered[type_id] = (cls.__name__, fields)
    return registered


def test_the_record_type_table_matches_the_code() -> None:
    assert documented() == in_code()
