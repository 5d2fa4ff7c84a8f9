"""Kafka plumbing shared by the CLI, the publisher and the workers: topic creation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from ledger.config import Settings
from ledger.topics import Topics


async def ensure_topics(
    bootstrap: str,
    retention_ms: Mapping[str, int],
    partitions: int,
    client_options: Mapping[str, object] | None = None,
    timeout: float = 30.0,
    extra_configs: Mapping[str, str] | None = None,
) -> None:
    """Create the missing topics, explicitly (never rely on auto-creation)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"retention.ms": str(ms), **(extra_configs or {})},
                )
                for name, ms in retention_ms.items()
                if name not in existing
            ]
            if missing:
                await _create(admin, missing)
            return
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    try:
        response = await admin.create_topics(topics)
    except TopicAlreadyExistsError:
        return  # another process won the race
    for name, code, *_ in getattr(response, "topic_errors", []):
        if code not in (0, TopicAlreadyExistsError.errno):
            raise KafkaError(f"could not create topic {name}: error code {code}")


async def ensure_ledger_topics(settings: Settings, bootstrap: str) -> Topics:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(
        bootstrap, topics.retention_ms(), settings.partitions, settings.kafka_client_options()
    )
    return topics


# --- sealed sends -----------------------------------------------------------------
# Tansu reports a partition's end (its high watermark) as the base offset of the
# partition's last record *batch* + 1, and consumers read only up to it: the records of
# the last batch after its first stay invisible until something else is written there.
# A sealed send writes everything but the last record of each partition, waits for the
# acknowledgements, then writes each partition's last record alone, in a batch of one:
# the reported end is then the true end. On Apache Kafka it costs one round trip.


class Outgoing(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner picks for `key` (murmur2), so that our
    explicit choice co-partitions exactly like every other producer; keyless: the first."""
    if key is None:
        return partitions[0]
    index: int = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
    return partitions[index]


def seal_phases(
    messages: Iterable[Outgoing], partitions: Mapping[str, Sequence[int]]
) -> tuple[list[tuple[int, int, Outgoing]], list[tuple[int, int, Outgoing]]]:
    """(first phase, second phase) of (index, partition, message): the second phase holds
    the last message of every (topic, partition); each phase keeps the input order."""
    last: dict[tuple[str, int], tuple[int, int, Outgoing]] = {}
    first: list[tuple[int, int, Outgoing]] = []
    for index, message in enumerate(messages):
        partition = partition_for(message.key, partitions[message.topic])
        slot = (message.topic, partition)
        if slot in last:
            first.append(last[slot])
        last[slot] = (index, partition, message)
    return first, sorted(last.values(), key=lambda item: item[0])


async def send_sealed(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> list[Any]:
    """Send and wait for every acknowledgement; the RecordMetadata of each, in input order."""
    partitions: dict[str, list[int]] = {}
    for message in messages:
        if message.topic not in partitions:
            partitions[message.topic] = sorted(await producer.partitions_for(message.topic))
    acked: list[Any] = [None] * len(messages)
    for phase in seal_phases(messages, partitions):
        pending = [
            await producer.send(m.topic, m.value, key=m.key, partition=p, headers=m.headers)
            for _, p, m in phase
        ]
        for (index, _, _), metadata in zip(phase, await asyncio.gather(*pending), strict=True):
            acked[index] = metadata
    return acked
