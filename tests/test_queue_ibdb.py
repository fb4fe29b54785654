"""The incoming log: group-commit appends, rotation, replay, torn tails, damage, quarantine."""

from __future__ import annotations

import errno
import logging
import os
import pathlib

import pytest

from meta1.ipc.records import CommitResult, RecipientsDone
from meta1.queue.ibdb import IncomingLog, log_files, quarantine, replay
from meta1.queue.layout import QueueLayout
from meta1.queue.recordfile import IBDB_MAGIC, IbdbEnd, pack_record
from test_queue_support import AFTER_2038_US, flip_bit, make_queue, store, ta_id


def write_log(layout: QueueLayout, batches: list[list], max_file_size: int = 64 << 20) -> IncomingLog:
    log = IncomingLog(layout, max_file_size=max_file_size)
    log.open()
    for batch in batches:
        log.append_batch(batch)
        log.rotate_if_needed()
    log.close()
    return log


def quarantine_names(layout: QueueLayout) -> list[str]:
    return sorted(os.listdir(layout.quarantine))


def test_batches_come_back_in_log_order_with_one_fdatasync_each(tmp_path: pathlib.Path, monkeypatch) -> None:
    layout = make_queue(tmp_path)
    transactions = [store(layout, n, recipients=n % 3 + 1) for n in range(1, 8)]
    log = IncomingLog(layout)
    log.open()
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    log.append_batch(transactions[:1])
    log.append_batch(transactions[1:5])
    log.append_batch(transactions[5:])
    log.append_batch([])
    assert len(synced) == 3
    log.close()
    result = replay(layout)
    assert list(result.transactions.values()) == transactions
    assert (result.quarantined, result.torn_tail, result.missing_content) == ([], False, [])
    assert result.transactions[ta_id(1)].arrival == AFTER_2038_US + 1


def test_the_log_continues_across_open_and_close(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    first, second = store(layout, 1), store(layout, 2)
    write_log(layout, [[first]])
    write_log(layout, [[second]])
    assert [p.name for _, p in log_files(layout)] == ["0000000000000001.ibdb"]
    assert list(replay(layout).transactions) == [ta_id(1), ta_id(2)]


def test_rotation_seals_files_with_end_and_replay_reads_them_in_order(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    transactions = [store(layout, n) for n in range(1, 10)]
    write_log(layout, [[t] for t in transactions], max_file_size=500)
    files = log_files(layout)
    assert len(files) > 2 and [seq for seq, _ in files] == list(range(1, len(files) + 1))
    for _, path in files[:-1]:
        data = path.read_bytes()
        end = pack_record(IbdbEnd(len(data) - len(pack_record(IbdbEnd(0)))))
        assert data.endswith(end)
    assert list(replay(layout).transactions.values()) == transactions


def test_a_sealed_newest_file_is_not_continued(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    write_log(layout, [[store(layout, 1)]], max_file_size=0)  # sealed right after the batch
    write_log(layout, [[store(layout, 2)]])
    assert [seq for seq, _ in log_files(layout)] == [1, 2]
    assert list(replay(layout).transactions) == [ta_id(1), ta_id(2)]


def three_transaction_log(layout: QueueLayout) -> tuple[pathlib.Path, int]:
    """A log with three transactions in three batches; the path and the last record's offset."""
    transactions = [store(layout, n) for n in (1, 2, 3)]
    write_log(layout, [[t] for t in transactions])
    (_, path), = log_files(layout)
    return path, path.stat().st_size - len(pack_record(transactions[-1]))


def test_a_torn_tail_at_every_offset_of_the_last_record_is_cut_off(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    path, last = three_transaction_log(layout)
    whole = path.read_bytes()
    for cut in range(last + 1, len(whole)):
        path.write_bytes(whole[:cut])
        for name in quarantine_names(layout):
            (layout.quarantine / name).unlink()
        result = replay(layout)
        assert list(result.transactions) == [ta_id(1), ta_id(2)], cut
        assert result.torn_tail and result.missing_content == []
        assert path.stat().st_size == last
        # the cut octets are kept, not destroyed
        assert (layout.quarantine / f"{path.name}.tail").read_bytes() == whole[last:cut]
        assert "torn" in (layout.quarantine / f"{path.name}.tail.why").read_text()
        assert [str(p.name) for p, _ in result.quarantined] == [f"{path.name}.tail"]
    # The log continues after the cut.
    write_log(layout, [[store(layout, 4)]])
    assert list(replay(layout).transactions) == [ta_id(1), ta_id(2), ta_id(4)]


def test_a_cut_at_a_record_boundary_is_no_torn_tail(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    path, last = three_transaction_log(layout)
    os.truncate(path, last)
    result = replay(layout)
    assert list(result.transactions) == [ta_id(1), ta_id(2)] and not result.torn_tail


def test_a_newest_file_cut_inside_its_magic_is_emptied_and_continued(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    path = layout.ibdb / "0000000000000001.ibdb"
    path.write_bytes(IBDB_MAGIC[:3])
    result = replay(layout)
    assert result.torn_tail and result.transactions == {} and path.stat().st_size == 0
    write_log(layout, [[store(layout, 1)]])
    assert path.read_bytes().startswith(IBDB_MAGIC)
    assert list(replay(layout).transactions) == [ta_id(1)]


def test_a_bit_flip_in_the_middle_quarantines_the_whole_file(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    older = store(layout, 1)
    write_log(layout, [[older]], max_file_size=0)  # 0000000000000001.ibdb, sealed
    transactions = [store(layout, n) for n in (2, 3, 4)]
    write_log(layout, [[t] for t in transactions])
    (_, sealed), (_, newest) = log_files(layout)
    whole = newest.read_bytes()
    middle_start = 8 + len(pack_record(transactions[0]))
    middle_end = middle_start + len(pack_record(transactions[1]))
    for offset in range(middle_start, middle_end):
        newest.write_bytes(whole)
        flip_bit(newest, offset, offset % 8)
        result = replay(layout)
        assert list(result.transactions) == [ta_id(1)], offset  # the other file is kept
        (moved, reason), = result.quarantined
        assert moved.parent == layout.quarantine and moved.read_bytes()[offset] != whole[offset]
        assert not newest.exists() and not result.torn_tail
        assert reason in pathlib.Path(f"{moved}.why").read_text()
    assert len(quarantine_names(layout)) == 2 * (middle_end - middle_start)  # unique names, each with a note


def test_an_older_file_without_end_is_quarantined(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    write_log(layout, [[store(layout, 1)]])
    (layout.ibdb / "0000000000000002.ibdb").write_bytes(IBDB_MAGIC + pack_record(store(layout, 2)))
    result = replay(layout)
    assert list(result.transactions) == [ta_id(2)]
    (moved, reason), = result.quarantined
    assert moved == layout.quarantine / "0000000000000001.ibdb" and "no End record" in reason


@pytest.mark.parametrize("tail, reason", [
    (pack_record(IbdbEnd(0)), "End says it stands at offset 0"),
    (pack_record(CommitResult("S1", True, "")), "does not belong in the incoming log"),
])
def test_records_that_do_not_belong_are_damage(tmp_path: pathlib.Path, tail: bytes, reason: str) -> None:
    layout = make_queue(tmp_path)
    path, _ = three_transaction_log(layout)
    with open(path, "ab") as stream:
        stream.write(tail)
    result = replay(layout)
    assert result.transactions == {} and reason in result.quarantined[0][1]


def test_records_after_end_are_damage(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    write_log(layout, [[store(layout, 1)]], max_file_size=0)
    (_, sealed), _ = log_files(layout)
    with open(sealed, "ab") as stream:
        stream.write(pack_record(store(layout, 2)))
    result = replay(layout)
    assert result.transactions == {} and "a record after End" in result.quarantined[0][1]


def test_missing_and_damaged_content_is_reported_and_quarantined(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    transactions = [store(layout, n) for n in (1, 2, 3, 4)]
    write_log(layout, [transactions])
    (layout.root / transactions[1].content).unlink()
    damaged = layout.root / transactions[2].content
    os.truncate(damaged, damaged.stat().st_size - 1)
    result = replay(layout)
    assert list(result.transactions) == [ta_id(1), ta_id(4)]
    assert result.missing_content == [ta_id(2), ta_id(3)]
    (moved, reason), = result.quarantined
    assert moved == layout.quarantine / ta_id(3) and ta_id(3) in reason and not damaged.exists()
    assert (layout.quarantine / f"{ta_id(3)}.why").is_file()


def test_a_content_path_other_than_the_layouts_is_refused(tmp_path: pathlib.Path) -> None:
    import dataclasses
    layout = make_queue(tmp_path)
    transaction = dataclasses.replace(store(layout, 1), content="../../etc/passwd")
    write_log(layout, [[transaction]])
    result = replay(layout)
    assert result.transactions == {} and result.missing_content == [ta_id(1)] and result.quarantined == []


def test_a_transaction_logged_twice_counts_once(tmp_path: pathlib.Path, caplog) -> None:
    layout = make_queue(tmp_path)
    transaction = store(layout, 1)
    write_log(layout, [[transaction], [transaction]])
    with caplog.at_level(logging.WARNING, logger="meta1.queue"):
        assert list(replay(layout).transactions) == [ta_id(1)]
    assert "more than once" in caplog.text


def test_enospc_during_an_append_truncates_the_file_back(tmp_path: pathlib.Path, monkeypatch) -> None:
    layout = make_queue(tmp_path)
    log = IncomingLog(layout)
    log.open()
    log.append_batch([store(layout, 1)])
    size_before = log.path.stat().st_size
    real_write = os.write

    def half_then_full(fd: int, data) -> int:
        real_write(fd, bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as failure:
        log.append_batch([store(layout, 2), store(layout, 3)])
    assert failure.value.errno == errno.ENOSPC
    assert log.path.stat().st_size == size_before
    monkeypatch.setattr(os, "write", real_write)
    log.append_batch([store(layout, 4)])  # space is back: the same file goes on
    log.close()
    result = replay(layout)
    assert list(result.transactions) == [ta_id(1), ta_id(4)]
    assert len(log_files(layout)) == 1 and not result.torn_tail


def test_an_fsync_error_abandons_the_file(tmp_path: pathlib.Path, monkeypatch, caplog) -> None:
    layout = make_queue(tmp_path)
    log = IncomingLog(layout)
    log.open()
    log.append_batch([store(layout, 1)])
    first = log.path
    second = store(layout, 2)
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        log.append_batch([second])
    monkeypatch.setattr(os, "fdatasync", real)
    assert "can no longer be trusted" in caplog.text
    log.append_batch([store(layout, 3)])
    assert log.path != first and log.sequence == 2
    log.close()
    result = replay(layout)
    assert list(result.transactions) == [ta_id(3)]
    assert result.quarantined[0][0] == layout.quarantine / first.name


def test_sequence_numbers_are_never_reused_after_a_quarantine(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    write_log(layout, [[store(layout, 1)]])
    (_, path), = log_files(layout)
    quarantine(layout, path, "test")
    write_log(layout, [[store(layout, 2)]])
    assert [seq for seq, _ in log_files(layout)] == [2]


def test_quarantine_picks_unique_names_and_writes_a_note(tmp_path: pathlib.Path, caplog) -> None:
    layout = make_queue(tmp_path)
    first, second = layout.ibdb / "x", layout.cdb / "x"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    with caplog.at_level(logging.WARNING, logger="meta1.queue"):
        moved = [quarantine(layout, first, "reason one", now=AFTER_2038_US),
                 quarantine(layout, second, "reason two")]
    assert moved == [layout.quarantine / "x", layout.quarantine / "x.1"]
    assert [p.read_bytes() for p in moved] == [b"one", b"two"]
    note = (layout.quarantine / "x.why").read_text()
    assert "reason: reason one" in note and "2242-03-16T12:56:32.000000Z" in note and str(first) in note
    assert "reason two" in (layout.quarantine / "x.1.why").read_text()
    assert "quarantined" in caplog.text


def test_read_only_replay_changes_nothing(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    write_log(layout, [[store(layout, 1)]], max_file_size=0)  # 1 sealed, 2 started
    write_log(layout, [[store(layout, 2)]])
    (_, older), (_, newest) = log_files(layout)
    flip_bit(older, 30, 0)
    with open(newest, "ab") as stream:
        stream.write(pack_record(store(layout, 3))[:-5])
    before = {p: p.read_bytes() for _, p in log_files(layout)}
    result = replay(layout, read_only=True)
    assert list(result.transactions) == [ta_id(2)] and result.torn_tail
    assert [p for p, _ in result.quarantined] == [older]
    assert {p: p.read_bytes() for _, p in log_files(layout)} == before
    assert quarantine_names(layout) == []


def test_append_refuses_records_that_do_not_belong(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    log = IncomingLog(layout)
    with pytest.raises(RuntimeError):
        log.append_batch([store(layout, 1)])
    log.open()
    size = log.path.stat().st_size
    with pytest.raises(TypeError):
        log.append_batch([store(layout, 2), CommitResult("S1", True, "")])
    assert log.path.stat().st_size == size
    log.close()


def test_a_failed_rotation_does_not_fail_the_durable_batch_before_it(tmp_path: pathlib.Path, monkeypatch) -> None:
    layout = make_queue(tmp_path)
    log = IncomingLog(layout, max_file_size=0)
    log.open()
    log.append_batch([store(layout, 1)])
    size = log.path.stat().st_size
    real_write = os.write

    def disk_full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    log.rotate_if_needed()  # logged, not raised: the batch is durable
    assert log.path.stat().st_size == size and log.sequence == 1
    monkeypatch.setattr(os, "write", real_write)
    log.append_batch([store(layout, 2)])
    log.rotate_if_needed()
    assert log.sequence == 2
    log.close()
    assert list(replay(layout).transactions) == [ta_id(1), ta_id(2)]


def test_replay_folds_recipients_done(tmp_path: pathlib.Path) -> None:
    """Done recipients leave a transaction queued with the rest; all done completes it,
    even when its content file is already gone; a record for an unknown id is ignored."""
    layout = make_queue(tmp_path)
    partly, whole, other = store(layout, 1, recipients=3), store(layout, 2, recipients=2), store(layout, 3)
    write_log(layout, [
        [partly, whole],
        [RecipientsDone(partly.ta_id, (partly.recipients[1].rcpt_id,), "delivered", AFTER_2038_US)],
        [RecipientsDone(whole.ta_id, tuple(r.rcpt_id for r in whole.recipients), "bounced", AFTER_2038_US),
         RecipientsDone(ta_id(9), (f"{ta_id(9)}-0000",), "delivered", AFTER_2038_US), other],
    ])
    (layout.root / whole.content).unlink()
    result = replay(layout)
    assert list(result.transactions) == [partly.ta_id, other.ta_id]
    assert result.done == {partly.ta_id: {partly.recipients[1].rcpt_id}}
    assert result.completed == [whole.ta_id]
    assert result.missing_content == [] and result.quarantined == []


def test_log_file_use_removes_oldest_first_only_when_complete() -> None:
    """A file goes when it is older than the current one and it and every older file
    hold no incomplete transaction; a newer empty file waits for an older busy one."""
    from meta1.queue.ibdb import LogFileUse
    use = LogFileUse()
    use.logged("A", 1)
    use.logged("B", 2)
    use.file(3)                                   # only done records in it
    use.logged("C", 4)
    assert use.removable(current=4) == []         # A still open in file 1
    use.completed("B")
    assert use.removable(current=4) == []         # file 2 is empty, but file 1 is not
    use.completed("A")
    assert use.removable(current=4) == [1, 2, 3]  # file 4 is current
    use.completed("C")
    assert use.removable(current=4) == []
    assert use.removable(current=5) == [4]


def test_replay_says_which_file_holds_each_transaction(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    transactions = [store(layout, n) for n in range(1, 5)]
    write_log(layout, [[t] for t in transactions], max_file_size=200)
    result = replay(layout)
    assert result.files == [sequence for sequence, _ in log_files(layout)]
    assert len(set(result.file_of.values())) > 1
    assert set(result.file_of) == {t.ta_id for t in transactions}


def test_remove_files_refuses_the_current_file(tmp_path: pathlib.Path) -> None:
    layout = make_queue(tmp_path)
    log = IncomingLog(layout, max_file_size=200)
    log.open()
    for n in range(1, 4):
        log.append_batch([store(layout, n)])
        log.rotate_if_needed()
    oldest = log_files(layout)[0][0]
    log.remove_files([oldest])
    assert oldest not in [s for s, _ in log_files(layout)]
    with pytest.raises(ValueError):
        log.remove_files([log.sequence])
    log.close()
