"""Webhook delivery of alerts: `ledger.alerts` is the durable queue, one consumer group per URL.

For each webhook the dispatcher reads `ledger.alerts` in order (per partition; an
alert's partition is its subject's), POSTs each alert as JSON with its `alert_id` in
the `Idempotency-Key` header, and retries until the receiver answers 2xx: exponential
backoff with full jitter, for as long as it takes. Only then does it commit the offset,
so a receiver that is down for an hour gets every alert when it comes back, in order,
and deliveries pending at a restart are picked up where they stopped. A 4xx other than
408 or 429 is permanent: the alert is marked undeliverable for that URL, logged, and
the queue moves on. Every outcome goes to `ledger.alert-deliveries` for `GET /alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ledger.adapters.config import Settings
from ledger.adapters.kafka import stop_consumer
from ledger.adapters.topics import Topics

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000


def group_for(prefix: str, url: str) -> str:
    return f"{prefix}ledger-webhook-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    return rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def is_permanent(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 429)


class Dispatcher:
    def __init__(self, settings: Settings, bootstrap: str, url: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.url = url
        self.topics = Topics(settings.topic_prefix)
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; a POST in flight when it is set finishes and is
        recorded and committed, so a graceful restart sends nothing twice."""
        settings = self.settings
        consumer = AIOKafkaConsumer(
            self.topics.alerts,
            bootstrap_servers=self.bootstrap,
            group_id=group_for(settings.topic_prefix, self.url),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, settings.session_timeout_s / 3) * 1000),
            max_poll_interval_ms=DAY_MS,  # a receiver may be down for a long time
            **settings.kafka_client_options(),
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            **settings.kafka_client_options(),
        )
        await consumer.start()
        await producer.start()
        timeout = aiohttp.ClientTimeout(total=settings.alert_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                while not stop.is_set():
                    batches = await consumer.getmany(timeout_ms=500, max_records=500)
                    for tp, records in batches.items():
                        for record in records:
                            if stop.is_set():
                                return
                            status = await self.deliver(http, record.value or b"", stop)
                            if status is None:
                                return  # stopped while waiting to retry: redone after restart
                            await producer.send_and_wait(
                                self.topics.deliveries, status, key=record.key
                            )
                            await consumer.commit({tp: record.offset + 1})
        finally:
            await producer.stop()
            await stop_consumer(consumer)

    async def deliver(
        self, http: aiohttp.ClientSession, body: bytes, stop: asyncio.Event
    ) -> bytes | None:
        """POST until 2xx or a permanent refusal; return the delivery record, or None if
        `stop` was set while waiting for the next attempt."""
        try:
            alert_id = str(orjson.loads(body)["alert_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._record("?", "undeliverable", 0, None, "not an alert")
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert_id}
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            try:
                async with http.post(self.url, data=body, headers=headers) as response:
                    status = response.status
                    error = None if status < 300 else f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if status is not None and 200 <= status < 300:
                return self._record(alert_id, "delivered", attempt, status, None)
            if status is not None and is_permanent(status):
                log.warning("alert %s undeliverable to %s: HTTP %s", alert_id, self.url, status)
                return self._record(alert_id, "undeliverable", attempt, status, error)
            delay = backoff(
                attempt,
                self.settings.alert_retry_base_s,
                self.settings.alert_retry_cap_s,
                self._rng,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return None

    def _record(
        self, alert_id: str, status: str, attempts: int, http_status: int | None, error: str | None
    ) -> bytes:
        record: dict[str, Any] = {
            "alert_id": alert_id,
            "webhook": self.url,
            "status": status,
            "attempts": attempts,
            "http_status": http_status,
            "error": error,
            "at": datetime.now(UTC).isoformat(),
        }
        return orjson.dumps(record)
