"""One worker process: the validator, the projector (with its alert timer) and the webhook
dispatchers, on one producer, until SIGTERM or SIGINT. Start several with the same
settings and they share the partitions. `LEDGER_WORKER_ROLE=validator|projector` runs one
stage only (`ledger up` runs one process of each, so each stage has a core)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, NodeNotReadyError

from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_ledger_topics, ensure_topics, resend_only_unwritten
from ledger.adapters.process import configure_process
from workers.dispatcher import Dispatcher
from workers.projector import Projector
from workers.runtime import Processor, RecoveryFailed, StartAfresh, Table
from workers.validator import Validator

log = logging.getLogger("ledger.worker")


def is_outage(exc: BaseException) -> bool:
    """A failure the broker's absence explains: ride it out rather than exit."""
    if isinstance(exc, RecoveryFailed | StartAfresh) and exc.__cause__ is not None:
        return is_outage(exc.__cause__)  # the changelog could not be read: likewise
    if isinstance(exc, KafkaConnectionError | NodeNotReadyError | OSError | TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


async def ride_out(settings: Settings, bootstrap: str, stop: asyncio.Event) -> bool:
    """Run the workers until `stop` is set. When they fail because the broker is away,
    start them again, fresh (exactly as a restarted process would: state rebuilt from
    the changelogs, verdicts completed from the outputs), with a backoff of 1 s doubling
    to 30 s, logging one line when the outage begins and one when they run again.
    False when they stopped on a failure an outage does not explain."""
    delay = 1.0
    outage_since: float | None = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            failure = await run_worker(settings, bootstrap, stop, on_running=_back(outage_since))
        except Exception as exc:  # noqa: BLE001 - judged below
            failure = exc
        if failure is None:
            return True
        if not is_outage(failure):
            log.error("the workers stopped on a failure", exc_info=failure)
            return False
        if time.monotonic() - started > 60:
            delay, outage_since = 1.0, None  # they ran a while: a new outage
        if outage_since is None:
            outage_since = time.monotonic()
            log.warning("the broker does not answer (%r); the workers retry until it does", failure)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(30.0, delay * 2)
    return True


def _back(outage_since: float | None) -> Callable[[], None] | None:
    if outage_since is None:
        return None

    def running() -> None:
        log.warning("the broker answers again: workers running (%.0f s after the outage began)",
                    time.monotonic() - outage_since)  # fmt: skip

    return running


async def run_worker(
    settings: Settings,
    bootstrap: str,
    stop: asyncio.Event,
    on_running: Callable[[], None] | None = None,
) -> BaseException | None:
    """Run until `stop` is set or something fails; the failure, or None."""
    failure: BaseException | None = None
    await ensure_ledger_topics(settings, bootstrap)
    producer = resend_only_unwritten(
        AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,  # Tansu does not implement InitProducerId
            linger_ms=2,
            max_batch_size=512 * 1024,
            **settings.kafka_client_options(),
        )
    )
    await producer.start()
    tables: list[Table] = []
    try:
        role = settings.worker_role
        projector = Projector(settings, producer) if role in ("all", "projector") else None
        validator = Validator(settings, bootstrap, producer) if role != "projector" else None
        processors: list[Processor] = [
            *(validator.processors if validator else []),
            *([projector.processor] if projector else []),
        ]
        tables = [t for p in processors for t in p.tables]
        await ensure_topics(
            bootstrap,
            {t.topic: -1 for t in tables},
            settings.partitions,
            settings.kafka_client_options(),
            extra_configs={"cleanup.policy": "compact"},
            settings=settings,
        )
        if on_running is not None:
            on_running()
        halt = asyncio.Event()  # this run's end: the process stops, or something failed
        tasks = [asyncio.create_task(p.run(settings, bootstrap, halt)) for p in processors]
        if projector is not None:
            tasks.append(asyncio.create_task(projector.run_timer(halt)))
        if validator is not None:
            tasks.append(asyncio.create_task(validator.expire_held(halt)))
        dispatchers = [  # the webhooks go with the alerts: with the projector
            asyncio.create_task(Dispatcher(settings, bootstrap, url).run(halt))
            for url in (settings.webhooks() if projector is not None else [])
        ]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and task.exception() is not None:
                failure = failure or task.exception()
        halt.set()
        await asyncio.gather(*tasks, return_exceptions=True)  # each finishes its batch
        # each dispatcher finishes the POST in flight (bounded by the webhook timeout)
        if dispatchers:
            _, late = await asyncio.wait(dispatchers, timeout=settings.alert_timeout_s + 5)
            for task in late:
                task.cancel()
            await asyncio.gather(*dispatchers, return_exceptions=True)
        stopping.cancel()
    finally:
        for table in tables:  # closes RocksDB handles: a fresh run reopens them
            table.drop(set(range(settings.partitions)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)
    return failure


def main() -> None:
    settings = Settings()
    bootstrap = settings.broker
    if not bootstrap:
        raise SystemExit("LEDGER_BROKER is not set: `ledger up` starts a broker and sets it")
    configure_process(role=settings.worker_role)

    async def run() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await ride_out(settings, bootstrap, stop)

    if not asyncio.run(run()):
        # non-zero, so a supervisor (systemd, Docker, Kubernetes) restarts the worker
        raise SystemExit(1)
