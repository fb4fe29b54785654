"""Queue directory layout: the shared path names and the tree that ensure() makes."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from meta1.queue.layout import QueueLayout


def test_paths(tmp_path: pathlib.Path) -> None:
    layout = QueueLayout(tmp_path)
    assert layout.cdb == tmp_path / "cdb" and layout.ibdb == tmp_path / "ibdb"
    assert layout.quarantine == tmp_path / "quarantine"
    assert layout.smtps_socket == tmp_path / "qmgr" / "smtpsqmgr"
    assert layout.qmgr_lock == tmp_path / "qmgr" / "lock"
    assert layout.id_state == tmp_path / "smtps" / "idstate"


def test_content_path_uses_the_third_lowest_digit_of_the_counter(tmp_path: pathlib.Path) -> None:
    layout = QueueLayout(tmp_path)
    assert layout.content_relpath("S0000018C2B7E5F0A07") == "cdb/f/S0000018C2B7E5F0A07"
    assert layout.content_path("S0000018C2B7E5F0A07") == tmp_path / "cdb" / "f" / "S0000018C2B7E5F0A07"
    assert QueueLayout("q", cdb_dir="content").content_relpath("S000000000000000F00") == "content/0/S000000000000000F00"


@pytest.mark.parametrize("bad", ["S0000018c2b7e5f0a00", "S0000018C2B7E5F0A0", "S0000018C2B7E5F0A000",
                                 "X0000018C2B7E5F0A00", "S0000018C2B7E5F0A00\n", "../../etc/passwd", ""])
def test_content_path_refuses_what_is_not_a_transaction_id(bad: str) -> None:
    with pytest.raises(ValueError):
        QueueLayout("q").content_path(bad)


def test_ensure_makes_the_tree_with_mode_0750_and_leaves_existing_directories(tmp_path: pathlib.Path) -> None:
    (tmp_path / "q" / "qmgr").mkdir(parents=True, mode=0o700)
    layout = QueueLayout(tmp_path / "q")
    old_umask = os.umask(0o077)
    try:
        layout.ensure()
        layout.ensure()  # idempotent
    finally:
        os.umask(old_umask)
    for directory in [layout.ibdb, layout.quarantine, layout.smtps] + [layout.cdb / d for d in "0123456789abcdef"]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750, directory
    assert stat.S_IMODE(layout.qmgr.stat().st_mode) == 0o700
