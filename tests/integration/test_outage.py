"""A broker outage under a flowing stream, and publishers facing an unreachable broker.

The outage is real at the TCP level: the broker advertises a port served by a proxy in
this test, and the proxy drops every connection and refuses new ones for 10 s, as a
stopped broker whose log survives (Kafka's, on disk) would. Workers and API are real
processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from events import from_mapping
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.reader import collect
from ledger.adapters.topics import Topics
from projections import fold
from tests.integration.conftest import Workers
from tests.integration.test_api import assert_lists_match, known_history, publish, wait_folded

pytestmark = pytest.mark.integration
LEDGER = str(Path(sys.executable).with_name("ledger"))


class Proxy:
    """127.0.0.1:port -> the broker; `cut()` drops everything until `mend()`; while
    `muted`, the broker's answers are dropped on the way (`dropped` set when one was)."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.muted = False
        self.dropped = asyncio.Event()

    async def mend(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if answers and self.muted:
                        self.dropped.set()  # the broker answered: it had the request
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self.writers -= {writer, up_writer}


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[Settings, Proxy]]:
    port, target = free_port(), free_port()
    broker = EmbeddedBroker(tmp_path / "tansu.log", port=target, advertised_port=port)
    proxy = Proxy(port, target)
    await proxy.mend()
    with broker:
        api = free_port()
        yield (
            Settings(
                broker=f"127.0.0.1:{port}",
                data_dir=tmp_path / "data",
                session_timeout_s=6,
                partitions=4,
                api_port=api,
                api_url=f"http://127.0.0.1:{api}",
                clock="2026-06-30T09:00:00+00:00",
                alert_interval=1.0,
                publish_timeout_s=3.0,
            ),
            proxy,
        )
        if proxy.server is not None:
            await proxy.cut()


async def health(settings: Settings) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(settings.api_url + "/health") as r:
        return r.status, orjson.loads(await r.read())


async def test_workers_ride_out_a_broker_outage(
    proxied: tuple[Settings, Proxy], tmp_path: Path
) -> None:
    settings, proxy = proxied
    workers = Workers(settings, tmp_path)
    try:
        events = known_history(500)
        half = len(events) // 2
        worker = workers.start()
        workers.start("ledger.api")
        await publish(settings, events[:1])
        await wait_folded(settings, 1, workers)  # everything is up
        await publish(settings, events[1:half])  # (the first event went before)
        await asyncio.sleep(0.1)  # flowing: most of these are still on their way

        await proxy.cut()
        cut_at = time.monotonic()
        status, body = 0, {}
        while time.monotonic() - cut_at < 15:  # a check gives up after 5 s
            status, body = await health(settings)
            if status == 503:
                break
            await asyncio.sleep(0.5)
        assert (status, body["status"], body["broker_reachable"]) == (
            503, "broker_unreachable", False,
        ), body  # fmt: skip
        posted_at = time.monotonic()
        async with aiohttp.ClientSession() as http:
            answer = await http.post(settings.api_url + "/events", data=orjson.dumps(events[half]))
            problem = orjson.loads(await answer.read())
        assert answer.status == 503 and answer.headers["Retry-After"], problem
        assert problem["error"] == "broker_unreachable"
        assert time.monotonic() - posted_at < settings.publish_timeout_s + 2
        await asyncio.sleep(max(0.0, 12 - (time.monotonic() - cut_at)))
        assert worker.poll() is None, "the worker exited during the outage\n" + workers.logs()

        await proxy.mend()
        await publish(settings, events[half:])
        await wait_folded(settings, len(events), workers, timeout=180)
        assert worker.poll() is None, workers.logs()
        for _ in range(30):  # the next broker check (every 2 s) finds it back
            status, body = await health(settings)
            if status == 200:
                break
            await asyncio.sleep(0.5)
        assert status == 200 and body["broker_reachable"] and body["status"] == "ok", body

        out = await collect(settings, settings.broker or "", [Topics().events], lambda c: False, 3)
        ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[Topics().events])
        assert set(ids) == {e["event_id"] for e in events} and max(ids.values()) == 1
        rejected = await collect(
            settings, settings.broker or "", [Topics().rejected], lambda c: False, 1
        )
        assert rejected.total() == 0, [r.value[:300] for r in rejected.records[Topics().rejected]]
        await assert_lists_match(settings, fold(from_mapping(e) for e in events))
        # bounded logging: a few lines per outage, not one per connection attempt
        for log in ("workers-0.log", "ledger.api-1.log"):
            lines = (tmp_path / log).read_text(errors="replace").splitlines()
            assert len(lines) < 60, "\n".join(lines[:80])
    finally:
        workers.stop_all()


def test_ledger_publish_to_an_unreachable_broker(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in known_history(3)))
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603
        [LEDGER, "publish", str(events)],
        env={
            "PATH": "/usr/bin:/bin",
            "LEDGER_BROKER": nobody,
            "LEDGER_PUBLISH_TIMEOUT_S": "2",
            "LEDGER_DATA_DIR": str(tmp_path / "data"),
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and nobody in lines[0] and "LEDGER_BROKER" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "nothing was published" in lines[0]
    assert took < 15, took


async def test_a_consumer_stopped_while_the_broker_is_away_ends_its_task_normally(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's fetcher, closed while a fetch waits out its retry backoff, re-raises
    that fetch's cancellation from `stop()`: a worker starting afresh after an outage
    ended its processor's task as cancelled and exited with 1. `stop_consumer` stops it
    and returns."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ledger.adapters.kafka import ensure_topics, stop_consumer

    broker = EmbeddedBroker(tmp_path / "tansu.log").start()
    try:
        await ensure_topics(broker.bootstrap, {"away": -1}, 1)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id=None, retry_backoff_ms=2000
        )
        await consumer.start()
        consumer.assign([TopicPartition("away", 0)])
        await consumer.getmany(timeout_ms=300)
    finally:
        broker.stop()
    with caplog.at_level("ERROR", logger="aiokafka"):
        while "Failed fetch messages" not in caplog.text:  # a fetch failed: it backs off
            await consumer.getmany(timeout_ms=100)
    await stop_consumer(consumer)  # raised CancelledError with `consumer.stop()`
    assert not consumer._client._conns, "its connections are closed"  # noqa: SLF001
