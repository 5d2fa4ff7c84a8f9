"""One worker process: the validator, the projector (with its alert timer) and the webhook
dispatchers, on one producer, until SIGTERM or SIGINT. Start several with the same
settings and they share the partitions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiokafka import AIOKafkaProducer

from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_ledger_topics, ensure_topics
from workers.dispatcher import Dispatcher
from workers.projector import Projector
from workers.runtime import Processor
from workers.validator import Validator

log = logging.getLogger("ledger.worker")


async def run_worker(settings: Settings, bootstrap: str, stop: asyncio.Event) -> bool:
    """Run until `stop` is set; False when it stopped because a processor failed."""
    failed = False
    await ensure_ledger_topics(settings, bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,  # Tansu does not implement InitProducerId
        linger_ms=2,
        max_batch_size=512 * 1024,
        **settings.kafka_client_options(),
    )
    await producer.start()
    try:
        projector = Projector(settings, producer)
        validator = Validator(settings, bootstrap, producer)
        processors: list[Processor] = [*validator.processors, projector.processor]
        tables = [t for p in processors for t in p.tables]
        await ensure_topics(
            bootstrap,
            {t.topic: -1 for t in tables},
            settings.partitions,
            settings.kafka_client_options(),
            extra_configs={"cleanup.policy": "compact"},
            settings=settings,
        )
        tasks = [asyncio.create_task(p.run(settings, bootstrap, stop)) for p in processors]
        tasks.append(asyncio.create_task(projector.run_timer(stop)))
        tasks.append(asyncio.create_task(validator.expire_held(stop)))
        dispatchers = [
            asyncio.create_task(Dispatcher(settings, bootstrap, url).run(stop))
            for url in settings.webhooks()
        ]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and task.exception() is not None:
                log.error("a processor failed; stopping", exc_info=task.exception())
                failed = True
                stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)  # each finishes its batch
        # each dispatcher finishes the POST in flight (bounded by the webhook timeout)
        if dispatchers:
            _, late = await asyncio.wait(dispatchers, timeout=settings.alert_timeout_s + 5)
            for task in late:
                task.cancel()
            await asyncio.gather(*dispatchers, return_exceptions=True)
        stopping.cancel()
    finally:
        await producer.stop()
    return not failed


def main() -> None:
    settings = Settings()
    bootstrap = settings.broker
    if not bootstrap:
        raise SystemExit("LEDGER_BROKER is not set: `ledger up` starts a broker and sets it")
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    async def run() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await run_worker(settings, bootstrap, stop)

    if not asyncio.run(run()):
        # non-zero, so a supervisor (systemd, Docker, Kubernetes) restarts the worker
        raise SystemExit(1)
