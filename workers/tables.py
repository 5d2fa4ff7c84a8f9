"""Changelogged faust tables written once per key per batch, and sealed sends.

faust's own `table[key] = value` queues every changelog write in a buffer that drains
a few hundred messages a second. Here the value goes into the table's store and its
changelog record straight to the producer, keyed and encoded exactly as faust recovers
it (raw key, JSON value), and acknowledged before the batch's input is acked.

Every write goes out *sealed* (`ledger.kafka.send_sealed`): on Tansu, a partition's
reported end is its last batch's base offset + 1, which would hide the tail of a
changelog from faust's recovery and the tail of a topic from its consumers.

With the RocksDB store (`LEDGER_STORE=rocksdb`), faust keeps one database per
partition and files a write under the partition of the event being processed; a batch
spans partitions, so the value is put into the database of the partition its
changelog record went to (the same partition, since tables are co-partitioned).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaProducer

from ledger.kafka import Outgoing, send_sealed


def json_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of JSON values keyed by raw bytes, partitioned by the producer's partitioner.

    Keys are bytes (`key_type=bytes` makes faust's changelog use the raw serializer both
    ways), so a changelog record's key is byte-for-byte the source topic's key and lands
    on the same partition number: the table is co-partitioned with its stream.
    """
    return app.Table(
        name,
        default=None,
        key_type=bytes,  # values: no type, so faust's default JSON serializer
        partitions=partitions,
        use_partitioner=True,  # changelog partition = partitioner(key), like the source topic
        extra_topic_configs={"retention.ms": "-1"},
    )


def producer_of(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer under faust's (the one faust flushes before it commits)."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


async def send_all(app: faust.App, messages: Sequence[Outgoing]) -> list[Any]:
    """Send sealed and wait for every acknowledgement."""
    if not messages:
        return []
    return await send_sealed(producer_of(app), messages)


async def write_batch(app: faust.App, table: Any, values: Mapping[bytes, Any]) -> None:
    """Send each value's changelog record (once per key), acknowledged, then store it."""
    if not values:
        return
    topic = table.changelog_topic.get_topic_name()
    store = table.data
    encoded = {key: orjson.dumps(value) for key, value in values.items()}
    written = await send_all(app, [Outgoing(topic, key, raw) for key, raw in encoded.items()])
    if hasattr(store, "_db_for_partition"):  # RocksDB: one database per partition
        for (key, raw), metadata in zip(encoded.items(), written, strict=True):
            store._db_for_partition(metadata.partition).put(key, raw)
            store._key_index[key] = metadata.partition
    else:  # memory: remember each key's partition, so a revoked partition's keys are dropped
        for (key, value), metadata in zip(values.items(), written, strict=True):
            store[key] = value
            store._key_partition[key] = metadata.partition


def owned_items(app: faust.App, table: Any, source_topic: str) -> Iterator[tuple[int, bytes, Any]]:
    """(partition, key, value) of the partitions this worker is active for (not standbys)."""
    partitions = {
        tp.partition for tp in app.assignor.assigned_actives() if tp.topic == source_topic
    }
    store = table.data
    if hasattr(store, "_dbs"):  # RocksDB
        for partition in partitions:
            db = store._dbs.get(partition)
            if db is None:
                continue
            for key, raw in db.items():
                if key != store.offset_key and raw is not None:
                    yield partition, key, orjson.loads(raw)
        return
    for key, value in list(store.data.items()):
        partition = store._key_partition.get(key)
        if value is not None and partition in partitions:
            yield partition, key, value


async def finish_even_if_cancelled(work: Awaitable[None]) -> None:
    """Run one batch's work to its end, even when the worker is being stopped.

    faust's `take_events` acks a batch in a `finally` when the agent leaves it, and a
    stopping worker cancels its agents: a batch cut short half-way would be acked (so
    committed) with part of its outputs never written. Shielding the batch and waiting
    for it on cancellation keeps "acked" meaning "done".
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def each_batch(
    stream: Any, size: int, within: float, handle: Callable[[list[Any]], Awaitable[None]]
) -> None:
    """Feed `handle` batches of up to `size` events (or what arrived within `within`
    seconds) and ack a batch only once it is handled: an event is committed only after
    everything it caused is written, including when the worker is stopped mid-batch."""
    manual = stream.noack()
    async for batch in manual.noack_take(size, within=within):
        await finish_even_if_cancelled(handle(batch))
        for event in batch:
            await manual.ack(event)
