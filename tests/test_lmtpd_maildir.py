"""Maildir delivery on a real file system: layout, the write sequence, names, failures.

The tests run as whatever user the suite runs as (often root, which ignores permission
bits), so write errors are made with file-system shapes no user can write through: a
plain file where a directory must be, or a failing ``fsync`` put in by monkeypatch.
"""

from __future__ import annotations

import os
import re
import stat

import pytest

from meta1.lmtpd import maildir as maildir_module
from meta1.lmtpd.mailbox import DeliveryRequest, LocalRecipient
from meta1.lmtpd.maildir import MaildirWriter, header_value, maildir_host, message_bytes

CONTENT = b"From: s@x.example\r\nSubject: t\r\n\r\nbody\r\n.dot line\r\nlast\r\n"
EXPECTED_BODY = b"From: s@x.example\nSubject: t\n\nbody\n.dot line\nlast\n"
NAME = re.compile(r"(\d+)\.M(\d{1,6})P(\d+)Q(\d+)\.(.+)")


def request(*recipients: tuple[str, str], content: bytes = CONTENT, sender: str = "s@x.example",
            utf8: bool = False) -> DeliveryRequest:
    return DeliveryRequest(sender=sender, content=content, utf8=utf8,
                           recipients=tuple(LocalRecipient(a, m) for a, m in recipients))


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_delivery_lands_complete_in_new_and_nowhere_else(tmp_path):
    root = tmp_path / "mail"
    writer = MaildirWriter(root, "mx.test")
    outcomes = writer.deliver(request(("alice@mx.test", "alice"), ("Bob+x@mx.test", "bob")))
    assert [o.durable for o in outcomes] == [True, True]
    for mailbox, address, outcome in (("alice", "alice@mx.test", outcomes[0]),
                                      ("bob", "Bob+x@mx.test", outcomes[1])):
        maildir = root / mailbox
        assert files(maildir) == ["cur", "new", "tmp"]
        assert files(maildir / "tmp") == [] and files(maildir / "cur") == []
        [name] = files(maildir / "new")
        assert outcome.where == str(maildir / "new" / name)
        assert (maildir / "new" / name).read_bytes() == (
            b"Return-Path: <s@x.example>\nDelivered-To: " + address.encode() + b"\n" + EXPECTED_BODY)
        assert stat.S_IMODE(os.stat(maildir / "new" / name).st_mode) == 0o600
        for directory in (root, maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_line_ends_crlf_become_lf_and_nothing_else_changes():
    # D-LMTPD-3: CRLF → LF; bare CR, bare LF, NUL and 8-bit octets stay as they came.
    content = b"a\r\nb\rc\nd\r\r\n\x00\xff\r\n"
    data = message_bytes(request(("a@h", "a"), content=content), "a@h")
    assert data == b"Return-Path: <s@x.example>\nDelivered-To: a@h\na\nb\rc\nd\r\n\x00\xff\n"
    assert message_bytes(request(("a@h", "a"), sender=""), "a@h").startswith(b"Return-Path: <>\n")


def test_header_values_are_printable_unless_smtputf8():
    assert header_value("jö@x.example", utf8=False) == b"j?@x.example"
    assert header_value("jö@x.example", utf8=True) == "jö@x.example".encode()
    assert header_value("a\nb@x", utf8=True) == b"a?b@x"      # never a line break


def test_the_write_sequence_syncs_the_file_before_it_appears_in_new(tmp_path, monkeypatch):
    """tmp file written and fsynced → link into new/ (complete) → tmp unlinked → new/ fsynced."""
    events = []
    real_fsync, real_link, real_unlink = os.fsync, os.link, os.unlink
    root = tmp_path / "mail"
    data = b"Return-Path: <s@x.example>\nDelivered-To: a@h\n" + EXPECTED_BODY

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", os.path.relpath(target, root)))
        return real_fsync(fd)

    def link(source, destination):
        assert os.path.getsize(source) == len(data)       # complete before it is visible
        assert files(root / "a" / "new") == []
        events.append(("link", os.path.relpath(source, root), os.path.relpath(destination, root)))
        return real_link(source, destination)

    def unlink(path):
        events.append(("unlink", os.path.relpath(path, root)))
        return real_unlink(path)

    writer = MaildirWriter(root, "h")
    writer.deliver(request(("a@h", "a")))        # the directories exist from now on
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "unlink", unlink)
    for name in files(root / "a" / "new"):
        real_unlink(root / "a" / "new" / name)
    [outcome] = writer.deliver(request(("a@h", "a")))
    name = os.path.basename(outcome.where)
    assert events == [("fsync", f"a/tmp/{name}"), ("link", f"a/tmp/{name}", f"a/new/{name}"),
                      ("unlink", f"a/tmp/{name}"), ("fsync", "a/new")]


def test_new_directories_are_synced_into_their_parents(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    MaildirWriter(tmp_path / "mail", "h").deliver(request(("a@h", "a")))
    directories = [path for path in synced if os.path.isdir(path)]
    mail = str(tmp_path / "mail")
    assert directories == [str(tmp_path), mail, f"{mail}/a", f"{mail}/a", f"{mail}/a",
                           f"{mail}/a/new"]


def test_unique_names_follow_the_convention_and_never_repeat(tmp_path):
    now_ns = 4_102_444_800_123_456_789          # 2100-01-01: past 2038 on every platform
    writer = MaildirWriter(tmp_path / "mail", "mx.test", clock_ns=lambda: now_ns, pid=4242)
    names = [writer.unique_name() for _ in range(1000)]
    assert len(set(names)) == 1000
    match = NAME.fullmatch(names[0])
    assert match and match.groups() == ("4102444800", "123456", "4242", "1", "mx.test")
    outcomes = writer.deliver(request(*[("a@h", "a")] * 5))
    assert len(files(tmp_path / "mail" / "a" / "new")) == 5
    assert all(o.durable for o in outcomes)


def test_the_host_part_escapes_slash_and_colon():
    assert maildir_host("mx.test") == "mx.test"
    assert maildir_host("a/b:c") == "a\\057b\\072c"
    assert maildir_host("ho\nst") == "ho?st"
    assert maildir_host("") == "localhost"


def test_an_unwritable_mailbox_is_451_for_it_and_250_for_the_others(tmp_path):
    root = tmp_path / "mail"
    root.mkdir()
    (root / "bob").write_bytes(b"not a directory")        # ENOTDIR, even for root
    writer = MaildirWriter(root, "h")
    outcomes = writer.deliver(request(("alice@h", "alice"), ("bob@h", "bob"), ("carol@h", "carol")))
    assert [o.durable for o in outcomes] == [True, False, True]
    assert "Not a directory" in outcomes[1].where
    assert len(files(root / "alice" / "new")) == 1 and len(files(root / "carol" / "new")) == 1


def test_a_read_only_new_directory_fails_without_leaving_anything(tmp_path):
    root = tmp_path / "mail"
    writer = MaildirWriter(root, "h")
    writer.deliver(request(("a@h", "a")))
    for name in files(root / "a" / "new"):
        os.unlink(root / "a" / "new" / name)
    os.rmdir(root / "a" / "new")
    (root / "a" / "new").write_bytes(b"")                 # new/ is a plain file
    [outcome] = writer.deliver(request(("a@h", "a")))
    assert not outcome.durable
    assert files(root / "a" / "tmp") == []


@pytest.mark.parametrize("failing", ["file", "directory"])
def test_a_failing_fsync_is_not_durable_and_leaves_no_copy(tmp_path, monkeypatch, failing):
    """Never 250 unless durable: an fsync error of the file or of new/ fails the recipient,
    and nothing stays in new/ (the client's retry must not make a duplicate) or tmp/."""
    root = tmp_path / "mail"
    writer = MaildirWriter(root, "h")
    writer.deliver(request(("a@h", "a")))             # directories made, one message in new/
    before = files(root / "a" / "new")
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}") == (failing == "directory"):
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    outcomes = writer.deliver(request(("a@h", "a"), ("b@h", "a")))
    assert [o.durable for o in outcomes] == [False, False]
    assert "Input/output error" in outcomes[0].where
    assert files(root / "a" / "new") == before and files(root / "a" / "tmp") == []


def test_without_hard_links_the_file_is_renamed(tmp_path, monkeypatch):
    def no_link(source, destination):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(maildir_module.os, "link", no_link)
    [outcome] = MaildirWriter(tmp_path / "mail", "h").deliver(request(("a@h", "a")))
    assert outcome.durable and os.path.exists(outcome.where)
    assert files(tmp_path / "mail" / "a" / "tmp") == []
