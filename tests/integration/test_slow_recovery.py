"""A processor whose tables take longer to rebuild than its session stays the owner of its
partitions meanwhile: no other process is given them while it recovers, so no two
processes handle (and write for) one partition at once.

aiokafka sends no heartbeat while a rebalance listener runs; had the tables been rebuilt
there, a recovery longer than the session would have the group remove the process and
give its partitions to another, while it went on handling them as their owner.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_topics
from workers.runtime import Processor, Table

pytestmark = pytest.mark.integration
SESSION_S = 4.0


class SlowTable(Table):
    """A table whose first recovery takes three sessions (a big changelog)."""

    slow = True

    async def recover(self, settings: Settings, bootstrap: str, partitions: set[int]) -> int:
        if self.slow:
            self.slow = False
            await asyncio.sleep(3 * SESSION_S)
        return await super().recover(settings, bootstrap, partitions)


async def test_a_recovery_longer_than_the_session_keeps_its_partitions(
    settings: Settings,
) -> None:
    assert settings.broker is not None
    settings = settings.model_copy(update={"session_timeout_s": SESSION_S, "partitions": 2})
    topic = f"{settings.topic_prefix}stream"
    await ensure_topics(settings.broker, {topic: -1}, 2, settings.kafka_client_options())
    handled: list[tuple[int, int]] = []  # (processor, partition) of each batch
    overlaps: list[tuple[int, int, set[int]]] = []  # a partition the other also owned

    def handler(me: int) -> Any:
        async def handle(records: list[Any]) -> None:
            for partition in {r.partition for r in records}:
                handled.append((me, partition))
                if partition in processors[1 - me].assigned:
                    overlaps.append((me, partition, set(processors[1 - me].assigned)))

        return handle

    slow = SlowTable(settings.topic_prefix, "slow", 2)
    fast = Table(settings.topic_prefix, "fast", 2)
    changelogs = {slow.topic: -1, fast.topic: -1}
    await ensure_topics(settings.broker, changelogs, 2, settings.kafka_client_options())
    processors = [  # one consumer group (a processor's name is its group)
        Processor("shared", topic, handler(0), [slow]),
        Processor("shared", topic, handler(1), [fast]),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
    await producer.start()
    stop = asyncio.Event()
    try:
        runs = [asyncio.create_task(processors[0].run(settings, settings.broker, stop))]
        while slow.slow:  # until it has joined, and its recovery began
            await asyncio.sleep(0.05)
        runs.append(asyncio.create_task(processors[1].run(settings, settings.broker, stop)))
        for n in range(200):  # records keep coming to both partitions, 10 a second
            await producer.send_and_wait(topic, b"%d" % n, partition=n % 2)
            await asyncio.sleep(0.1)
        assert {p for _, p in handled} == {0, 1}
        assert {me for me, _ in handled} == {0, 1}, "both handled records"
        assert overlaps == [], "no partition had two owners at once"
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        await producer.stop()
