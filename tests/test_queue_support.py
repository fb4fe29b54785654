"""Builders the queue tests share: a queue directory, transaction ids, stored transactions.

(A module of helpers; its one test checks the helpers themselves.)
"""

from __future__ import annotations

import pathlib

from meta1.ipc.records import Recipient, Transaction
from meta1.queue.cdb import ContentWriter, fsync_directories
from meta1.queue.layout import QueueLayout

AFTER_2038_US = 2**33 * 10**6  # 2242-03-16T12:56:32Z, far past a 32-bit time_t


def make_queue(root: pathlib.Path) -> QueueLayout:
    layout = QueueLayout(root / "queue")
    layout.ensure()
    return layout


def ta_id(n: int) -> str:
    """The n-th transaction id of smtps process 0."""
    return f"S{n:016X}00"


def write_content(layout: QueueLayout, ta: str, content: bytes, pieces: int = 1) -> ContentWriter:
    """A finished, synced and closed content file holding ``content``, written in ``pieces`` writes."""
    writer = ContentWriter(layout, ta, created=AFTER_2038_US)
    step = max(1, -(-len(content) // pieces))
    for start in range(0, len(content), step):
        writer.write(content[start:start + step])
    writer.finish()
    writer.sync()
    writer.close()
    fsync_directories([writer.directory])
    return writer


def store(layout: QueueLayout, n: int, content: bytes = b"Subject: test\r\n\r\nbody\r\n",
          recipients: int = 1, arrival: int = AFTER_2038_US) -> Transaction:
    """Write the content file of transaction n and return the Transaction that names it."""
    ta = ta_id(n)
    writer = write_content(layout, ta, content)
    return Transaction(
        ta_id=ta, session_id=ta_id(n - 1 if n else 0), arrival=arrival + n, sender=f"sender{n}@example.org",
        size=len(content), body=None, smtputf8=False, ret=None, envid=None, auth=None,
        client_address="127.0.0.1", client_port=10000 + n, helo="client.example",
        recipients=tuple(Recipient(f"{ta}-{i:04X}", f"rcpt{i}@example.net", None, None, None)
                         for i in range(recipients)),
        content=writer.relpath)


def flip_bit(path: pathlib.Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_store_makes_a_transaction_whose_content_file_exists(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    transaction = store(layout, 10, recipients=2)
    assert (layout.root / transaction.content).is_file()
    assert transaction.recipients[1].rcpt_id == "S000000000000000A00-0001"
