"""``meta1 qmgrctl`` against a running qmgr (flush, hold, release, delete; refusals; qmgr
down), ``meta1 mailq``'s per-recipient columns from a real deferral, and the command
records and their mapping without processes.

The whole relay is the one of ``test_delivery.py`` (smtps → qmgr → smar with DNS on
loopback → smtpc → smtp-sink, ``min_queue_delay = 1h`` so nothing is retried unless
flushed). To catch a message before it is delivered, smar is stopped first: the message's
recipients then wait in the scheduler for their route, where hold and delete act.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from types import SimpleNamespace

import pytest

from meta1.eventloop import EventLoop
from meta1.ipc.codec import frame
from meta1.ipc.records import (PROTOCOL_VERSION, CommitResult, ControlResult, DeleteMessage, FlushQueue, Hello,
                               HoldMessage, ReleaseMessage)
from meta1.qmgr.control import ControlError, ControlServer, request_for, send_command
from meta1.qmgr.scheduler import Flush, Hold, Release
from meta1.queue.layout import QueueLayout
from mta import MTA, wait_for
from test_delivery import relay, send  # noqa: F401 (fixture)
from test_smtpc_interop import _wait_dumps, needs_sink, sink  # noqa: F401 (fixture)

EX_TEMPFAIL = 75
UNKNOWN_ID = "S00000000000000FF00"


def qmgrctl(mta: MTA, *args: str) -> subprocess.CompletedProcess:
    return mta.meta1("qmgrctl", "-f", str(mta.config), *args)


def queued_id(mta: MTA) -> str:
    [entry] = mta.mailq()
    return entry["id"]


def without_smar(mta: MTA) -> None:
    """Stop smar and wait until qmgr knows: route requests now wait for its return."""
    mta.wait_log("qmgr", "connected to smar")
    mta.kill("smar")
    mta.wait_log("qmgr", "connection to smar lost")


# -- against a running qmgr -----------------------------------------------------------------

@needs_sink
def test_mailq_shows_a_deferral_and_flush_retries_it_at_once(relay) -> None:  # noqa: F811
    mta, _ = relay("-r", "RCPT")
    send(mta, "sender@example.test", ["later@example.test"])
    mta.wait_log("qmgr", "deferred (attempt 1)")
    entry = wait_for(lambda: next((e for e in mta.mailq() if e["recipients"][0]["attempts"] == 1), None),
                     what="the deferral in DEFEDB")
    [recipient] = entry["recipients"]
    assert recipient["state"] == "deferred" and recipient["address"] == "later@example.test"
    assert recipient["last_reply"].startswith("450 ")
    # The next try is an hour away (min_queue_delay), in ISO UTC with its exact µs beside.
    assert recipient["next_try_us"] - entry["arrival_us"] > 3000 * 10**6
    assert recipient["next_try"].endswith("Z") and entry["held"] is False
    text = mta.meta1("mailq", "-f", str(mta.config)).stdout
    assert "<later@example.test>  deferred, 1 attempt, next try " in text and f"({recipient['last_reply']})" in text

    other = qmgrctl(mta, "flush", "elsewhere.test")
    assert other.returncode == 0 and other.stdout == "flushed: 0 deferred recipients for elsewhere.test due now\n"
    flushed = qmgrctl(mta, "flush", "EXAMPLE.test")
    assert flushed.returncode == 0, flushed.stderr
    assert flushed.stdout == "flushed: 1 deferred recipient for example.test due now\n"
    mta.wait_log("qmgr", "deferred (attempt 2)")
    wait_for(lambda: mta.mailq()[0]["recipients"][0]["attempts"] == 2, what="attempt 2 in DEFEDB")
    assert qmgrctl(mta, "flush").stdout == "flushed: 1 deferred recipient due now\n"
    mta.wait_log("qmgr", "deferred (attempt 3)")


@needs_sink
def test_a_held_message_waits_until_released(relay) -> None:  # noqa: F811
    mta, server = relay()
    without_smar(mta)
    send(mta, "sender@example.test", ["held@example.test"])
    held_id = queued_id(mta)
    result = qmgrctl(mta, "hold", held_id.lower())  # ids are hex: either case will do
    assert result.returncode == 0 and result.stdout == f"{held_id}: held\n", result.stderr
    mta.spawn("smar")
    # Another message to the same place goes through; the held one does not.
    send(mta, "sender@example.test", ["free@example.test"])
    [(fields, _)] = _wait_dumps(server, 1)
    assert fields["X-Rcpt-Args"] == ["<free@example.test>"]
    wait_for(lambda: [e["id"] for e in mta.mailq()] == [held_id], what="only the held message left")
    assert f"{held_id}: held" in mta.log("qmgr")

    released = qmgrctl(mta, "release", held_id)
    assert released.returncode == 0 and released.stdout == f"{held_id}: released\n"
    dumps = _wait_dumps(server, 2)
    assert sorted(f["X-Rcpt-Args"][0] for f, _ in dumps) == ["<free@example.test>", "<held@example.test>"]
    wait_for(lambda: not mta.content_files(), what="the released message to leave the queue")
    assert mta.mailq() == []


@needs_sink
def test_a_hold_survives_a_restart_of_qmgr(relay) -> None:  # noqa: F811
    """The hold is in DEFEDB: after a restart mailq shows it and nothing is delivered until
    the release — also for a message none of whose recipients was ever tried."""
    mta, server = relay()
    without_smar(mta)
    send(mta, "sender@example.test", ["held@example.test"])
    held_id = queued_id(mta)
    assert qmgrctl(mta, "hold", held_id).returncode == 0
    wait_for(lambda: mta.mailq()[0]["held"], what="the hold in DEFEDB")
    assert mta.kill("qmgr", signal.SIGTERM) == 0
    mta.wait_linked(qmgr_pid=mta.spawn("qmgr").pid)
    mta.spawn("smar")
    mta.wait_log("qmgr", "connected to smar")
    send(mta, "sender@example.test", ["free@example.test"])   # the route is there: this goes out
    [(fields, _)] = _wait_dumps(server, 1)
    assert fields["X-Rcpt-Args"] == ["<free@example.test>"]
    [entry] = wait_for(lambda: [e for e in mta.mailq()] if len(mta.mailq()) == 1 else None,
                       what="only the held message left")
    assert entry["id"] == held_id and entry["held"] is True
    assert entry["recipients"][0]["state"] == "held"

    assert qmgrctl(mta, "release", held_id).stdout == f"{held_id}: released\n"
    dumps = _wait_dumps(server, 2)
    assert sorted(f["X-Rcpt-Args"][0] for f, _ in dumps) == ["<free@example.test>", "<held@example.test>"]
    wait_for(lambda: not mta.content_files(), what="the released message to leave the queue")
    assert mta.mailq() == []


@needs_sink
def test_delete_removes_the_message_and_its_content_without_a_dsn(relay) -> None:  # noqa: F811
    mta, server = relay()
    without_smar(mta)
    send(mta, "sender@example.test", ["doomed@example.test", "also@example.test"])
    ta_id = queued_id(mta)
    assert ta_id in mta.content_files()
    result = qmgrctl(mta, "delete", ta_id)
    assert result.returncode == 0 and result.stdout == f"{ta_id}: deleted\n", result.stderr
    wait_for(lambda: not mta.content_files(), what="the content file to be removed")
    assert mta.mailq() == []
    assert f"{ta_id}-0000: deleted" in mta.log("qmgr") and "DSN" not in mta.log("qmgr")
    again = qmgrctl(mta, "delete", ta_id)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == f"meta1 qmgrctl: {ta_id}: no such message in the queue\n"
    # Nothing went out: with smar back, a new message is the sink's first.
    mta.spawn("smar")
    send(mta, "sender@example.test", ["after@example.test"])
    [(fields, _)] = _wait_dumps(server, 1)
    assert fields["X-Rcpt-Args"] == ["<after@example.test>"]


def test_unknown_and_malformed_ids_are_refused_with_status_1(tmp_path) -> None:
    with MTA(tmp_path) as mta:
        for action in ("hold", "release", "delete"):
            result = qmgrctl(mta, action, UNKNOWN_ID)
            assert result.returncode == 1, result.stderr
            assert result.stderr == f"meta1 qmgrctl: {UNKNOWN_ID}: no such message in the queue\n"
        bad = qmgrctl(mta, "hold", "../etc/passwd")
        assert bad.returncode == 1 and bad.stderr == "meta1 qmgrctl: '../ETC/PASSWD' is not a queue id\n"
        assert qmgrctl(mta, "flush").stdout == "flushed: 0 deferred recipients due now\n"
        mta.wait_log("qmgr", f"qmgrctl hold {UNKNOWN_ID}: refused: ")


def test_qmgr_not_running_is_exit_75(tmp_path) -> None:
    mta = MTA(tmp_path)
    result = qmgrctl(mta, "flush")                       # never started: no socket at all
    assert result.returncode == EX_TEMPFAIL and "qmgr is not running" in result.stderr
    mta.spawn("qmgr")
    try:
        mta.kill("qmgr")                                  # SIGKILL leaves the socket file behind
        assert (mta.queue / "qmgr" / "ctl").exists()
        result = qmgrctl(mta, "hold", UNKNOWN_ID)
        assert result.returncode == EX_TEMPFAIL and "qmgr is not running" in result.stderr
    finally:
        mta.stop()


# -- without processes ----------------------------------------------------------------------

@pytest.mark.parametrize("args, record", [
    (("flush",), FlushQueue(None)),
    (("flush", "Example.TEST."), FlushQueue("example.test")),
    (("hold", "s0000000000000001ab"), HoldMessage("S0000000000000001AB")),
    (("release", "S0000000000000001AB"), ReleaseMessage("S0000000000000001AB")),
    (("delete", "S0000000000000001AB"), DeleteMessage("S0000000000000001AB")),
])
def test_request_for(args, record) -> None:
    assert request_for(*args) == record


def test_request_for_refuses_what_is_not_a_command() -> None:
    with pytest.raises(ValueError, match="unknown command"):
        request_for("requeue", "x")
    with pytest.raises(ValueError, match="needs a queue id"):
        request_for("hold")


class FakeDelivery:
    """What ControlServer uses of DeliveryManager: ``handle`` (KeyError for an unknown id, as
    the scheduler raises it) and, as its own ``scheduler``, the scheduler's introspection
    (nothing deferred, nothing in flight)."""

    def __init__(self, known: set[str]):
        self.known = known
        self.events: list[object] = []
        self.closed = False
        self.scheduler = self

    def handle(self, event: object) -> None:
        if getattr(event, "ta_id", None) not in (None, *self.known):
            raise KeyError(event.ta_id)
        self.events.append(event)

    def recipients(self):
        return iter(())

    def state_of(self, rcpt_id: str):
        return None


@pytest.fixture
def control(tmp_path):
    """A ControlServer on its own event loop thread, with a fake qmgr around it."""
    layout = QueueLayout(tmp_path / "queue")
    layout.ensure()
    loop = EventLoop()
    manager = SimpleNamespace(loop=loop, layout=layout, incoming={}, stopping=False,
                              delivery=FakeDelivery({"S0000000000000001AB"}))
    server = ControlServer(manager)
    server.start()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    yield server, manager.delivery
    loop.call_soon_threadsafe(server.stop)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_control_server_turns_commands_into_scheduler_events(control) -> None:
    server, delivery = control
    assert send_command(server.path, HoldMessage("S0000000000000001AB")) == ControlResult(
        True, "S0000000000000001AB: held")
    assert send_command(server.path, ReleaseMessage("S0000000000000001AB")).ok
    assert send_command(server.path, FlushQueue("example.test")).ok
    assert send_command(server.path, DeleteMessage("S0000000000000002AB")) == ControlResult(
        False, "S0000000000000002AB: no such message in the queue")
    assert delivery.events == [Hold("S0000000000000001AB"), Release("S0000000000000001AB"), Flush("example.test")]


def test_a_record_that_is_no_command_closes_the_link(control) -> None:
    server, delivery = control
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(server.path))
        sock.sendall(frame(Hello(PROTOCOL_VERSION, "qmgrctl", 1, 0)) + frame(CommitResult("x", True, "")))
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert delivery.events == [] and len(received) < 100  # its Hello, then the close


def test_send_command_refuses_an_answer_that_is_no_control_result(tmp_path) -> None:
    path = str(tmp_path / "ctl")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def wrong_peer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(frame(Hello(PROTOCOL_VERSION, "qmgr", 1, 0)) + frame(CommitResult("x", True, "")))
            # Close only after the client has sent its command, or it may see a reset
            # instead of the wrong answer.
            conn.settimeout(10)
            received = b""
            while len(received) < 2 * 4 + 8 and (chunk := conn.recv(65536)):
                received += chunk

    thread = threading.Thread(target=wrong_peer, daemon=True)
    thread.start()
    with listener, pytest.raises(ControlError, match="answered CommitResult, not ControlResult"):
        send_command(path, FlushQueue(None), timeout=10)
    thread.join(10)
