"""A processor whose tables failed to recover on an assignment handles nothing more: the
worker stops (and is started again fresh) rather than judge events against tables that
miss what their changelogs hold. The rebalance listener only notes the partitions (aiokafka
would log and swallow its exception, and sends no heartbeat while it runs); the tables are
rebuilt by `Processor.settle`, which stops the processor when they cannot be."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from ledger.adapters.config import Settings
from ledger.adapters.membership import MemberFile
from workers.runtime import Processor, RecoveryFailed, Table, _Rebalance
from workers.worker import is_outage


class Unreadable(Table):
    async def recover(self, settings: Settings, bootstrap: str, partitions: set[int]) -> int:
        raise KafkaConnectionError("the changelog cannot be read")


async def test_a_failed_recovery_stops_the_processor_before_its_next_batch(
    tmp_path: Path,
) -> None:
    handled: list[Any] = []

    async def handle(records: list[Any]) -> None:
        handled.extend(records)

    table = Unreadable("t.", "t.subjects", 4)
    processor = Processor("admit", "t.by-subject", handle, [table])
    listener = _Rebalance(processor, None, MemberFile(tmp_path, "t.admit"))
    await listener.on_partitions_assigned([TopicPartition("t.by-subject", 0)])
    assert processor.pending == {0} and processor.assigned == set()
    with pytest.raises(RecoveryFailed) as stopped:
        await processor.settle(Settings(), "127.0.0.1:1")
    assert processor.assigned == set()
    with pytest.raises(RecoveryFailed):  # should the worker go on, nothing is handled
        await processor.handle_recovered([SimpleNamespace(partition=0, offset=0)])  # type: ignore[list-item]
    assert handled == [], "nothing is handled against unrecovered tables"
    # a changelog the broker could not serve: an outage, ridden out by starting afresh
    assert is_outage(stopped.value)
    assert isinstance(stopped.value.__cause__, KafkaConnectionError)


async def test_a_recovered_processor_handles_its_batches() -> None:
    handled: list[Any] = []

    async def handle(records: list[Any]) -> None:
        handled.extend(records)

    processor = Processor("admit", "t.by-subject", handle)
    processor.assigned = {0, 2}
    batch = [SimpleNamespace(partition=p, offset=o) for p, o in [(0, 4), (0, 5), (1, 7), (2, 9)]]
    done = await processor.handle_recovered(batch)  # type: ignore[arg-type]
    # partition 1 was revoked while the batch waited: left to its new owner
    assert handled == [batch[0], batch[1], batch[3]]
    assert done == {TopicPartition("t.by-subject", 0), TopicPartition("t.by-subject", 2)}
    # what was handled, per partition (a screening step asks before admitting directly)
    assert processor.handled == {0: 6, 2: 10}
