"""Every named reply in the catalogue is used by the code (issue 3: "each used somewhere")."""

from __future__ import annotations

import re

from conftest import REPO
from meta1.smtp import catalogue


def test_every_catalogue_reply_is_used():
    sources = "\n".join(p.read_text() for p in (REPO / "meta1").rglob("*.py")
                        if p.name != "replies.py")
    unused = [name for name in catalogue() if not re.search(rf"\bR\.{name}\b", sources)]
    assert unused == []
