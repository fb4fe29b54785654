"""DEFEDB batches under kill -9: a child applies batches, the test SIGKILLs it at random
moments, reopens the database and checks that every batch is all or nothing and that every
acknowledged batch is there.

Batch k (k = 1, 2, …) puts transaction k with three recipients (attempts = k), removes the
three recipients of transaction k-1 (which removes that transaction), and sets the attempt
count of transaction 0's one recipient to k. So after any crash the database must hold
exactly transactions 0 and K for one K, transaction K complete with attempts K, and
transaction 0's recipient at attempts K — a torn batch would show two numbered
transactions, a partial one, or mismatched counts. K is at least the last batch the child
acknowledged (apply returned, so it was durable) and at most one more (killed after the
commit but before the acknowledgement).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

from meta1.queue.defedb import (DeferredRecipient, DeferredTransaction, PutRecipient, PutTransaction,
                                RecipientState, open_defedb)
from test_queue_support import AFTER_2038_US, make_queue, ta_id

REPO = pathlib.Path(__file__).resolve().parent.parent
CHILD = r"""
import dataclasses, sys
from meta1.queue.defedb import PutRecipient, PutTransaction, RemoveRecipient, open_defedb
from meta1.queue.layout import QueueLayout
sys.path.insert(0, sys.argv[2])
from test_defedb_crash import envelope, recipient

database, _ = open_defedb(QueueLayout(sys.argv[1]))
k = int(sys.argv[3])
while True:
    k += 1
    batch = [PutTransaction(envelope(k))] + [PutRecipient(recipient(k, i, k)) for i in range(3)]
    batch += [RemoveRecipient(envelope(k - 1).ta_id, i) for i in range(3)] if k > 1 else []
    batch.append(PutRecipient(recipient(0, 0, k)))
    database.apply(batch)
    print(k, flush=True)
"""


def envelope(n: int) -> DeferredTransaction:
    return DeferredTransaction(
        ta_id=ta_id(n), session_id=ta_id(0), arrival=AFTER_2038_US, sender="s@example.org", size=10,
        body=None, smtputf8=False, ret=None, envid=None, auth=None, client_address="127.0.0.1",
        client_port=25, helo="h", content=f"cdb/0/{ta_id(n)}", nrcpts=3)


def recipient(n: int, index: int, attempts: int) -> DeferredRecipient:
    return DeferredRecipient(
        ta_id=ta_id(n), index=index, address=f"r{index}@example.net", notify=None, orcpt_type=None, orcpt=None,
        state=RecipientState.DEFERRED, attempts=attempts, next_try=AFTER_2038_US + attempts, first_fail=AFTER_2038_US,
        reply_text="451 4.3.0 " + "x" * 200)  # some bulk, so that a batch spans several WAL frames


def recovered_batch(layout) -> int:
    """The batch number the database holds; asserts it holds exactly one whole batch."""
    database, quarantined = open_defedb(layout)
    assert quarantined == []
    with database:
        loaded = {ta.ta_id: (ta, rcpts) for ta, rcpts in database.load()}
    _, anchor = loaded.pop(ta_id(0))
    k = anchor[0].attempts
    assert anchor == (recipient(0, 0, k),)
    if k == 0:
        assert loaded == {}
        return 0
    assert loaded == {ta_id(k): (envelope(k), tuple(recipient(k, i, k) for i in range(3)))}, f"batch {k} is torn"
    return k


def test_every_batch_is_all_or_nothing_across_sigkill(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    database, _ = open_defedb(layout)
    database.apply([PutTransaction(dataclasses.replace(envelope(0), nrcpts=1)), PutRecipient(recipient(0, 0, 0))])
    database.close()
    rng = random.Random(4)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    recovered = 0
    for _trial in range(25):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(layout.root), str(REPO / "tests"), str(recovered)],
                                 stdout=subprocess.PIPE, env=env, text=True)
        acknowledged = recovered
        wanted = rng.randint(1, 20)
        assert child.stdout is not None
        for _ in range(wanted):
            line = child.stdout.readline()
            assert line, "the child died on its own"
            acknowledged = int(line)
        time.sleep(rng.random() * 0.004)  # a random moment: the kill is meant to land anywhere
        child.send_signal(signal.SIGKILL)
        child.wait()
        acknowledged = max([acknowledged] + [int(line) for line in child.stdout.read().split()])
        child.stdout.close()
        recovered = recovered_batch(layout)
        assert acknowledged <= recovered <= acknowledged + 1
    assert recovered > 25  # batches really were applied in every trial
