"""The publishing client: events onto the inbox, keyed by subject, batched, acknowledged."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from aiokafka import AIOKafkaProducer

from events import AnyEvent, subject_of
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing, ensure_ledger_topics, send_sealed
from ledger.adapters.topics import Topics


class Publisher:
    """Async producer for the ledger's inbox (or any of its topics)."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topics = Topics(settings.topic_prefix)
        # No idempotent producer: Tansu does not implement InitProducerId.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            enable_idempotence=False,
            **settings.kafka_client_options(),
        )

    async def start(self) -> Publisher:
        await ensure_ledger_topics(self.settings, self.bootstrap)
        await self._producer.start()
        return self

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, events: Iterable[tuple[AnyEvent, bytes]]) -> int:
        """Send validated events (with their bytes) to the inbox; return once all are acked."""
        return await self.send_raw(
            self.topics.inbox, ((subject_of(e).encode(), raw) for e, raw in events)
        )

    async def send_raw(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Send key/value pairs as they are (tests use it to push garbage into the inbox),
        sealed in chunks (see `ledger.adapters.kafka.send_sealed`), each chunk acknowledged."""
        chunk: list[Outgoing] = []
        sent = 0
        for key, value in messages:
            chunk.append(Outgoing(topic, key, value))
            if len(chunk) >= 10_000:
                sent += len(await send_sealed(self._producer, chunk))
                chunk = []
        if chunk:
            sent += len(await send_sealed(self._producer, chunk))
        return sent

    async def __aenter__(self) -> Publisher:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
