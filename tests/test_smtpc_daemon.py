"""The smtpc daemon as a process: Delivery records from a stand-in qmgr, MX fallback over
a dead address, the content byte for byte at Postfix's smtp-sink, results per recipient."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from delivery_support import ScriptedPeer
from meta1.ipc.records import Delivery, DeliveryResult, Target
from meta1.queue.layout import QueueLayout
from mta import free_port
from record_peer import RecordPeer
from test_queue_support import store
from test_smtpc_interop import _wait_dumps, needs_sink, sink  # noqa: F401 (fixture)

CONTENT = b"From: a@example.org\r\nSubject: smtpc daemon\r\n\r\n.leading dot\r\nbody\r\n"


class QmgrStandIn:
    """qmgr's listening end of the smtpc link."""

    def __init__(self, layout: QueueLayout) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(layout.smtpc_socket))
        self.server.listen(1)
        self.server.settimeout(30)
        self.peer: RecordPeer | None = None

    def accept(self) -> None:
        self.peer = RecordPeer(self.server.accept()[0], role="qmgr", expect="smtpc")

    def send(self, record: object) -> None:
        self.peer.send(record)

    def read(self) -> object:
        return self.peer.read()

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.server.close()


@pytest.fixture
def smtpc(tmp_path):
    layout = QueueLayout(tmp_path / "queue")
    layout.ensure()
    qmgr = QmgrStandIn(layout)
    config = tmp_path / "meta1.conf"
    config.write_text(f'queue_directory = "{layout.root}";\nhostname = client.test;\n'
                      "smtpc { IO_timeout = 10s; }\n")
    proc = subprocess.Popen([sys.executable, "-m", "meta1", "smtpc", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "smtpc.log", "wb"),
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        qmgr.accept()
        yield layout, qmgr
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, (tmp_path / "smtpc.log").read_text()
        qmgr.close()


@needs_sink
def test_delivery_falls_back_past_a_dead_address_and_arrives_byte_identical(smtpc, sink) -> None:
    layout, qmgr = smtpc
    server = sink()
    transaction = store(layout, 1, content=CONTENT, recipients=2)
    dead_port = free_port()
    targets = (Target("mx1.example.test", "127.0.0.2", dead_port, 10),
               Target("mx2.example.test", "127.0.0.1", server.port, 20))
    qmgr.send((Delivery(7, transaction, targets, False, False)))
    result = qmgr.read()
    assert isinstance(result, DeliveryResult) and result.delivery_id == 7
    assert [(r.rcpt_id, r.code) for r in result.results] == [(r.rcpt_id, 250) for r in transaction.recipients]
    assert (result.tried, result.address, result.kept_open) == (("127.0.0.2", "127.0.0.1"), "127.0.0.1", True)
    [(fields, content)] = _wait_dumps(server, 1)
    assert content == CONTENT
    assert fields["X-Rcpt-Args"] == [f"<{r.address}>" for r in transaction.recipients]

    # The next delivery to the same address reuses the open connection (qmgr says so).
    second = store(layout, 2, content=CONTENT)
    qmgr.send((Delivery(8, second, targets[1:], False, True)))
    result = qmgr.read()
    assert (result.delivery_id, [r.code for r in result.results], result.tried) == (8, [250], ("127.0.0.1",))
    assert result.kept_open
    assert len(_wait_dumps(server, 2)) == 2


def test_no_reachable_address_is_a_temporary_result(smtpc) -> None:
    layout, qmgr = smtpc
    transaction = store(layout, 3, content=CONTENT)
    qmgr.send((Delivery(9, transaction, (Target("mx.example.test", "127.0.0.1", free_port(), 0),),
                                     False, False)))
    result = qmgr.read()
    [recipient] = result.results
    assert (recipient.code // 100, recipient.status[:2]) == (4, "4.")
    assert result.tried == ("127.0.0.1",)
    assert (result.address, result.kept_open) == ("", False)


def test_a_targets_connect_timeout_bounds_its_connect_oct(tmp_path, monkeypatch) -> None:
    """``Target.connect_timeout`` (qmgr's ``oct:`` for the address) is the connect's timeout;
    0 leaves smtpc's IO_timeout."""
    import random
    from types import SimpleNamespace

    from meta1.smtpc import daemon

    layout = QueueLayout(tmp_path / "queue")
    layout.ensure()
    connects: list[tuple[str, float]] = []
    monkeypatch.setattr(daemon, "connect_stream",
                        lambda loop, address, port, timeout, callback: connects.append((address, timeout)))
    client = SimpleNamespace(rng=random.Random(1), trace=None, loop=None, io_timeout=300.0,
                             take_idle=lambda key: None)
    transaction = store(layout, 4, content=CONTENT)
    for address, timeout in (("192.0.2.1", 7), ("192.0.2.2", 0)):
        delivery = Delivery(10, transaction, (Target("mx.example.test", address, 25, 0, timeout),), False, False)
        daemon.DeliveryAttempt(client, delivery).start()
    assert connects == [("192.0.2.1", 7), ("192.0.2.2", 300.0)]


def test_a_targets_reply_timers_hold_on_its_connection_also_when_reused_d_pol_28(smtpc) -> None:
    """``Target.io_timeout`` and ``final_dot_timeout`` (qmgr's ``smtpc_session_conf:`` for
    the address) time every reply wait of the connection serving the delivery; a kept
    connection takes those of the delivery that reuses it. smtpc's own are 10 s and 10 m,
    so a result within a few seconds is the target's 1 s timer running out."""
    layout, qmgr = smtpc
    hold, slow = threading.Event(), threading.Event()
    hold.set()
    peer = ScriptedPeer(hold=hold, slow=slow).start()
    try:
        qmgr.send(Delivery(20, store(layout, 20, content=CONTENT), (Target("mx.test", "127.0.0.1", peer.port, 0),),
                           False, False))
        result = qmgr.read()
        assert ([r.code for r in result.results], result.kept_open) == ([250], True)

        hold.clear()                                  # the peer now sits on the final dot
        started = time.monotonic()
        qmgr.send(Delivery(21, store(layout, 21, content=CONTENT),
                           (Target("mx.test", "127.0.0.1", peer.port, 0, final_dot_timeout=1),), False, True))
        result = qmgr.read()
        assert [(r.code, r.status) for r in result.results] == [(451, "4.4.2")]
        assert "timed out" in result.results[0].text and time.monotonic() - started < 5
        assert peer.connections == 1                  # the kept connection, with the new timer

        hold.set()
        transaction = store(layout, 22, content=CONTENT)
        transaction = dataclasses.replace(transaction, recipients=(
            dataclasses.replace(transaction.recipients[0], address="slow-rcpt@example.net"),))
        started = time.monotonic()
        qmgr.send(Delivery(22, transaction, (Target("mx.test", "127.0.0.1", peer.port, 0, io_timeout=1),),
                           False, False))
        result = qmgr.read()
        assert [(r.code, r.status) for r in result.results] == [(451, "4.4.2")]
        assert time.monotonic() - started < 5 and len(peer.stalled_at) == 1
    finally:
        hold.set()
        slow.set()
        peer.stop()
