"""Read what the validator wrote: counts and records from `ledger.events` and `ledger.rejected`.

"Caught up" is decided by counting records against what was published, never from the
high watermark alone (Tansu's reported end offset can trail the log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from ledger.adapters.config import Settings
from ledger.adapters.kafka import stop_consumer


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Collected:
    records: dict[str, list[Record]] = field(default_factory=dict)

    def total(self) -> int:
        return sum(len(r) for r in self.records.values())


async def collect(
    settings: Settings,
    bootstrap: str,
    topics: Sequence[str],
    until: Callable[[Collected], bool],
    timeout: float,
    on_progress: Callable[[Collected], None] | None = None,
) -> Collected:
    """Read `topics` from the beginning until `until(collected)` holds or `timeout` passes."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_options(),
    )
    collected = Collected({t: [] for t in topics})
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(collected) and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, messages in batches.items():
                collected.records[tp.topic].extend(
                    Record(
                        tp.topic, tp.partition, m.offset, m.key, m.value or b"", tuple(m.headers)
                    )
                    for m in messages
                )
            if on_progress is not None:
                on_progress(collected)
    finally:
        await stop_consumer(consumer)
    return collected
