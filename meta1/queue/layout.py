"""Where things live in the queue directory.

Responsibilities
    Name every path the daemons share below ``queue_directory`` (spec/receive-path.md,
    "Queue directory layout"; spec/queue.md) and create the tree. One class, so that no
    daemon spells a path of its own.

Layout
    ::

        cdb/0 … cdb/f/<ta-id>          content files; the subdirectory is the third-lowest
                                       hex digit of the id's counter (lower case)
        ibdb/<16 decimal digits>.ibdb  the incoming log, a sequence of files
        quarantine/                    damaged files, each with a <name>.why note
        qmgr/smtpsqmgr                 UNIX socket smtps → qmgr
        qmgr/lock                      held by the running qmgr
        smtps/idstate                  the id counter's reservation

    ``cdb`` may be moved with ``CDB_base_directory`` (the ``cdb_dir`` argument); a relative
    value is relative to the queue directory, like every relative path in MeTA1
    (reference meta1.md §1.3).

Why the last digit
    The counter's low digits change fastest, so consecutive transactions spread evenly
    over the 16 directories, which keeps each directory small and lets the directory
    fsyncs of concurrent commits fall on different directories.
"""

from __future__ import annotations

import os
import pathlib
import re

TA_ID = re.compile(r"S[0-9A-F]{16}[0-9A-F]{2}")
"""A transaction id: ``S``, 16 hex digits of the counter, 2 of the smtps process index."""

DIRECTORY_MODE = 0o750
CDB_FANOUT = "0123456789abcdef"


def check_ta_id(ta_id: str) -> str:
    """``ta_id`` if it has the transaction id format, else ValueError."""
    if not isinstance(ta_id, str) or TA_ID.fullmatch(ta_id) is None:
        raise ValueError(f"not a transaction id: {ta_id!r}")
    return ta_id


class QueueLayout:
    """The paths of one queue directory (``root``, absolute or relative)."""

    def __init__(self, root: str | os.PathLike, cdb_dir: str = "cdb"):
        self.root = pathlib.Path(root)
        self._cdb_dir = pathlib.Path(cdb_dir)
        self.cdb = self.root / self._cdb_dir
        self.ibdb = self.root / "ibdb"
        self.quarantine = self.root / "quarantine"
        self.qmgr = self.root / "qmgr"
        self.smtps = self.root / "smtps"
        self.smar = self.root / "smar"

    @property
    def smtps_socket(self) -> pathlib.Path:
        return self.qmgr / "smtpsqmgr"

    @property
    def smtpc_socket(self) -> pathlib.Path:
        """Where qmgr listens for smtpc."""
        return self.qmgr / "smtpcqmgr"

    @property
    def smar_socket(self) -> pathlib.Path:
        """Where smar listens for qmgr."""
        return self.smar / "smarqmgr"

    @property
    def qmgr_lock(self) -> pathlib.Path:
        return self.qmgr / "lock"

    @property
    def id_state(self) -> pathlib.Path:
        return self.smtps / "idstate"

    def ensure(self) -> None:
        """Create every directory of the layout that is missing (mode 0750)."""
        directories = [self.root, self.cdb, self.ibdb, self.quarantine, self.qmgr, self.smtps, self.smar]
        directories += [self.cdb / digit for digit in CDB_FANOUT]
        for directory in directories:
            try:
                directory.mkdir(mode=DIRECTORY_MODE, parents=True)
            except FileExistsError:
                continue  # an operator's (or mcp's) own mode and owner stay as they are
            except PermissionError:
                # mcp, as root, made the tree and keeps each daemon out of what is not
                # its own (spec/mcp.md): smar cannot even look into cdb/.
                continue
            os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode is masked by the umask

    def content_relpath(self, ta_id: str) -> str:
        """The content file of ``ta_id`` relative to the queue directory, e.g. ``cdb/f/S…``
        (absolute when ``cdb_dir`` is).

        The subdirectory is the counter's third-lowest hex digit (``ta_id[14]``), which
        changes every 256 ids: the files of one commit batch — consecutive ids — share
        one or two directories, so qmgr's group commit syncs one or two directories per
        batch instead of up to sixteen, while over time the files still spread evenly.
        """
        check_ta_id(ta_id)
        return str(self._cdb_dir / ta_id[14].lower() / ta_id)

    def content_path(self, ta_id: str) -> pathlib.Path:
        """The content file of ``ta_id``."""
        return self.root / self.content_relpath(ta_id)
