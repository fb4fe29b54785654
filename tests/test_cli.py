"""The ``meta1`` command as a user runs it: exit codes, stdout/stderr, -V/-VV."""

from __future__ import annotations

import os
import ssl

import pytest

from meta1 import __version__
from meta1.config import default_config_path, load_default, load_text
from conftest import run_meta1


def test_version() -> None:
    result = run_meta1("-V")
    assert (result.returncode, result.stdout) == (0, f"meta1 {__version__}\n")


def test_double_v_prints_the_full_openssl_version_string() -> None:
    # B76: the OpenSSL version *string* (e.g. "OpenSSL 3.0.19 27 Jan 2026"), not a number.
    result = run_meta1("-VV")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"meta1 {__version__}"
    assert ssl.OPENSSL_VERSION in lines
    assert ssl.OPENSSL_VERSION.split()[0] in ("OpenSSL", "LibreSSL")


def test_check_builtin_default(tmp_path) -> None:
    result = run_meta1("check", home=str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "configuration OK\n", "")


def test_builtin_default_is_loopback_unprivileged_and_user_writable(tmp_path) -> None:
    result = run_meta1("config", home=str(tmp_path))
    assert result.returncode == 0, result.stderr
    config = load_text(result.stdout, "effective")
    smtps = config.smtps[None]
    assert smtps.listen_socket.address == "127.0.0.1"
    assert 1024 <= smtps.listen_socket.port < 65536
    if os.geteuid() == 0:   # root's built-in file: where mcp's daemon users can reach it
        assert config.queue_directory == "/var/spool/meta1"
        assert result.stdout.startswith(f"# effective configuration of {default_config_path(root=True)}")
    else:
        assert config.queue_directory.startswith(str(tmp_path) + "/")
    assert config.smar.flags["use_resolvconf"]


@pytest.mark.parametrize("root", [False, True])
def test_the_two_builtin_files_differ_only_in_the_queue_directory(tmp_path, root) -> None:
    config = load_default(str(tmp_path), root=root)
    other = load_default(str(tmp_path), root=not root)
    assert config.queue_directory == ("/var/spool/meta1" if root else f"{tmp_path}/.local/state/meta1/queue")
    assert config.root.sections == other.root.sections


def test_config_output_passes_check_and_is_a_fixed_point(tmp_path) -> None:
    first = run_meta1("config", home=str(tmp_path))
    assert first.returncode == 0, first.stderr
    effective = tmp_path / "effective.conf"
    effective.write_text(first.stdout)
    assert run_meta1("check", "-f", str(effective)).stdout == "configuration OK\n"
    second = run_meta1("config", "-f", str(effective), home=str(tmp_path))
    body = lambda out: out.split("\n", 1)[1]  # noqa: E731 - first line names the file
    assert body(second.stdout) == body(first.stdout)


def test_every_error_is_printed_with_its_position(tmp_path) -> None:
    conf = tmp_path / "broken.conf"
    conf.write_text("qmgr {\n  AQ_max_entries = none;\n  bogus = 1;\n}\nsmar { DNS_timeout = 5 }\n")
    result = run_meta1("check", "-f", str(conf))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{conf}:2:20: AQ_max_entries: 'none' is not a number")
    assert lines[1].startswith(f"{conf}:3:3: unknown option 'bogus' in section 'qmgr'")
    assert lines[2] == f"{conf}:5:24: expected ';', found '}}'"
    assert lines[3] == "3 errors in the configuration"


def test_missing_file(tmp_path) -> None:
    result = run_meta1("check", "-f", str(tmp_path / "nope.conf"))
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.conf'}:1:1: cannot read: No such file or directory" in result.stderr


def test_bad_utf8_is_a_positioned_error(tmp_path) -> None:
    conf = tmp_path / "latin1.conf"
    conf.write_bytes(b'hostname = "ok";\nsmtps { arguments = "caf\xe9"; }\n')
    result = run_meta1("check", "-f", str(conf))
    assert result.returncode == 1
    assert f"{conf}:2:25: invalid UTF-8 byte 0xe9" in result.stderr


def test_no_command_is_a_usage_error() -> None:
    result = run_meta1()
    assert result.returncode == 2
    assert "usage: meta1" in result.stderr
