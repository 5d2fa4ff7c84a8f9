"""Is the stream moving? The API watches each stage's consumer group from outside.

A stage (screen, admit, project) is *stalled* when records wait on its topic and its
group's committed offsets have not moved for `LEDGER_STALL_AFTER_S`: its worker died, or
keeps failing on the same batch. The watch also tells whether the broker answers now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ledger.adapters.config import Settings
from ledger.adapters.kafka import stop_consumer
from ledger.adapters.topics import Topics
from workers.runtime import group_id

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """One stage's backlog and when its committed offsets last moved (or it was idle)."""

    backlog: int = 0
    committed: int = -1
    moved_at: float | None = None

    def observe(self, committed: int, backlog: int, now: float) -> None:
        if committed != self.committed or backlog == 0 or self.moved_at is None:
            self.moved_at = now
        self.committed = committed
        self.backlog = backlog

    def stalled(self, now: float, after: float) -> bool:
        return self.backlog > 0 and self.moved_at is not None and now - self.moved_at > after


def stages(prefix: str) -> dict[str, str]:
    """Stage (its processor's name) -> the topic it consumes."""
    topics = Topics(prefix)
    return {
        "validator-screen": topics.inbox,
        "validator-admit": topics.by_subject,
        "projector": topics.events,
        "sql": topics.events,  # the SQL projection's writer (its lag on ledger.events)
    }


# watched once their group has committed: a ledger may run without the SQL writer
OPTIONAL_STAGES = frozenset({"sql"})


CHECK_TIMEOUT_S = 5.0  # a check that takes longer finds the broker unreachable


class StreamWatch:
    def __init__(self, settings: Settings, bootstrap: str, every_s: float = 2.0) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.every_s = every_s
        self.stages = stages(settings.topic_prefix)
        self.progress = {name: Progress() for name in self.stages}
        self.broker_reachable = False
        self.checked_at: float | None = None
        self.reached_at: float | None = None  # the last check that reached the broker
        self.tried_at: float | None = None  # the last check, reached or not

    def broker_unreachable(self) -> bool:
        """The last check could not reach the broker (False before the first check)."""
        return self.tried_at is not None and not self.broker_reachable

    def since_checked(self) -> float:
        if self.tried_at is None:
            return 0.0
        return asyncio.get_running_loop().time() - self.tried_at

    def report(self) -> dict[str, Any]:
        """`status` (unknown, flowing, idle or stalled) and each stage's backlog."""
        after = self.settings.stall_after_s
        at = self.checked_at or 0.0  # judged as of the last look, not as of this call
        stalled = [n for n, p in self.progress.items() if p.stalled(at, after)]
        if self.checked_at is None:
            status = "unknown"
        elif stalled:
            status = "stalled"
        elif any(p.backlog for p in self.progress.values()):
            status = "flowing"
        else:
            status = "idle"
        return {
            "status": status,
            "stalled_stages": stalled,
            "backlog": {
                name: p.backlog
                for name, p in self.progress.items()
                if name not in OPTIONAL_STAGES or p.committed >= 0
            },
        }

    async def run(self) -> None:
        clients: _Clients | None = None
        try:
            while True:
                try:
                    if clients is None:
                        clients = _Clients(self.settings, self.bootstrap)
                    await asyncio.wait_for(self._connect_and_check(clients), CHECK_TIMEOUT_S)
                    if not self.broker_reachable and self.reached_at is not None:
                        log.warning("the broker answers again")
                    self.broker_reachable = True
                    self.reached_at = asyncio.get_running_loop().time()
                except (KafkaError, OSError, TimeoutError) as exc:
                    if self.broker_reachable:
                        log.warning("the broker stopped answering: %r", exc)
                    self.broker_reachable = False
                    if clients is not None:  # fresh ones next time: these may be wedged
                        await clients.close()
                        clients = None
                self.tried_at = asyncio.get_running_loop().time()
                await asyncio.sleep(self.every_s)
        finally:
            if clients is not None:
                await clients.close()

    async def _connect_and_check(self, clients: _Clients) -> None:
        if not clients.started:
            await clients.admin.start()
            await clients.consumer.start()
            clients.started = True
        await self._check(clients.admin, clients.consumer)

    async def _check(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
        now = asyncio.get_running_loop().time()
        for name, topic in self.stages.items():
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                continue
            ends = await consumer.end_offsets(tps)
            group = group_id(self.settings.topic_prefix, name)
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            if name in OPTIONAL_STAGES and not any(o.offset >= 0 for o in offsets.values()):
                continue
            committed = {tp: max(0, o.offset) for tp, o in offsets.items()}
            backlog = sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())
            self.progress[name].observe(sum(committed.values()), backlog, now)
        self.checked_at = now


class _Clients:
    """The watch's admin client and consumer, replaced together after a failure."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        options = settings.kafka_client_options()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **options)
        self.started = False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stop_consumer(self.consumer), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.admin.close(), 5)
