"""Sealed sends: each partition's last record goes alone, after the rest; a batch refused
with a retriable error is sent again, in order."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aiokafka.errors import NotLeaderForPartitionError, RecordTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from ledger.adapters.kafka import Outgoing, partition_for, seal_phases, send_sealed


def test_partition_for_matches_kafkas_default_partitioner() -> None:
    default = DefaultPartitioner()
    for _ in range(500):
        key = os.urandom(12)
        assert partition_for(key, [0, 1, 2, 3]) == default(key, [0, 1, 2, 3], [0, 1, 2, 3])
    assert partition_for(None, [0, 1, 2]) == 0


def test_the_last_message_of_each_partition_is_held_back() -> None:
    keys = [b"a", b"b", b"c", b"a", b"d", b"a", b"b"]
    messages = [Outgoing("t", k, bytes([i])) for i, k in enumerate(keys)]
    messages.append(Outgoing("u", b"a", b"other topic"))
    partitions = {"t": [0, 1, 2, 3], "u": [0, 1, 2, 3]}
    first, second = seal_phases(messages, partitions)
    sent = [i for indexes in (*first.values(), *second.values()) for i in indexes]
    assert sorted(sent) == list(range(len(messages)))  # each once
    assert all(len(indexes) == 1 for indexes in second.values())  # one per (topic, partition)
    for (topic, partition), indexes in {**first, **second}.items():
        for i in indexes:  # every message goes where the default partitioner puts it
            assert messages[i].topic == topic
            assert partition_for(messages[i].key, partitions[topic]) == partition
    for slot, (last,) in second.items():  # it really is that partition's last, order kept
        assert all(i < last for i in first.get(slot, []))
        assert first.get(slot, []) == sorted(first.get(slot, []))
    assert (("t", partition_for(b"a", [0, 1, 2, 3]))) in first  # "a" has three messages


class _Landed:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FlakyProducer:
    """Just enough of AIOKafkaProducer for `send_sealed`: real record batches, a log per
    partition, and a refusal (NotLeaderForPartition) of the first `refusals` batches."""

    def __init__(self, refusals: int, error: type[Exception] = NotLeaderForPartitionError):
        self.refusals = refusals
        self.error = error
        self.log: dict[tuple[str, int], list[bytes]] = {}
        self.client = self

    async def force_metadata_update(self) -> bool:
        return True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16 * 1024, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.refusals > 0:
            self.refusals -= 1
            future.set_exception(self.error())
            return future
        log = self.log.setdefault((topic, partition), [])
        future.set_result(_Landed(len(log)))
        log.extend(r.value for r in DefaultRecordBatch(bytes(batch._build())))  # noqa: SLF001
        return future


def _messages() -> list[Outgoing]:
    return [Outgoing("t", f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(40)]


def test_a_refused_batch_is_sent_again_in_order_and_acked_where_it_landed() -> None:
    producer = FlakyProducer(refusals=3)
    messages = _messages()
    acked = asyncio.run(send_sealed(producer, messages))  # type: ignore[arg-type]
    for slot, values in producer.log.items():  # each partition: its messages, in order
        expected = [m.value for m in messages if partition_for(m.key, [0, 1, 2, 3]) == slot[1]]
        assert values == expected
    for message, where in zip(messages, acked, strict=True):
        assert producer.log[(where.topic, where.partition)][where.offset] == message.value


def test_a_non_retriable_refusal_is_raised() -> None:
    producer = FlakyProducer(refusals=1, error=RecordTooLargeError)
    with pytest.raises(RecordTooLargeError):
        asyncio.run(send_sealed(producer, _messages()))  # type: ignore[arg-type]
