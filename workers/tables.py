"""Changelogged faust tables written once per key per batch.

faust's own `table[key] = value` queues every changelog write in a buffer that drains
a few hundred messages a second. Here the value goes into the table's store and its
changelog record straight to the producer, keyed and encoded exactly as faust recovers
it (raw UTF-8 key, JSON value). faust flushes the producer before it commits offsets,
so a changelog write is durable before the input that caused it is committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
import orjson


def json_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of JSON values keyed by str, changelog partitioned by the producer's partitioner."""
    return app.Table(
        name,
        default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=partitions,
        use_partitioner=True,  # changelog partition = partitioner(key), like the source topic
        extra_topic_configs={"retention.ms": "-1"},
    )


async def write_batch(app: faust.App, table: Any, values: Mapping[str, Any]) -> None:
    """Store each value and send its changelog record (once per key)."""
    topic = table.changelog_topic.get_topic_name()
    store = table.data
    send = app.producer.send
    for key, value in values.items():
        store[key] = value
        await send(topic, key.encode(), orjson.dumps(value), None, None, None)
