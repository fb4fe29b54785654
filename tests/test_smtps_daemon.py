"""smtps as a process: timeouts, the session limit, shutdown, qmgr away (real sockets)."""

from __future__ import annotations

import signal
import socket

from mta import MTA, wait_for


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    assert sock.recv(512).startswith(b"220 ")
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def test_idle_client_gets_421_after_io_timeout(tmp_path):
    """RFC 5321 §4.5.3.2: the server waits for the next command only so long."""
    with MTA(tmp_path, extra_smtps="IO_timeout = 1;") as mta:
        sock = connect(mta.port)
        sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
        out = read_until_closed(sock)
        assert out.endswith(b"421 4.4.2 mx.test timeout; closing connection\r\n")
        sock.close()
        mta.wait_log("smtps", "(timeout)")   # logged as the session ends, after the close


def test_max_sessions_refuses_the_next_client_with_421(tmp_path):
    with MTA(tmp_path, extra_smtps="max_sessions = 2;") as mta:
        held = [connect(mta.port), connect(mta.port)]
        extra = socket.create_connection(("127.0.0.1", mta.port), timeout=20)
        assert read_until_closed(extra).startswith(b"421 4.3.2 ")
        extra.close()
        held.pop().close()
        wait_for(lambda: "disconnect" in mta.log("smtps"), what="a session to end")
        again = connect(mta.port)
        again.close()
        for sock in held:
            sock.close()


def test_sigterm_answers_idle_sessions_421_and_exits(tmp_path):
    with MTA(tmp_path) as mta:
        sock = connect(mta.port)
        sock.sendall(b"EHLO c.example\r\n")
        assert sock.recv(4096).startswith(b"250-mx.test")
        mta.kill("smtps", signal.SIGTERM)
        assert read_until_closed(sock) == b"421 4.3.2 mx.test shutting down\r\n"
        sock.close()
        assert mta.procs["smtps"].returncode == 0


def test_without_qmgr_the_final_dot_gets_451_never_250(tmp_path):
    """B39/T68: with qmgr away smtps still talks, but never says 250 to the final dot."""
    with MTA(tmp_path) as mta:
        mta.kill("qmgr")
        wait_for(lambda: "connection to qmgr lost" in mta.log("smtps"), what="smtps to notice")
        sock = connect(mta.port)
        sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                     b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        out = read_until_closed(sock)
        sock.close()
        assert b"451 4.3.0 " in out and b"accepted" not in out
        # The file is removed by smtps' opener thread, just after the reply.
        wait_for(lambda: not any((mta.queue / "cdb").rglob("S*")), timeout=10,
                 what="the content of the refused message to be removed")
        mta.spawn("qmgr")
        wait_for(lambda: mta.log("smtps").count("connected to qmgr") >= 2, what="reconnect")
        sock = connect(mta.port)
        sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                     b"DATA\r\nSubject: y\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert b" accepted\r\n" in read_until_closed(sock)
        sock.close()
        assert len(mta.mailq()) == 1


def send_one(port: int, tag: str) -> bytes:
    sock = connect(port)
    sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                 b"DATA\r\nSubject: " + tag.encode() + b"\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    out = read_until_closed(sock)
    sock.close()
    return out


def test_two_processes_share_the_listen_socket(tmp_path):
    """processes = 2: a forked second smtps (process index 01) serves the same port."""
    import re
    with MTA(tmp_path, extra_smtps="processes = 2;") as mta:
        wait_for(lambda: mta.log("smtps").count("ready: listening") == 2, what="both processes")
        wait_for(lambda: mta.log("smtps").count("connected to qmgr") == 2, what="both linked")
        assert "smtps.1[" in mta.log("smtps")
        ids = [re.search(rb"250 2\.0\.0 (S[0-9A-F]{18}) accepted", send_one(mta.port, str(n))).group(1)
               for n in range(12)]
        assert {i[-2:] for i in ids} <= {b"00", b"01"}
        assert len(mta.mailq()) == 12
        assert (mta.queue / "smtps" / "idstate").exists()
        mta.kill("smtps", signal.SIGTERM)
        assert mta.procs["smtps"].returncode == 0
        log = mta.log("smtps")
        assert log.count(": stopped") == 2, log      # the parent waited for its child


def test_content_sync_files_mode(tmp_path):
    """qmgr { content_sync = files; }: per-file fdatasync and per-directory fsync."""
    with MTA(tmp_path, extra_global="qmgr { content_sync = files; }") as mta:
        assert b" accepted\r\n" in send_one(mta.port, "files")
        (entry,) = mta.mailq()
        assert mta.content(entry["id"]).endswith(b"\r\nbody\r\n")


def test_a_killed_parent_takes_its_smtps_children_along(tmp_path):
    """SIGKILL of the first smtps process: the forked one does not keep the port."""
    import os
    import re
    with MTA(tmp_path, extra_smtps="processes = 2;") as mta:
        wait_for(lambda: mta.log("smtps").count("ready: listening") == 2, what="both processes")
        child = int(re.search(r"smtps\.1\[(\d+)\]", mta.log("smtps")).group(1))
        mta.kill("smtps")

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{child}/stat") as f:       # a zombie until reaped by init
                return f.read().split(") ")[1].startswith("Z")
        wait_for(gone, timeout=20, what="the child to exit")
        mta.spawn("smtps")                # the port is free again
        mta.wait_linked()


def test_one_flush_per_batch_envelopes_written_before_the_syncfs(tmp_path, monkeypatch):
    """D-RCV-6: with content_sync = filesystem a batch is one IBDB write followed by one
    syncfs (which makes the envelopes and the content durable together), no fdatasync."""
    import os
    from meta1.config import load_text
    from meta1.qmgr import daemon as qmgr_daemon
    from test_queue_support import store
    config = load_text(f'queue_directory = "{tmp_path / "queue"}";', "test.conf")
    manager = qmgr_daemon.QueueManager(config)
    try:
        manager.recover()
        batch = [store(manager.layout, n) for n in (1, 2, 3)]
        calls = []
        log_file = manager.ibdb.path
        monkeypatch.setattr(qmgr_daemon, "syncfs", lambda fd: calls.append(("syncfs", os.path.getsize(log_file))))
        monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(("fdatasync", fd)))
        before = os.path.getsize(log_file) if log_file and os.path.exists(log_file) else 0
        manager._flush(batch)
        assert [name for name, _ in calls] == ["syncfs"]
        assert calls[0][1] > before                    # the envelopes were written first
        assert manager.failed == {}
    finally:
        manager.ibdb.close()
        manager.syncers.shutdown()
        manager.pool.shutdown(wait=True)
