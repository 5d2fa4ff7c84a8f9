"""Queries at scale (issue 11): the API's routes with 10 concurrent clients, and the peak
memory of each process, on embedded Tansu.

    python -m bench.queries [--requests 100000] [--clients 10] [--store memory|rocksdb]
                            [--regional]

`--requests` requests of generated history (about 3.1 events each, 5 k customers at
100 k) go through the whole ledger as `ledger up` runs it (a validator process, a
projector process, the API); then each route is asked by `--clients` clients at once and
its latency percentiles reported. The read model is checked against the pure fold of the
log first (the decision metrics and the pipeline's total), never only timed. Peak RSS is
each process's VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.pipeline import wait_folded
from events import from_mapping
from events.codec import subject_of
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.entrypoints.history import generate
from ledger.entrypoints.runner import start_api, start_stages, stop_process
from ledger.rules.policy import Policy
from projections import fold
from projections.views import metrics, pipeline

UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
PAST = "2026-05-31T09:00:00Z"  # a month before the history's end, for `as_of`


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as response:
        await response.read()
        assert response.status == 200, (url, response.status)
    return time.perf_counter() - started


async def load(api: str, path: str, clients: int, each: int) -> list[float]:
    """`each` requests from each of `clients` clients at once, timed. Each client's
    connection is opened first by one untimed `/health` (all at once), as a client that
    keeps its connection finds it: otherwise the first request of every client is a TCP
    connect among ten (2.3-3.8 ms for `/health`, against 0.6 ms after), and 10 of 500
    requests set the p99 of a route that answers in a millisecond. Not the route itself:
    a walk as of a past instant is shared by the requests asking it, so a warm-up would
    leave the timed ones its result to take (~10 ms) rather than the walk (~2 s)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(timed(session, api + "/health") for _ in range(clients)))

        async def client() -> list[float]:
            return [await timed(session, api + path) for _ in range(each)]

        results = await asyncio.gather(*(client() for _ in range(clients)))
    return [t for r in results for t in r]


async def probe_health(url: str) -> None:
    """/health every 0.1 s until SIGTERM, then its answer times and how many were not 200
    (a starved event loop makes the API's broker check time out: /health says 503) as
    JSON on standard output. A process of its own: in the process whose event loop reads
    the answers of the load, it timed that loop as much as the API's."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    times: list[float] = []
    not_ok = 0
    async with aiohttp.ClientSession() as session:
        print("probing", flush=True)
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                not_ok += response.status != 200
            times.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    sys.stdout.write(orjson.dumps([times, not_ok]).decode() + "\n")


class Probe:
    """`probe_health` in another process, for as long as the `async with` lasts."""

    def __init__(self, api: str) -> None:
        self.url = api + "/health"
        self.times: list[float] = []
        self.not_ok = 0

    async def __aenter__(self) -> Probe:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.queries", "--probe", self.url,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        await self.process.stdout.readline()  # probing
        return self

    async def __aexit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        out, _unused = await self.process.communicate()
        self.times, self.not_ok = orjson.loads(out)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    settings: Settings,
    requests: int,
    clients: int,
    only: str | None = None,
    regional: bool = False,
) -> dict[str, Any]:
    """The figures (`measure`'s): each route's latencies with the /health probe's
    meanwhile, each process's peak RSS, and whether the read model equals the fold."""
    assert settings.broker is not None
    result: dict[str, Any] = {"routes": {}, "rss": {}}
    events = generate(requests=requests, until=UNTIL, seed=42, regional=regional)
    print(f"{requests:,} requests = {len(events):,} events")
    gc_reports = settings.data_dir.parent / "gc"  # each process's collector, at its exit
    os.environ["LEDGER_GC_REPORT"] = str(gc_reports)
    try:
        validator, projector = start_stages(settings, settings.broker)
        api = start_api(settings, settings.broker)
    finally:
        del os.environ["LEDGER_GC_REPORT"]
    try:
        started = time.perf_counter()
        async with Publisher(settings, settings.broker) as publisher:
            messages = [(subject_of(from_mapping(e)).encode(), orjson.dumps(e)) for e in events]
            await publisher.send_raw(publisher.topics.inbox, messages)
        await wait_folded(settings, len(events), 3600)
        result["folded_s"] = time.perf_counter() - started
        print(f"  folded end to end in {result['folded_s']:.1f} s")
        folded = fold(from_mapping(e) for e in events)
        policy = Policy()
        base = settings.api_url
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/metrics/decisions") as r:
                got = orjson.loads(await r.read())
            async with session.get(base + "/pipeline?limit=1") as r:
                total = orjson.loads(await r.read())["total"]
        want = orjson.loads(orjson.dumps(metrics(folded.requests.values(), UNTIL, policy)))
        result["fold_ok"] = got == want and total == len(pipeline(folded.requests.values(),
                                                                  UNTIL, policy))  # fmt: skip
        result["requests"], result["events"] = requests, len(events)
        assert result["fold_ok"], "the read model's metrics or pipeline differ from the fold's"
        print(f"  read model = fold of the log (metrics equal; pipeline total {total:,})")
        some_request = sorted(folded.requests)[len(folded.requests) // 2]
        some_customer = sorted(folded.customers)[0]
        # the harness's own objects out of its collector's walks while it times the routes
        # (as `bench.run` does): with the generated events and their fold alive, ~2.7 M
        # objects at 100 k requests, one full collection took 2.3 s, a pause inside
        # whichever timed request it met
        del folded, events, messages
        gc.collect()
        gc.freeze()
        routes: list[tuple[str, int]] = [
            ("/health", 50),
            (f"/requests/{some_request}", 50),
            (f"/customers/{some_customer}", 50),
            ("/pipeline?limit=100", 2),
            ("/overdue?limit=100", 2),
            ("/customers/abuse?limit=100", 5),
            ("/metrics/decisions", 2),
            ("/pipeline", 3),
            # as of a past instant: the index is of the newest states, so these refold
            (f"/pipeline?limit=100&as_of={PAST}", 1),
            (f"/overdue?limit=100&as_of={PAST}", 1),
            (f"/metrics/decisions?as_of={PAST}", 1),
        ]
        print(f"  {clients} clients at once (and a probe of /health every 0.1 s meanwhile):")
        for path, each in routes:
            if only is not None and path != only:
                continue
            async with Probe(base) as probe:
                times = await load(base, path, clients, each)
            probed, not_ok = probe.times, probe.not_ok
            result["routes"][path] = {
                "p50": statistics.median(times), "p99": percentile(times, 0.99),
                "n": len(times), "health_p50": statistics.median(probed),
                "health_max": max(probed), "health_times": probed, "not_ok": not_ok,
            }  # fmt: skip
            print(
                f"    {path:<34} p50 {statistics.median(times) * 1000:9.1f} ms"
                f"  p99 {percentile(times, 0.99) * 1000:9.1f} ms  ({len(times)} requests);"
                f" /health meanwhile: p50 {statistics.median(probed) * 1000:.0f} ms,"
                f" slowest {max(probed) * 1000:.0f} ms of {len(probed)}, {not_ok} not 200"
            )
        for name, process in (("validator", validator), ("projector", projector), ("API", api)):
            result["rss"][name] = peak_rss_mb(process.pid)
            print(f"  peak RSS {name:<10} {result['rss'][name]:8.0f} MB")
    finally:
        gc.unfreeze()
        for process in (validator, projector, api):
            stop_process(process)
    result["gc"] = gc_pauses(gc_reports, {"validator": validator.pid,
                                          "projector": projector.pid, "API": api.pid})  # fmt: skip
    for name, pauses in result["gc"].items():
        print(f"  collector {name:<10} " + "; ".join(
            f"{g}: {p['collections']} in all, the longest {p['longest_ms']:.1f} ms"
            for g, p in pauses.items()
        ))  # fmt: skip
    return result


def gc_pauses(directory: Path, pids: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each process's collector pauses by generation (`LEDGER_GC_REPORT`), by name."""
    out: dict[str, dict[str, Any]] = {}
    for name, pid in pids.items():
        found = list(directory.glob(f"*-{pid}.json"))
        if found:
            report = orjson.loads(found[0].read_bytes())
            out[name] = {k: v for k, v in report.items() if k.startswith("generation")}
    return out


def measure(
    requests: int = 100_000,
    clients: int = 10,
    only: str | None = None,
    regional: bool = False,
    store: str = "memory",
) -> dict[str, Any]:
    """`run` on a broker of its own (embedded Tansu in a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        port = free_port()
        settings = Settings(
            broker=broker.bootstrap,
            topic_prefix=f"bq{uuid.uuid4().hex[:6]}.",
            data_dir=Path(tmp) / "data",
            session_timeout_s=6,
            api_port=port,
            api_url=f"http://127.0.0.1:{port}",
            clock=UNTIL.isoformat(),
            store=store,
        )
        result = asyncio.run(run(settings, requests, clients, only, regional))
    result["store"] = store
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--only", help="ask only this route (one of the list, as written)")
    parser.add_argument(
        "--regional", action="store_true", help="each event in its CRM's own offset"
    )
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # a URL: be `probe_health`
    args = parser.parse_args()
    if args.probe:
        asyncio.run(probe_health(args.probe))
        return
    measure(args.requests, args.clients, args.only, args.regional, args.store)


if __name__ == "__main__":
    main()
