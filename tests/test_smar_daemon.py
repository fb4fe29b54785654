"""The smar daemon as a process: RouteRequests over its UNIX socket, answered from a
real DNS server on loopback; refusing to start without a nameserver (B62)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from dnsserver import DnsServer, Fault
from meta1.config.loader import load_text
from meta1.ipc.records import Exchanger, RouteRequest, RouteResult
from meta1.smar.daemon import AddressResolver
from meta1.smar.nameservers import NoNameserverError
from mta import wait_for
from record_peer import RecordPeer

ZONES = {
    "example.test": {"MX": ["10 mx1.example.test", "20 mx2.example.test"]},
    "mx1.example.test": {"A": ["127.0.0.2"]},
    "mx2.example.test": {"A": ["127.0.0.3"]},
    "nomx.test": {"A": ["127.0.0.4"]},
    "null.test": {"MX": ["0 ."]},
}


def start_smar(tmp_path, smar_section: str) -> tuple[subprocess.Popen, object]:
    config = tmp_path / "meta1.conf"
    config.write_text(f'queue_directory = "{tmp_path / "queue"}";\nsmar {{ {smar_section} }}\n')
    log = open(tmp_path / "smar.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "meta1", "smar", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=log, env=env)
    return proc, tmp_path / "queue" / "smar" / "smarqmgr"


@pytest.fixture
def smar(tmp_path):
    with DnsServer(ZONES) as dns_server:
        host, port = dns_server.address
        proc, path = start_smar(tmp_path, f"nameserver = {{ {host}:{port} }}; DNS_timeout = 2;")
        try:
            wait_for(lambda: path.exists() or proc.poll() is not None, what="smar's socket")
            assert proc.poll() is None, (tmp_path / "smar.log").read_text()
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            side = RecordPeer(sock, role="qmgr", expect="smar")
            yield side, dns_server
            side.close()
        finally:
            proc.terminate()
            assert proc.wait(20) == 0


def test_routes_are_answered_by_request_id_from_dns(smar) -> None:
    side, dns_server = smar
    dns_server.fault("null.test", Fault.DELAY, delay=0.3)   # answered after the others
    for request_id, domain in enumerate(["null.test", "example.test", "nomx.test", "gone.test",
                                         "[127.0.0.9]", "[IPv6:::1]", "[not-an-ip]"]):
        side.send((RouteRequest(request_id, domain)))
    results = {}
    while len(results) < 7:
        result = side.read()
        assert isinstance(result, RouteResult)
        results[result.request_id] = result
    assert results[1].outcome == "ok"
    assert results[1].exchangers == (Exchanger(10, "mx1.example.test", ("127.0.0.2",)),
                                     Exchanger(20, "mx2.example.test", ("127.0.0.3",)))
    assert (results[2].outcome, results[2].exchangers) == ("ok", (Exchanger(0, "nomx.test", ("127.0.0.4",)),))
    assert (results[0].outcome, results[0].status) == ("permanent", "5.1.10")
    assert (results[3].outcome, results[3].status) == ("permanent", "5.1.2")
    assert results[4].exchangers == (Exchanger(0, "[127.0.0.9]", ("127.0.0.9",)),)
    assert results[5].exchangers == (Exchanger(0, "[IPv6:::1]", ("::1",)),)
    assert (results[6].outcome, results[6].status) == ("permanent", "5.1.2")


def test_servfail_is_temporary(smar) -> None:
    side, dns_server = smar
    dns_server.fault("example.test", Fault.SERVFAIL)
    side.send((RouteRequest(7, "example.test")))
    result = side.read()
    assert (result.request_id, result.outcome, result.status) == (7, "temporary", "4.4.3")


def test_no_nameserver_refuses_to_start_b62(tmp_path) -> None:
    """use_resolvconf with a resolv.conf that names no nameserver: smar does not start, and
    the error names the file and the option (the CLI turns it into exit status 78)."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search example.test\n")
    config = load_text(f'queue_directory = "{tmp_path / "queue"}"; smar {{ flags = {{ use_resolvconf }}; }}', "test.conf")
    with pytest.raises(NoNameserverError, match="lists no nameserver.*option nameserver"):
        AddressResolver(config, resolv_conf=str(resolv_conf))
