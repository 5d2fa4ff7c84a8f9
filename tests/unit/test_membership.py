"""The member file a worker keeps per group (`ledger.adapters.membership`): one live
holder at a time, cleared on a clean stop, and never an error."""

from __future__ import annotations

import os
from pathlib import Path

from ledger.adapters.membership import MemberFile


def test_only_one_live_process_holds_a_groups_member_file(tmp_path: Path) -> None:
    data = tmp_path
    first, second = MemberFile(data, "t.validator-admit"), MemberFile(data, "t.validator-admit")
    assert first.claim()
    first.record("member-1")
    assert not second.claim(), "a live holder's lock is exclusive"
    assert second.previous() is None and not second.held
    first.release()  # a clean stop: its group was left, there is nothing to remove
    assert second.claim() and second.previous() is None
    second.record("member-2")
    second.release()
    third = MemberFile(data, "t.validator-admit")
    assert third.claim() and third.previous() is None


def test_a_data_dir_it_cannot_write_only_means_no_removal(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    members = MemberFile(blocked, "t.projector")
    assert not members.claim() and not members.held
    assert members.previous() is None
    members.record("member-1")  # nothing to record into, and no error
    members.release()


def test_a_record_that_cannot_be_written_does_not_raise(tmp_path: Path) -> None:
    # called from the rebalance listener before the tables recover: an exception there
    # is swallowed by aiokafka and the recovery would be skipped
    members = MemberFile(tmp_path, "t.projector")
    assert members.claim()
    read_only = os.open(members.path, os.O_RDONLY)
    os.dup2(read_only, members._fd)  # type: ignore[arg-type]  # its descriptor, now read-only
    os.close(read_only)
    members.record("member-1")
    members.release()
