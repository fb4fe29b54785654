"""Shared test helpers: running the real ``meta1`` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFORMANCE = REPO / "conformance"
# The conformance runners (conformance/transcripts.py) are imported by the tests.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def run_meta1(*args: str, home: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m meta1 ARGS`` with this checkout first on the path; output captured."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if home is not None:
        env["HOME"] = home
    return subprocess.run([sys.executable, "-m", "meta1", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


@pytest.fixture
def meta1_cmd():
    return run_meta1
