"""Running the whole MTA as a user would: ``meta1 start`` with mcp and its daemons.

    install = installation()                     # once per session (fixture in test_mcp.py)
    mta = McpMTA(install, base, dns=..., sink_port=...)
    mta.start()                                   # meta1 start (in the background), settled
    mta.status()["services"]                      # meta1 status --json
    mta.stop()                                    # meta1 stop; nothing left running

Responsibilities
    * :func:`installation` — an interpreter and a PYTHONPATH that the daemons' users can
      use. Not root: this process's interpreter and the checkout. As root, mcp runs each
      daemon as one of MeTA1's accounts (created with ``meta1 accounts --create``), which
      cannot enter /root: meta1 and its pure-Python dependencies are copied into a
      directory under /var/tmp that every user may read, and the interpreter is this one
      if they may run it, else Debian's /usr/bin/python3 of the same version — as
      ``tools/run`` installs into /opt/meta1 for the same reason.
    * :class:`McpMTA` — one MTA: its queue directory (as root under /var/tmp, mode 0755:
      pytest's own temporary directories are 0700), a configuration relaying through a
      loopback DNS server to a sink, and the commands ``start``, ``stop``, ``status``,
      ``mailq``; at the end every process it started is stopped by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mta import REPO, free_port, wait_for

AS_ROOT = os.geteuid() == 0
PACKAGES = ("meta1", "dns", "sortedcontainers", "pyparsing")
USERS = ("meta1s", "meta1q", "meta1c", "meta1m", "meta1")


@dataclass(frozen=True)
class Installation:
    python: str
    pythonpath: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("META1_", "PYTHON"))}
        env.update(PYTHONPATH=self.pythonpath, PYTHONDONTWRITEBYTECODE="1", **extra)
        return env

    def meta1(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-m", "meta1", *args], capture_output=True, text=True,
                              env=self.env(**env), timeout=timeout, cwd="/")


def installation() -> Installation:
    """See the module docstring; skips when the daemons' users could run nothing."""
    if not AS_ROOT:
        return Installation(sys.executable, str(REPO))
    site = Path("/var/tmp") / f"meta1-tests-site-{os.getpid()}"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(mode=0o755)
    os.chmod(site, 0o755)
    for name in PACKAGES:
        module = __import__(name)
        source = Path(module.__file__).parent
        shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in site.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    created = subprocess.run([sys.executable, "-m", "meta1", "accounts", "--create"], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if created.returncode != 0:
        pytest.skip(f"cannot create MeTA1's accounts: {created.stderr.strip()}")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        try:
            probe = subprocess.run([python, "-c", "import meta1, dns, sortedcontainers, pyparsing"],
                                   user="meta1m", group="meta1m", extra_groups=[], capture_output=True,
                                   env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return Installation(python, str(site))
    pytest.skip("no Python interpreter that MeTA1's accounts may run (this one is under /root?)")


def remove_installation(install: Installation) -> None:
    if AS_ROOT and install.pythonpath.startswith("/var/tmp/meta1-tests-site-"):
        shutil.rmtree(install.pythonpath, ignore_errors=True)


def base_directory(tmp_path: Path) -> Path:
    """Where one test's MTA lives: tmp_path, or as root a 0755 directory under /var/tmp."""
    if not AS_ROOT:
        return tmp_path
    base = Path(tempfile.mkdtemp(prefix="meta1-mcp-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    return base


class McpMTA:
    """One MTA run by mcp (see the module docstring)."""

    def __init__(self, install: Installation, base: Path, *, dns: tuple[str, int], sink_port: int,
                 smtps_port: int | None = None, extra: str = "", smtps_extra: str = "", smar_extra: str = "",
                 mcp_extra: str = "restart_period = 1m; shutdown_timeout = 20s; start_timeout = 30s;"):
        self.install = install
        self.base = base
        self.queue = base / "queue"
        self.port = smtps_port or free_port()
        self.config = base / "meta1.conf"
        self.dns, self.sink_port = dns, sink_port
        self.extra, self.smtps_extra, self.smar_extra, self.mcp_extra = extra, smtps_extra, smar_extra, mcp_extra
        self.write_config()
        self.started: subprocess.CompletedProcess | None = None
        self.foreground: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()

    def write_config(self, **changes: str) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        host, port = self.dns
        self.config.write_text(
            f"queue_directory = {self.queue};\nhostname = mta.test;\n{self.extra}\n"
            f"mcp {{ {self.mcp_extra} }}\n"
            f"smtps {{ IO_timeout = 30s; {self.smtps_extra}\n"
            f"    listen_socket {{ type = inet; address = 127.0.0.1; port = {self.port}; }}\n}}\n"
            f"smtpc {{ remote_port = {self.sink_port}; IO_timeout = 10s; LMTP_socket = lmtpd/lmtpsock; }}\n"
            f"lmtpd {{ socket = lmtpd/lmtpsock; mail_directory = mail; }}\n"
            f"qmgr {{ min_queue_delay = 1s; max_queue_delay = 2s; }}\n"
            f"smar {{ nameserver = {{ {host}:{port} }}; DNS_timeout = 2; {self.smar_extra} }}\n")
        os.chmod(self.config, 0o644)

    # -- the commands ---------------------------------------------------------------------------

    def meta1(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return self.install.meta1(*args[:1], "-f", str(self.config), *args[1:], timeout=timeout)

    def start(self, expect_ok: bool = True) -> subprocess.CompletedProcess:
        """``meta1 start`` in the background: returns once mcp has settled."""
        result = self.meta1("start")
        self.started = result
        self._remember_pids()
        if expect_ok:
            assert result.returncode == 0, result.stdout + result.stderr + self.log()
            assert "meta1: started" in result.stdout, result.stdout
        return result

    def start_foreground(self) -> subprocess.Popen:
        """``meta1 start --foreground`` as a child of the test (its log on ``self.out``)."""
        self.out = self.base / "foreground.log"
        self.foreground = subprocess.Popen(
            [self.install.python, "-m", "meta1", "start", "--foreground", "-f", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.out, "wb"), env=self.install.env(), cwd="/")
        wait_for(lambda: "meta1: started" in self.out.read_text() or self.foreground.poll() is not None,
                 timeout=60, what="mcp settled")
        self._remember_pids()
        return self.foreground

    def stop(self) -> subprocess.CompletedProcess:
        return self.meta1("stop")

    def status(self) -> dict:
        result = self.meta1("status", "--json")
        report = json.loads(result.stdout)
        self.seen_pids.update(s["pid"] for s in report.get("services", []) if s["pid"])
        return report

    def service(self, name: str) -> dict:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def mailq(self) -> list[dict]:
        result = self.meta1("mailq", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def maildir(self, mailbox: str) -> list[bytes]:
        """The messages lmtpd delivered into ``mailbox`` (its Maildir's new/), oldest first."""
        new = self.queue / "mail" / mailbox / "new"
        return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []

    def log(self) -> str:
        path = self.queue / "meta1.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        if self.foreground is not None and self.out.exists():
            text += self.out.read_text(errors="replace")
        return text

    def _remember_pids(self) -> None:
        try:
            self.status()
        except (ValueError, OSError, subprocess.SubprocessError):
            pass

    # -- waiting ----------------------------------------------------------------------------------

    def wait_running(self, name: str, other_than: int | None = None, timeout: float = 60) -> int:
        """Until ``name`` runs (with a pid other than ``other_than``); its pid."""
        def running():
            service = self.service(name)
            return service["pid"] if service["state"] == "running" and service["pid"] != other_than else None
        return wait_for(running, timeout=timeout, what=f"{name} running")

    def send(self, message: bytes, recipients: list[str], sender: str = "sender@home.test",
             timeout: float = 30) -> str:
        """One message over SMTP; the queue id from the 250 reply."""
        import smtplib
        with smtplib.SMTP("127.0.0.1", self.port, timeout=timeout) as client:
            client.ehlo("client.test")
            client.mail(sender)
            for rcpt in recipients:
                client.rcpt(rcpt)
            code, reply = client.data(message)
            assert code == 250, (code, reply)
            return reply.decode().split()[1]

    # -- the end ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop whatever still runs: mcp through ``meta1 stop``, then any pid left."""
        try:
            self.status()
            self.stop()
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        if self.foreground is not None and self.foreground.poll() is None:
            self.foreground.send_signal(signal.SIGTERM)
            try:
                self.foreground.wait(30)
            except subprocess.TimeoutExpired:
                self.foreground.kill()
        for pid in self.seen_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if AS_ROOT and str(self.base).startswith("/var/tmp/meta1-mcp-"):
            shutil.rmtree(self.base, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a queue directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read() and alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def free_privileged_port() -> int:
    """A port below 1024 free on 127.0.0.1 (only root may bind it)."""
    for port in range(1023, 600, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free privileged port on 127.0.0.1")
