"""The publishing client: events onto the inbox, keyed by subject, batched, acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from itertools import islice
from types import TracebackType

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from events import AnyEvent, subject_of
from ledger.adapters.config import Settings
from ledger.adapters.durable import JOURNAL_HEADER, DurableStore
from ledger.adapters.kafka import Outgoing, ensure_ledger_topics, send_sealed
from ledger.adapters.topics import Topics


def batched(
    items: Iterable[tuple[bytes | None, bytes]], size: int
) -> Iterable[list[tuple[bytes | None, bytes]]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class BrokerUnreachable(RuntimeError):
    """The broker did not answer within the publish timeout."""


class Publisher:
    """Async producer for the ledger's inbox (or any of its topics)."""

    def __init__(
        self, settings: Settings, bootstrap: str, connect_timeout: float | None = None
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.connect_timeout = connect_timeout or settings.publish_timeout_s
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
        self._journal: DurableStore | None = None

    async def start(self) -> Publisher:
        """Connect (topics created if missing); BrokerUnreachable after the timeout."""
        try:
            await asyncio.wait_for(self._connect(), self.connect_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            raise BrokerUnreachable(
                f"the broker at {self.bootstrap} did not answer within "
                f"{self.connect_timeout:g} s ({type(exc).__name__})"
            ) from None
        # Publishing to the embedded broker of `ledger up`: journal into its durable copy.
        self._journal = DurableStore.of_broker(self.settings.data_dir, self.bootstrap)
        return self

    async def _connect(self) -> None:
        await ensure_ledger_topics(self.settings, self.bootstrap)
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()
        if self._journal is not None:
            self._journal.close()

    @property
    def journaled(self) -> bool:
        """Whether publishes are journaled (fsynced) before they are sent."""
        return self._journal is not None

    async def publish(self, events: Iterable[tuple[AnyEvent, bytes]]) -> int:
        """Send validated events (with their bytes) to the inbox; return once all are acked.
        With the embedded broker, journal them durably first: what is acknowledged here
        survives even a SIGKILL of every process right after."""
        messages = [(subject_of(e).encode(), raw) for e, raw in events]
        return await self.send_raw(self.topics.inbox, messages, journal=self._journal)

    async def send_raw(
        self,
        topic: str,
        messages: Iterable[tuple[bytes | None, bytes]],
        journal: DurableStore | None = None,
    ) -> int:
        """Send key/value pairs as they are (tests use it to push garbage into the inbox),
        sealed in chunks (see `ledger.adapters.kafka.send_sealed`), each chunk acknowledged
        (and journaled first, if `journal` is given)."""
        sent = 0
        for chunk in batched(messages, 10_000):
            headers: list[list[tuple[str, bytes]] | None] = [None] * len(chunk)
            if journal is not None:
                seqs = await asyncio.to_thread(journal.journal, topic, chunk)
                headers = [[(JOURNAL_HEADER, str(seq).encode())] for seq in seqs]
            outgoing = [Outgoing(topic, k, v, h) for (k, v), h in zip(chunk, headers, strict=True)]
            sent += len(await send_sealed(self._producer, outgoing))
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
