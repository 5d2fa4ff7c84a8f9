"""Build the faust app for one configuration."""

from __future__ import annotations

import asyncio

import faust
from faust.auth import SASLCredentials, SSLCredentials

from ledger.config import Settings
from ledger.topics import Topics
from workers.dispatcher import Dispatcher
from workers.projector import register_projector
from workers.validator import register_validator


def _credentials(settings: Settings) -> object | None:
    options = settings.kafka_client_options()
    if "sasl_mechanism" in options:
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if "ssl_context" in options:
        return SSLCredentials(options["ssl_context"])
    return None


def register_dispatchers(app: faust.App, settings: Settings, bootstrap: str) -> None:
    """One webhook dispatcher per URL in LEDGER_ALERT_WEBHOOKS, for the worker's lifetime."""
    urls = settings.webhooks()
    if not urls:
        return

    async def dispatch() -> None:
        await asyncio.gather(*(Dispatcher(settings, bootstrap, url).run() for url in urls))

    app.task(dispatch)


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    """The ledger's faust app; its id (and so its consumer group) carries the topic prefix."""
    datadir = settings.data_dir / "worker"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}ledger",
        broker=[f"kafka://{host}" for host in bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        autodiscover=False,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
    )
    topics = Topics(settings.topic_prefix)
    register_validator(app, topics, settings)
    register_projector(app, topics, settings)
    register_dispatchers(app, settings, bootstrap)
    return app
