"""End-to-end validator throughput: inbox -> validator -> ledger.events, on embedded Tansu.

    python -m bench.pipeline [--events N]

Publishes N valid events (intake, score, decision per request) to the inbox first, then
starts the worker and times how long until every one of them is accounted for in
ledger.events + ledger.rejected (counted record by record, not from end offsets).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from ledger.broker import EmbeddedBroker
from ledger.config import Settings
from ledger.publisher import Publisher
from ledger.reader import collect
from ledger.runner import start_worker, stop_process
from ledger.topics import Topics


def history(events: int) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for i in range(events // 3 + 1):
        request = f"B{i}"
        base = {"schema_version": 1, "source": "bench", "occurred_at": "2026-03-02T09:00:00Z"}
        for kind, data in (
            ("intake", {"kind": "vendor_support", "title": "t", "owner": "o"}),
            ("score", {"fit": 4, "advantage": 4, "integrity": 4, "readiness": 4}),
            ("decision", {"outcome": "decline", "rationale": "r"}),
        ):
            payload = {
                **base,
                "event_id": str(uuid.uuid4()),
                "type": kind,
                "data": {"request_id": request, **data},
            }
            out.append((request.encode(), orjson.dumps(payload)))
    return out[:events]


async def run(events: int, bootstrap: str, settings: Settings) -> None:
    messages = history(events)
    started = time.perf_counter()
    async with Publisher(settings, bootstrap) as publisher:
        await publisher.send_raw(publisher.topics.inbox, messages)
    published = time.perf_counter() - started
    print(
        f"published {len(messages)} events in {published:.1f}s ({len(messages) / published:,.0f}/s)"
    )
    worker = start_worker(settings, bootstrap)
    try:
        topics = Topics(settings.topic_prefix)
        started = time.perf_counter()
        seen = await collect(
            settings,
            bootstrap,
            [topics.events, topics.rejected],
            lambda c: c.total() >= len(messages),
            timeout=1800,
        )
        elapsed = time.perf_counter() - started
    finally:
        stop_process(worker)
    print(
        f"validated {seen.total()} events in {elapsed:.1f}s incl. worker start-up "
        f"({seen.total() / elapsed:,.0f} events/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        settings = Settings(
            broker=broker.bootstrap, topic_prefix="bench.", data_dir=Path(tmp) / "data"
        )
        asyncio.run(run(args.events, broker.bootstrap, settings))


if __name__ == "__main__":
    main()
