"""Kafka plumbing shared by the CLI, the publisher and the workers: topic creation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from ledger.config import Settings
from ledger.topics import Topics


async def ensure_topics(
    bootstrap: str,
    retention_ms: Mapping[str, int],
    partitions: int,
    client_options: Mapping[str, object] | None = None,
    timeout: float = 30.0,
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
                    topic_configs={"retention.ms": str(ms)},
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
