"""Kafka plumbing shared by the CLI, the publisher and the workers: topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorrelationIdError,
    KafkaConnectionError,
    KafkaError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer import sender as _sender

from ledger.adapters.config import Settings
from ledger.adapters.topics import Topics

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap: str,
    retention_ms: Mapping[str, int],
    partitions: int,
    client_options: Mapping[str, object] | None = None,
    timeout: float = 30.0,
    extra_configs: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> None:
    """Create the missing topics, explicitly (never rely on auto-creation), replicated
    as `settings` says."""
    replication = settings.replication_factor if settings is not None else 1
    configs = dict(extra_configs or {})
    if settings is not None and settings.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(settings.min_insync_replicas)
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
                    replication_factor=replication,
                    topic_configs={"retention.ms": str(ms), **configs},
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
        bootstrap,
        topics.retention_ms(),
        settings.partitions,
        settings.kafka_client_options(),
        settings=settings,
    )
    return topics


# --- no blind resends ---------------------------------------------------------------
# Tansu has no idempotent producer, and aiokafka sends a batch again after any retriable
# error, among them a lost connection or a timed-out request: errors after which the
# broker may well have written the batch. The second copy then lands beside the first
# (a broker cut off mid-stream put one event in ledger.events twice). A producer marked
# by `resend_only_unwritten` sends a batch again only when the broker said it did not
# write it (a leader moving, a topic not yet known); after an error that leaves it
# unknown, the send fails, the worker starts its processors afresh, and what its last
# batches wrote is read back from its outputs (`workers.validator.complete_from_output`).
UNKNOWN_FATE = (KafkaConnectionError, RequestTimedOutError, CorrelationIdError)
_aiokafka_can_retry = _sender.SendProduceReqHandler._can_retry


def _can_retry(handler: Any, error: Exception, batch: Any) -> bool:
    if isinstance(error, UNKNOWN_FATE) and getattr(handler._sender, "ledger_no_blind", False):
        return False
    return bool(_aiokafka_can_retry(handler, error, batch))


_sender.SendProduceReqHandler._can_retry = _can_retry


def resend_only_unwritten(producer: AIOKafkaProducer) -> AIOKafkaProducer:
    """The producer, marked to send a batch again only when it cannot have been written."""
    producer._sender.ledger_no_blind = True  # noqa: SLF001 - read by `_can_retry` above
    return producer


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
    partition: int | None = None  # None: the default partitioner's choice for the key
    timestamp: int | None = None  # ms since the epoch; None: now


@functools.lru_cache(maxsize=1 << 17)
def _key_hash(key: bytes) -> int:
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF  # pure Python in aiokafka: keys repeat, so cache it


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner picks for `key` (murmur2), so that our
    explicit choice co-partitions exactly like every other producer; keyless: the first."""
    if key is None:
        return partitions[0]
    return partitions[_key_hash(key) % len(partitions)]


@functools.lru_cache(maxsize=1024)
def key_in_partition(prefix: bytes, partition: int, partitions: int) -> bytes:
    """A key starting with `prefix` that the default partitioner sends to `partition`
    (of `partitions`): a per-partition record, such as a table's output mark."""
    for n in range(1_000_000):
        key = prefix + str(n).encode()
        if partition_for(key, range(partitions)) == partition:
            return key
    raise ValueError(f"no key found for partition {partition}")  # pragma: no cover


class Acked(NamedTuple):
    """Where one sent record landed."""

    topic: str
    partition: int
    offset: int


def seal_phases(
    messages: Iterable[Outgoing], partitions: Mapping[str, Sequence[int]]
) -> tuple[dict[tuple[str, int], list[int]], dict[tuple[str, int], list[int]]]:
    """(first phase, second phase): the indexes of the messages to send to each
    (topic, partition), in input order; the second phase holds only the last message of
    every (topic, partition)."""
    slots: dict[tuple[str, int], list[int]] = {}
    for index, message in enumerate(messages):
        partition = message.partition
        if partition is None:
            partition = partition_for(message.key, partitions[message.topic])
        slot = (message.topic, partition)
        slots.setdefault(slot, []).append(index)
    first = {slot: indexes[:-1] for slot, indexes in slots.items() if len(indexes) > 1}
    return first, {slot: indexes[-1:] for slot, indexes in slots.items()}


async def send_sealed(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> list[Acked]:
    """Send and wait for every acknowledgement; where each landed, in input order.

    Records go out as prebuilt batches (a per-record `send()` costs ~30 us here, a batch
    append ~4 us), the batches of one partition one after another, so a retried batch
    never lands after a later one."""
    partitions: dict[str, list[int]] = {}
    for message in messages:
        if message.topic not in partitions:
            partitions[message.topic] = sorted(await producer.partitions_for(message.topic))
    acked: list[Any] = [None] * len(messages)
    for phase in seal_phases(messages, partitions):
        sends = [
            _send_partition(producer, messages, topic, partition, indexes)
            for (topic, partition), indexes in phase.items()
        ]
        for landed in await asyncio.gather(*sends):
            for index, where in landed:
                acked[index] = where
    return acked


RETRIES = 8


async def _send_partition(
    producer: AIOKafkaProducer,
    messages: Sequence[Outgoing],
    topic: str,
    partition: int,
    indexes: list[int],
) -> list[tuple[int, Acked]]:
    """The messages at `indexes`, to one partition, in order; a batch refused with a
    retriable error (a leader moving, a topic just created) is sent again, one whose
    fate is unknown (`UNKNOWN_FATE`) never."""
    landed: list[tuple[int, Acked]] = []
    for batch, members in _fill(producer, messages, indexes):
        for attempt in range(RETRIES + 1):
            if attempt:
                batch = _fill(producer, messages, members)[0][0]  # a sent batch is spent
            batch.close()
            try:
                metadata = await (await producer.send_batch(batch, topic, partition=partition))
                break
            except KafkaError as exc:
                if not exc.retriable or isinstance(exc, UNKNOWN_FATE) or attempt == RETRIES:
                    raise  # (a batch perhaps written is never sent again: see above)
                await producer.client.force_metadata_update()
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        landed.extend(
            (index, Acked(topic, partition, metadata.offset + position))
            for position, index in enumerate(members)
        )
    return landed


def _fill(
    producer: AIOKafkaProducer, messages: Sequence[Outgoing], indexes: list[int]
) -> list[tuple[Any, list[int]]]:
    """The messages at `indexes` appended to as few batches as their size allows."""
    chunks: list[tuple[Any, list[int]]] = [(producer.create_batch(), [])]
    for index in indexes:
        m = messages[index]
        for fresh in (False, True):
            if fresh:
                chunks.append((producer.create_batch(), []))
            batch, members = chunks[-1]
            appended = batch.append(
                key=m.key, value=m.value, timestamp=m.timestamp, headers=m.headers or []
            )
            if appended is not None:
                members.append(index)
                break
            if not members:  # not even an empty batch takes it
                raise RecordTooLargeError(f"a record of {len(m.value or b'')} bytes fits no batch")
    return [chunk for chunk in chunks if chunk[1]]


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """`consumer.stop()`, proof against aiokafka 0.14's fetcher: closed while one of its
    fetches waits out a retry backoff (the broker away), it re-raises that fetch's own
    cancellation, which ended the caller's task as cancelled (a worker riding out an
    outage exited with 1). Absorbed, unless this task itself is being cancelled; the
    connections are closed all the same."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("a consumer's fetch was cancelled as it stopped (the broker away?)")
        with contextlib.suppress(Exception):
            await consumer._client.close()  # noqa: SLF001 - what stop() did not reach
