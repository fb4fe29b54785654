"""The id reservation file: where a daemon's id counter may continue after a restart.

Responsibilities
    :class:`IdState` is the I/O half of :class:`meta1.ids.IdGenerator`: ``start(now_us)``
    says where the counter begins (the larger of the stored ceiling and the clock, so
    ids never repeat after a restart, nor after a clock step backwards while stopped),
    and ``reserve(ceiling)`` makes "ids below ``ceiling`` may be in use" durable before
    any of them is handed out: write a temporary file, fsync it, rename it over the old
    one, fsync the directory (D-ID-1). smtps keeps one per process index
    (``smtps/idstate``, ``smtps/idstate.NN``), qmgr one for the messages it generates.
"""

from __future__ import annotations

import logging
import os
import pathlib

from meta1.queue.cdb import fsync_directories

log = logging.getLogger("meta1.queue")


class IdState:
    def __init__(self, path: pathlib.Path):
        self.path = path

    def start(self, now_us: int) -> int:
        """Where the counter starts: after every id a previous run may have handed out."""
        stored = 0
        try:
            stored = int(self.path.read_text().strip(), 16)
        except FileNotFoundError:
            pass
        except ValueError:
            log.warning("%s is damaged; ids continue from the clock", self.path)
        return max(stored, now_us)

    def reserve(self, ceiling: int) -> None:
        """Durably record ``ceiling`` (raises OSError; the generator then hands out nothing)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, f"{ceiling:016X}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_directories([self.path.parent])
