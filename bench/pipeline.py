"""End-to-end throughput: inbox -> validator -> ledger.events -> every projection folded,
on embedded Tansu.

    python -m bench.pipeline [--events N] [--mode live|backlog|both] [--workers K]
                             [--layout split|single]

split:   what `ledger up` runs: the validator and the projector in two processes (K of each)
single:  K `python -m workers` processes each running both stages (the layout before)

live:    the worker and the API are up and warm (a warm-up event went all the way through);
         the clock starts when publishing starts and stops when the API's read model has
         folded every event (`/health` `events_folded`), so publishing, validation,
         projection and the read model all overlap as they would in production.
backlog: N events wait in the inbox; the clock starts when the worker process starts
         (group joins and start-up included) and stops at the same point.

Also reported: when the validator had judged every event (counted on ledger.events +
ledger.rejected record by record, never from end offsets).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import orjson

from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.adapters.reader import collect
from ledger.adapters.topics import Topics
from ledger.entrypoints.query import QueryError, fetch
from ledger.entrypoints.runner import start_api, start_stages, start_worker, stop_process


def history(events: int, tag: str) -> list[tuple[bytes, bytes]]:
    """Intake, score and decision per request, a minute apart: every event is valid and
    folds in the order it comes. (At one instant, a decision whose random event id sorted
    before its score's folded before it: half the requests were refolded and written
    whole, which a CRM's clock does not do.)"""
    out: list[tuple[bytes, bytes]] = []
    for i in range(events // 3 + 1):
        request = f"B{tag}{i}"
        base = {"schema_version": 1, "source": "bench"}
        steps: tuple[tuple[str, dict[str, Any]], ...] = (
            ("intake", {"kind": "vendor_support", "title": "t", "owner": "o"}),
            ("score", {"fit": 4, "advantage": 4, "integrity": 4, "readiness": 4}),
            ("decision", {"outcome": "decline", "rationale": "r"}),
        )
        for minute, (kind, data) in enumerate(steps):
            payload = {
                **base,
                "occurred_at": f"2026-03-02T09:0{minute}:00Z",
                "event_id": str(uuid.uuid4()),
                "type": kind,
                "data": {"request_id": request, **data},
            }
            out.append((request.encode(), orjson.dumps(payload)))
    return out[:events]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def folded(settings: Settings) -> int:
    try:
        body = fetch(settings.api_url, "/health", {}, settings.api_token, False)
    except (QueryError, urllib.error.URLError, OSError):
        return -1
    return int(orjson.loads(body)["events_folded"])


async def wait_folded(settings: Settings, target: int, timeout: float = 1800) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if await asyncio.to_thread(folded, settings) >= target:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the read model did not fold {target} events in {timeout:.0f}s")


async def judged(settings: Settings, bootstrap: str, target: int) -> float:
    topics = Topics(settings.topic_prefix)
    await collect(
        settings, bootstrap, [topics.events, topics.rejected],
        lambda c: c.total() >= target, timeout=1800,
    )  # fmt: skip
    return time.perf_counter()


async def publish(settings: Settings, bootstrap: str, messages: list[tuple[bytes, bytes]]) -> float:
    async with Publisher(settings, bootstrap) as publisher:
        await publisher.send_raw(publisher.topics.inbox, messages)
    return time.perf_counter()


def report(label: str, n: int, started: float, at: float) -> None:
    took = at - started
    print(f"  {label:<34} {took:6.2f} s  {n / took:>9,.0f} events/s")


def more_projectors(settings: Settings, bootstrap: str, n: int) -> list[Any]:
    """`n` more projector processes in the projector's group (each with its own data
    directory), each taking its share of ledger.events' partitions."""
    projector = settings.model_copy(update={"worker_role": "projector"})
    return [
        start_worker(projector.model_copy(update={
            "data_dir": settings.data_dir / f"projector-{i}"}), bootstrap)
        for i in range(1, n + 1)
    ]  # fmt: skip


def start_workers(
    settings: Settings, bootstrap: str, log: Path, workers: int, layout: str
) -> list[Any]:
    if layout == "single":
        return [start_worker(settings, bootstrap, log) for _ in range(workers)]
    return [p for _ in range(workers) for p in start_stages(settings, bootstrap, (log, log))]


async def live(
    settings: Settings, bootstrap: str, events: int, log: Path, workers: int, layout: str
) -> None:
    started_workers = start_workers(settings, bootstrap, log, workers, layout)
    api = start_api(settings, bootstrap, log)
    try:
        await publish(settings, bootstrap, history(3, "warm"))
        await wait_folded(settings, 3, 120)
        messages = history(events, "live")
        print(f"live: {len(messages):,} events into a warm worker")
        processes = {f"worker {n}": w for n, w in enumerate(started_workers)} | {"API": api}
        warm = {name: cpu_s(p.pid) for name, p in processes.items()}
        started = time.perf_counter()
        judging = asyncio.create_task(judged(settings, bootstrap, len(messages) + 3))
        published = await publish(settings, bootstrap, messages)
        done = await wait_folded(settings, len(messages) + 3)
        report("published", len(messages), started, published)
        report("judged (events + rejected)", len(messages), started, await judging)
        report("folded by every projection + API", len(messages), started, done)
        # CPU per event of each process (the warm-up left out): steadier than the wall
        # clock on a shared machine, whose speed moves within the hour
        used = {name: cpu_s(p.pid) - warm[name] for name, p in processes.items()}
        print("  CPU per event: " + ", ".join(
            f"{name} {1e6 * cpu / len(messages):,.0f} us" for name, cpu in used.items()
        ))  # fmt: skip
    finally:
        for worker in started_workers:
            stop_process(worker)
        stop_process(api)


async def backlog(
    settings: Settings, bootstrap: str, events: int, log: Path, workers: int, layout: str
) -> None:
    messages = history(events, "backlog")
    print(f"backlog: {len(messages):,} events waiting, then the worker starts")
    api = start_api(settings, bootstrap, log)
    await publish(settings, bootstrap, messages)
    started = time.perf_counter()
    started_workers = start_workers(settings, bootstrap, log, workers, layout)
    try:
        judging = asyncio.create_task(judged(settings, bootstrap, len(messages)))
        done = await wait_folded(settings, len(messages))
        report("judged (incl. start-up)", len(messages), started, await judging)
        report("folded (incl. start-up)", len(messages), started, done)
    finally:
        for worker in started_workers:
            stop_process(worker)
        stop_process(api)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--mode", choices=("live", "backlog", "both"), default="both")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--layout", choices=("split", "single"), default="split")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        for mode in ("live", "backlog") if args.mode == "both" else (args.mode,):
            port = free_port()
            settings = Settings(
                broker=broker.bootstrap,
                topic_prefix=f"bench{mode}{uuid.uuid4().hex[:6]}.",
                data_dir=Path(tmp) / mode,
                session_timeout_s=6,
                api_port=port,
                api_url=f"http://127.0.0.1:{port}",
            )
            run = live if mode == "live" else backlog
            log = Path(tmp) / f"{mode}.log"
            asyncio.run(
                run(settings, broker.bootstrap, args.events, log, args.workers, args.layout)
            )


if __name__ == "__main__":
    main()
