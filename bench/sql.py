"""The SQL projection's speed (issue 9), on embedded Tansu, DuckDB and a throwaway
PostgreSQL cluster:

    python -m bench.sql [--requests 100000] [--lag-events 60000]

1. rows per second into DuckDB and into PostgreSQL: `--requests` requests of generated
   history (about 3.1 events each) written to `ledger.events`, then the tables rebuilt
   from it (`workers.sql.rebuild`, the code `ledger sql --rebuild` runs);
2. the five queries of the README ("Five questions an analyst asked", read from it) on
   both stores at that size: the median of 5 runs each;
3. the SQL writer's lag behind the stream at the pipeline's full rate: `--lag-events`
   events into the inbox of a running worker, API and SQL writer; the records the
   writer has still to write, sampled every 0.5 s, and how long after the API's read
   model it has written the last one.
Each run checks the SQL tables hold exactly the log's events (count and distinct ids).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.pipeline import history, publish, wait_folded
from events import from_mapping
from events.codec import subject_of
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.adapters.sql import DuckStore, PostgresStore, SqlStore, duckdb_path
from ledger.adapters.topics import Topics
from ledger.entrypoints.history import generate
from ledger.entrypoints.runner import start_api, start_module, start_worker, stop_process
from projections.tables import TABLES
from tests.postgres import fresh_database, throwaway_cluster
from workers.runtime import group_id
from workers.sql import rebuild

UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
README = Path(__file__).parents[1] / "README.md"


def readme_queries() -> list[str]:
    text = README.read_text()
    section = text[text.index("Five questions an analyst asked") : text.index("**The tables.**")]
    return re.findall(r"```sql\n(.*?)\n```", section, re.S)


def settings_for(broker: str, tmp: Path, name: str) -> Settings:
    port = free_port()
    return Settings(
        broker=broker,
        topic_prefix=f"bsql{name}{uuid.uuid4().hex[:6]}.",
        data_dir=tmp / name,
        session_timeout_s=6,
        api_port=port,
        api_url=f"http://127.0.0.1:{port}",
        clock=UNTIL.isoformat(),
    )


async def load(settings: Settings, requests: int) -> int:
    events = generate(requests=requests, until=UNTIL, seed=42)
    assert settings.broker is not None
    async with Publisher(settings, settings.broker) as publisher:
        messages = [(subject_of(from_mapping(e)).encode(), orjson.dumps(e)) for e in events]
        await publisher.send_raw(publisher.topics.events, messages)
    return len(events)


def check(store: SqlStore, events: int) -> int:
    [(n, distinct)] = store.query("SELECT count(*), count(DISTINCT event_id) FROM events")[1]
    assert n == distinct == events, (n, distinct, events)
    return sum(store.query(f"SELECT count(*) FROM {t.name}")[1][0][0] for t in TABLES)  # noqa: S608


def into(settings: Settings, store: SqlStore, events: int, label: str) -> None:
    assert settings.broker is not None
    started = time.perf_counter()
    read = asyncio.run(rebuild(settings, settings.broker, store))
    took = time.perf_counter() - started
    rows = check(store, events)
    print(
        f"  {label:<10} {read:,} events -> {rows:,} rows in {took:6.1f} s: "
        f"{read / took:8,.0f} events/s, {rows / took:8,.0f} rows/s"
    )


def queries(store: SqlStore, label: str) -> None:
    for i, sql in enumerate(readme_queries(), 1):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            store.query(sql)
            times.append(time.perf_counter() - started)
        print(f"  {label:<10} README query {i}: {statistics.median(times) * 1000:7.1f} ms")


async def sql_behind(settings: Settings) -> int:
    """Records of ledger.events the SQL writer has still to write (from its group)."""
    assert settings.broker is not None
    topic = Topics(settings.topic_prefix).events
    tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        group = group_id(settings.topic_prefix, "sql")
        done = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(max(0, ends[tp] - max(0, done[tp].offset if tp in done else 0)) for tp in tps)
    finally:
        await admin.close()


async def lag(settings: Settings, events: int, log: Path) -> None:
    assert settings.broker is not None
    bootstrap = settings.broker
    worker = start_worker(settings, bootstrap, log)
    api = start_api(settings, bootstrap, log)
    writer = start_module("workers.sql", settings, bootstrap, log)
    try:
        await publish(settings, bootstrap, history(3, "warm"))
        await wait_folded(settings, 3, 120)
        messages = history(events, "lag")
        started = time.perf_counter()
        worst = 0

        async def sample() -> None:
            nonlocal worst
            while True:
                worst = max(worst, await sql_behind(settings))
                await asyncio.sleep(0.5)

        sampling = asyncio.create_task(sample())
        await publish(settings, bootstrap, messages)
        folded = await wait_folded(settings, len(messages) + 3)
        while await sql_behind(settings) > 0:
            await asyncio.sleep(0.1)
        written = time.perf_counter()
        sampling.cancel()
        print(
            f"  {len(messages):,} events at the pipeline's full rate: API read model in "
            f"{folded - started:.1f} s ({len(messages) / (folded - started):,.0f}/s); SQL "
            f"written {written - folded:.1f} s after it; at most {worst:,} records behind"
        )
    finally:
        for process in (writer, worker, api):
            stop_process(process)
    store = DuckStore(duckdb_path(settings.data_dir))
    check(store, len(messages) + 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--lag-events", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        base = Path(tmp)
        settings = settings_for(broker.bootstrap, base, "load")
        events = asyncio.run(load(settings, args.requests))
        print(f"{args.requests:,} requests = {events:,} events in ledger.events")
        duck = DuckStore(duckdb_path(settings.data_dir))
        into(settings, duck, events, "DuckDB")
        with throwaway_cluster() as url:
            pg = PostgresStore(fresh_database(url, "bench"))
            try:
                into(settings.model_copy(update={"sql_url": pg.url}), pg, events, "PostgreSQL")
                queries(duck, "DuckDB")
                queries(pg, "PostgreSQL")
            finally:
                pg.close()
        if args.lag_events:
            lagging = settings_for(broker.bootstrap, base, "lag")
            asyncio.run(lag(lagging, args.lag_events, base / "lag.log"))


if __name__ == "__main__":
    main()
