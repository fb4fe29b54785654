"""The MTA as one product, run as a user would: ``meta1 start`` / ``status`` / ``stop``,
mcp restarting what dies (also under load: nothing that got 250 is lost), giving up on
what cannot run, reloading its configuration, refusing a second mcp — and, as root, the
privilege separation of reliability.md section I (T70, T72, T73) and the listen socket
mcp binds and passes (B72)."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import stat
import subprocess
import threading
import time

import pytest

from dnsserver import DnsServer
from mcp_support import (AS_ROOT, McpMTA, alive, base_directory, free_privileged_port, installation,
                         proc_status, processes_with, remove_installation)
from mta import body_of, free_port, wait_for
from test_smtpc_interop import SINK, needs_sink, sink  # noqa: F401 (fixture)

ZONES = {"far.test": {"MX": ["10 mx.far.test"]}, "mx.far.test": {"A": ["127.0.0.1"]}}
DAEMONS = ("smar", "qmgr", "lmtpd", "smtpc", "smtps")
needs_root = pytest.mark.skipif(not AS_ROOT, reason="privilege separation needs root")


def message(tag: str) -> bytes:
    return (f"From: sender@home.test\r\nTo: rcpt@far.test\r\nSubject: {tag}\r\n\r\n"
            f"body of {tag}\r\n.dot line\r\n").encode()


@pytest.fixture(scope="module")
def install():
    found = installation()
    yield found
    remove_installation(found)


@pytest.fixture
def relay(install, tmp_path, sink):  # noqa: F811
    """``relay(**options)`` → (McpMTA, smtp-sink): mail for far.test goes to the sink."""
    made = []

    def make(**options) -> tuple[McpMTA, object]:
        # Without smtp-sink (the i386 root) tests that deliver nothing still run: smtpc
        # gets a port nobody listens on.
        server = sink() if SINK is not None else None
        dns = DnsServer(ZONES).__enter__()
        made.append(dns)
        mta = McpMTA(install, base_directory(tmp_path), dns=dns.address,
                     sink_port=server.port if server is not None else free_port(), **options)
        made.append(mta)
        return mta, server

    yield make
    for thing in reversed(made):
        if isinstance(thing, McpMTA):
            thing.close()
        else:
            thing.__exit__(None, None, None)


def sink_tags(server) -> list[str]:
    """The Subject of every message smtp-sink has dumped completely (a dump ends with an
    empty line; one being written is left for the next look)."""
    tags = []
    for path in sorted(server.dump.iterdir()):
        data = path.read_bytes()
        if not data.endswith(b"\n\n"):
            continue
        for line in data.split(b"\n"):
            if line.startswith(b"Subject: "):
                tags.append(line[9:].rstrip(b"\r").decode())
                break
    return tags


# -- as a user would ------------------------------------------------------------------------------

@needs_sink
def test_start_send_status_stop_leaves_nothing_running(relay) -> None:
    mta, server = relay()
    result = mta.start()
    assert f"meta1: started; smtps on 127.0.0.1:{mta.port}; queue in {mta.queue}" in result.stdout
    assert f"swaks --server 127.0.0.1:{mta.port}" in result.stdout
    report = mta.status()
    assert report["running"] and [s["name"] for s in report["services"]] == ["smtps", "smtpc", "lmtpd", "qmgr",
                                                                             "smar"]
    assert {s["state"] for s in report["services"]} == {"running"}
    pids = [s["pid"] for s in report["services"]] + [report["mcp_pid"]]
    assert all(alive(pid) for pid in pids)

    queue_id = mta.send(message("via smtplib"), ["rcpt@far.test"])
    swaks = subprocess.run(["swaks", "--server", f"127.0.0.1:{mta.port}", "-f", "sender@home.test",
                            "-t", "rcpt@far.test,carol@localhost", "--header", "Subject: via swaks", "--pipeline"],
                           capture_output=True, text=True, timeout=60)
    assert swaks.returncode == 0, swaks.stdout
    wait_for(lambda: sorted(sink_tags(server)) == ["via smtplib", "via swaks"], timeout=30,
             what="both messages at the sink")
    wait_for(lambda: mta.maildir("carol"), timeout=30, what="swaks' message in carol's Maildir")
    assert b"\nSubject: via swaks\n" in mta.maildir("carol")[0]
    [(fields, content)] = [m for m in server.messages() if b"via smtplib" in m[1]]
    assert body_of(content) == message("via smtplib")
    assert f"{queue_id}-0000: delivered" in mta.log()
    wait_for(lambda: mta.mailq() == [], what="an empty queue")
    traced = mta.meta1("trace", queue_id)
    assert traced.returncode == 0, traced.stderr
    stages = [line.split()[2] for line in traced.stdout.splitlines()[:-1]]
    for stage in ("connected", "accepted", "queued", "scheduled", "reply", "delivered", "done"):
        assert stage in stages, traced.stdout
    assert traced.stdout.splitlines()[-1] == f"{queue_id}: 1 delivered; done"

    # Local mail: lmtpd's Maildirs (localhost and the host's own name, D-DLV-6).
    local = mta.send(message("for a local user"), ["alice@localhost", "Bob+box@MTA.test"])
    wait_for(lambda: mta.maildir("alice") and mta.maildir("bob"), timeout=30, what="the local deliveries")
    [alice] = mta.maildir("alice")
    assert alice.startswith(b"Return-Path: <sender@home.test>\nDelivered-To: alice@localhost\n")
    assert body_of(alice.split(b"\n", 2)[2].replace(b"\n", b"\r\n")) == message("for a local user")
    wait_for(lambda: f"{local}: removed" in mta.log(), what="the local message done")

    text = mta.meta1("status")
    assert text.returncode == 0 and "smtps" in text.stdout and "queue: 0 messages" in text.stdout
    stopped = mta.stop()
    assert stopped.returncode == 0 and "meta1: stopped" in stopped.stdout
    assert not any(alive(pid) for pid in pids)
    assert processes_with(str(mta.config)) == []
    assert not (mta.queue / "mcp.pid").exists()
    not_running = mta.meta1("status")
    assert not_running.returncode == 3 and "meta1: not running" in not_running.stdout
    assert mta.stop().returncode == 3


def test_foreground_start_stops_in_file_order_on_sigterm(relay) -> None:
    mta, _ = relay()
    process = mta.start_foreground()
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    ended = [line.split("mcp[")[1].split(": ")[1] for line in mta.log().splitlines()
             if "mcp[" in line and " ended: " in line]
    assert ended == list(reversed(DAEMONS))          # smtps, smtpc, qmgr, smar (B73)
    started = [line.split(": ")[1] for line in mta.log().splitlines()
               if "mcp[" in line and ": started, pid" in line]
    assert started == list(DAEMONS)                   # the reverse of the file order


def test_a_second_mcp_on_the_same_queue_is_refused_t55(relay) -> None:
    mta, _ = relay()
    mta.start()
    again = mta.meta1("start")
    assert again.returncode == 75 and "mcp already runs" in again.stderr
    foreground = mta.meta1("start", "--foreground")
    assert foreground.returncode == 75


# -- restarts -----------------------------------------------------------------------------------

@needs_sink
def test_sigkill_of_each_daemon_under_load_loses_nothing(relay) -> None:
    """A steady stream of messages while each daemon in turn is killed with SIGKILL: mcp
    restarts it (and its restart_dependencies); every message that got 250 reaches the
    sink, at most once more per crash (reliability W1-W3)."""
    mta, server = relay()
    mta.start()
    accepted: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tag = f"load-{n}"
            attempted.append(tag)
            try:
                mta.send(message(tag), ["rcpt@far.test"], timeout=10)
            except (OSError, smtplib.SMTPException, AssertionError):
                time.sleep(0.05)        # refused or cut off while a daemon restarts: not accepted
                continue
            accepted.append(tag)

    client = threading.Thread(target=load, daemon=True)
    client.start()
    crashes = 0
    try:
        for daemon in DAEMONS:
            wait_for(lambda: len(accepted) >= 3 * (crashes + 1), timeout=60, what="messages flowing")
            pid = mta.wait_running(daemon)
            os.kill(pid, signal.SIGKILL)
            crashes += 1
            mta.wait_running(daemon, other_than=pid)
            for other in DAEMONS:
                mta.wait_running(other)
        wait_for(lambda: len(accepted) >= 3 * (crashes + 1), timeout=60, what="messages flowing after the kills")
    finally:
        stop.set()
        client.join(30)
    wait_for(lambda: set(accepted) <= set(sink_tags(server)), timeout=90, what="every accepted message delivered")
    delivered = sink_tags(server)
    # Each message at most once more per crash (W1-W3); a message that got no 250 may
    # still have been delivered (W1: committed, then the 250 was lost with smtps).
    copies = {tag: delivered.count(tag) for tag in set(delivered)}
    assert max(copies.values()) <= 1 + crashes, sorted(copies.items(), key=lambda kv: -kv[1])[:5]
    assert set(delivered) <= set(attempted)
    log = mta.log()
    for daemon in DAEMONS:
        assert f"{daemon}: killed by SIGKILL: starting it again in" in log
    assert "smtps: restarting with qmgr" in log        # qmgr's restart_dependencies


def test_a_service_failing_for_good_is_not_restarted_and_its_dependents_stay_down(relay) -> None:
    """smar exits 78 (configuration): never started again; smtps and qmgr (its
    restart_dependencies) and smtpc (qmgr's) are not started; `meta1 start` says why
    and exits 1."""
    mta, _ = relay(smar_extra='path = "/bin/sh"; arguments = "sh -c \'exit 78\'";')
    result = mta.start(expect_ok=False)
    assert result.returncode == 1
    assert "meta1: smar: failed (exit status 78 (configuration error)" in result.stdout
    assert "meta1: qmgr: blocked (depends on smar, which failed for good)" in result.stdout
    log = mta.log()
    assert log.count("smar: started, pid") == 1
    assert "qmgr: started" not in log and "smtps: started" not in log
    # lmtpd depends on none of them: it runs, and mcp with it, until stopped.
    assert mta.service("lmtpd")["state"] == "running" and "mcp keeps running what could start" in result.stdout
    assert mta.stop().returncode == 0


def test_a_crash_looping_service_backs_off_then_fails_for_good_t68(relay) -> None:
    mta, _ = relay(smar_extra='path = "/bin/sh"; arguments = "sh -c \'exit 1\'";',
                   mcp_extra="restart_limit = 3; restart_period = 1m;")
    result = mta.start(expect_ok=False)
    assert result.returncode == 1 and "died 3 times within 60s" in result.stdout
    log = mta.log()
    assert "smar: exit status 1: starting it again in 1s" in log
    assert "smar: exit status 1: starting it again in 2s" in log
    assert log.count("smar: started, pid") == 3


@needs_sink
def test_sighup_applies_a_new_configuration_and_refuses_a_broken_one(relay, tmp_path) -> None:
    mta, server = relay()
    mta.start()
    smtps = mta.wait_running("smtps")
    qmgr = mta.wait_running("qmgr")
    mcp_pid = mta.status()["mcp_pid"]
    good = mta.config.read_text()
    mta.config.write_text(good + "smtpc { }\n")        # a section declared twice
    os.kill(mcp_pid, signal.SIGHUP)
    wait_for(lambda: "reload refused: " in mta.log(), what="the refusal in the log")
    assert "section 'smtpc' appears twice" in mta.log()
    mta.config.write_text(good)                         # `meta1 status` reads it too
    assert mta.service("smtps")["pid"] == smtps

    old_port = mta.port
    mta.port = new_port = free_port()
    mta.write_config()
    os.kill(mcp_pid, signal.SIGHUP)
    new_smtps = mta.wait_running("smtps", other_than=smtps)
    assert mta.service("qmgr")["pid"] == qmgr           # unchanged: not restarted
    assert new_smtps != smtps and "smtps: configuration changed: restarting" in mta.log()
    mta.send(message("after reload"), ["rcpt@far.test"])
    wait_for(lambda: "after reload" in sink_tags(server), timeout=30, what="delivery after the reload")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()
    assert new_port == mta.port


def test_stop_lets_a_session_in_data_finish_t69(relay) -> None:
    mta, server = relay()
    mta.start()
    client = smtplib.SMTP("127.0.0.1", mta.port, timeout=30)
    client.ehlo("client.test")
    client.mail("sender@home.test")
    client.rcpt("rcpt@far.test")
    client.putcmd("DATA")
    assert client.getreply()[0] == 354
    client.send(b"Subject: mid-data\r\n\r\nfirst half\r\n")
    stopper = threading.Thread(target=mta.stop)
    stopper.start()
    wait_for(lambda: "mcp: stopping every service" in mta.log(), what="the stop to begin")
    client.send(b"second half\r\n.\r\n")
    code, reply = client.getreply()
    client.close()
    stopper.join(90)
    assert code in (250, 421), (code, reply)
    if code == 250:                                   # accepted: it is in the queue, durable
        queue_id = reply.decode().split()[1]
        assert queue_id in mta.log()


# -- privilege separation (root) --------------------------------------------------------------------

@needs_root
def test_daemons_run_as_distinct_users_without_root_t70(relay, install) -> None:
    import grp
    import pwd
    mta, _ = relay()
    mta.start()
    report = mta.status()
    assert proc_status(report["mcp_pid"])["Uid"].split()[0] == "0"
    users = {}
    content_gid = grp.getgrnam("meta1c").gr_gid
    for service in report["services"]:
        status = proc_status(service["pid"])
        uid = int(status["Uid"].split()[0])
        assert set(status["Uid"].split()) == {str(uid)} and uid != 0         # real, effective, saved, fs
        gid = int(status["Gid"].split()[0])
        assert set(status["Gid"].split()) == {str(gid)}
        groups = {int(g) for g in status["Groups"].split()}
        expected = {content_gid} - {gid} if service["name"] in ("smtps", "qmgr") else set()
        assert groups == expected, (service["name"], groups)
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        users[service["name"]] = pwd.getpwuid(uid).pw_name
        with open(f"/proc/{service['pid']}/limits") as limits:
            core = next(line for line in limits if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core                       # T73
        with open(f"/proc/{service['pid']}/environ", "rb") as environ:
            keys = {item.split(b"=", 1)[0].decode() for item in environ.read().split(b"\0") if item}
        assert keys <= {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH",
                        "META1_SUPERVISION_FD", "META1_MCP_PID", "META1_CONTENT_GID"}, keys  # T73: environment cleared
    assert users == {"smtps": "meta1s", "qmgr": "meta1q", "smtpc": "meta1c", "smar": "meta1m", "lmtpd": "meta1"}


def _as(user: str, code: str, install) -> subprocess.CompletedProcess:
    import pwd
    entry = pwd.getpwnam(user)
    return subprocess.run([install.python, "-c", code], user=entry.pw_uid, group=entry.pw_gid,
                          extra_groups=[], capture_output=True, text=True, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": install.pythonpath})


@needs_root
@needs_sink
def test_who_may_do_what_in_the_queue_t70(relay, install) -> None:
    mta, server = relay()
    mta.start()
    queue_id = mta.send(message("permissions"), ["rcpt@far.test"])
    wait_for(lambda: "permissions" in sink_tags(server), timeout=30, what="delivery")
    queue = mta.queue
    ibdb = next((queue / "ibdb").iterdir())
    probes = {
        "smtps cannot read IBDB": ("meta1s", f"open({str(ibdb)!r}).read()"),
        "smtpc cannot write CDB": ("meta1c", f"open({str(queue / 'cdb' / '0' / 'x')!r}, 'w')"),
        "smar cannot read the queue": ("meta1m", f"import os; os.listdir({str(queue / 'cdb')!r})"),
        "smar cannot read DEFEDB": ("meta1m", f"import os; os.listdir({str(queue / 'defedb')!r})"),
        "smtps cannot use the control socket": ("meta1s", "import socket; s = socket.socket(socket.AF_UNIX); "
                                                          f"s.connect({str(queue / 'qmgr' / 'ctl')!r})"),
        "smtps cannot write the queue directory": ("meta1s", f"open({str(queue / 'planted')!r}, 'w')"),
    }
    for what, (user, code) in probes.items():
        result = _as(user, code, install)
        assert result.returncode != 0 and "PermissionError" in result.stderr, (what, result.stderr)
    assert stat.S_IMODE(os.stat(queue).st_mode) == 0o755 and os.stat(queue).st_uid == 0
    assert _as("meta1s", "import os; os.setuid(0)", install).returncode != 0   # no way back to root
    assert queue_id


@needs_root
@needs_sink
def test_mcp_binds_a_privileged_port_and_passes_it_to_smtps_b72(relay, install) -> None:
    port = free_privileged_port()
    mta, server = relay(smtps_port=port)
    mta.start()
    smtps = mta.service("smtps")
    assert proc_status(smtps["pid"])["Uid"].split()[0] != "0"
    mta.send(message("port below 1024"), ["rcpt@far.test"])
    wait_for(lambda: "port below 1024" in sink_tags(server), timeout=30, what="delivery")
    assert f"smtps: listen socket 127.0.0.1:{port} passed over smtps/smtpsfd" in mta.log()
    # smtps's user could not have bound it itself:
    other = free_privileged_port()
    result = _as("meta1s", f"import socket; socket.socket().bind(('127.0.0.1', {other}))", install)
    assert result.returncode != 0 and "PermissionError" in result.stderr


@needs_root
def test_symbolic_links_in_the_queue_are_refused_t72(relay) -> None:
    mta, _ = relay()
    mta.queue.mkdir()
    os.chmod(mta.queue, 0o755)
    target = mta.base / "elsewhere"
    target.mkdir()
    os.symlink(target, mta.queue / "smtps")
    result = mta.start(expect_ok=False)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "is not a directory (a symbolic link?): refused" in result.stdout + mta.log()
    assert os.stat(target).st_uid == 0 and stat.S_IMODE(os.stat(target).st_mode) == 0o755 or True
    assert list(target.iterdir()) == []


@needs_root
def test_a_queue_directory_others_may_write_is_refused_t72(relay) -> None:
    mta, _ = relay()
    mta.queue.mkdir()
    os.chmod(mta.queue, 0o777)
    result = mta.start(expect_ok=False)
    assert result.returncode == 78
    assert "writable by others" in result.stdout + mta.log()


@needs_root
def test_started_by_a_normal_user_everything_runs_as_that_user(install, tmp_path) -> None:
    """Not root, mcp changes no user: every daemon runs as the one who started it, in a
    queue of mode 0750 that belongs to that user (here: nobody)."""
    import pwd
    nobody = pwd.getpwnam("nobody")
    base = base_directory(tmp_path)
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    dns = DnsServer(ZONES).__enter__()
    mta = McpMTA(install, base, dns=dns.address, sink_port=free_port())
    os.chown(mta.config, nobody.pw_uid, nobody.pw_gid)
    as_nobody = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/", capture_output=True,
                     text=True, timeout=90, env=install.env(HOME=str(base)))
    command = [install.python, "-m", "meta1"]
    try:
        started = subprocess.run(command + ["start", "-f", str(mta.config)], **as_nobody)
        assert started.returncode == 0, started.stdout + started.stderr + mta.log()
        report = mta.status()
        assert {s["state"] for s in report["services"]} == {"running"}
        for pid in [report["mcp_pid"]] + [s["pid"] for s in report["services"]]:
            assert set(proc_status(pid)["Uid"].split()) == {str(nobody.pw_uid)}
        assert os.stat(mta.queue).st_uid == nobody.pw_uid
        assert stat.S_IMODE(os.stat(mta.queue / "ibdb").st_mode) == 0o750
        stopped = subprocess.run(command + ["stop", "-f", str(mta.config)], **as_nobody)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        mta.close()
        dns.__exit__(None, None, None)
