"""Changelogged faust tables written once per key per batch.

faust's own `table[key] = value` queues every changelog write in a buffer that drains
a few hundred messages a second. Here the value goes into the table's store and its
changelog record straight to the producer, keyed and encoded exactly as faust recovers
it (raw key, JSON value). faust flushes the producer before it commits offsets, so a
changelog write is durable before the input that caused it is committed.

Tansu reports a partition's end offset as the last *batch's* base offset + 1, so a
recovery that reads "up to the end offset" would miss all but the first record of the
last batch. After each batch of changelog writes we therefore append one tiny marker
record, in a batch of its own, to every partition we wrote: the reported end is then
the true end. The marker's value is null, which recovery applies as a no-op delete of
a key nobody uses. On Apache Kafka the marker is merely redundant.

With the RocksDB store (`LEDGER_STORE=rocksdb`), faust keeps one database per
partition and files a write under the partition of the event being processed; a batch
spans partitions, so the value is put into the database of the partition its
changelog record went to (the same partition, since tables are co-partitioned).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import faust
import orjson

END_MARKER_KEY = b"\x00end"


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


async def write_batch(app: faust.App, table: Any, values: Mapping[bytes, Any]) -> None:
    """Store each value, send its changelog record (once per key), then the end markers."""
    if not values:
        return
    topic = table.changelog_topic.get_topic_name()
    store = table.data
    send = app.producer.send
    pending = []
    encoded = {key: orjson.dumps(value) for key, value in values.items()}
    for key, raw in encoded.items():
        pending.append(await send(topic, key, raw, None, None, None))
    written = await asyncio.gather(*pending)
    partitions = {metadata.partition for metadata in written}
    if hasattr(store, "_db_for_partition"):  # RocksDB: one database per partition
        for (key, raw), metadata in zip(encoded.items(), written, strict=True):
            store._db_for_partition(metadata.partition).put(key, raw)
            store._key_index[key] = metadata.partition
    else:  # memory: remember each key's partition, so a revoked partition's keys are dropped
        for (key, value), metadata in zip(values.items(), written, strict=True):
            store[key] = value
            store._key_partition[key] = metadata.partition
    markers = [await send(topic, END_MARKER_KEY, None, p, None, None) for p in partitions]
    await asyncio.gather(*markers)


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
