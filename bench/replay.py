"""Replay and cold start (issue 11, targets 2 and 5), on embedded Tansu.

    python -m bench.replay [--requests 100000] [--store memory|rocksdb] [--projectors 1]
                           [--regional]

`--requests` requests of generated history are written straight to `ledger.events` (as
the validator records them: keyed by subject), so nothing but the projection works:

1. **replay**: a projector with no state and the API start; the clock stops when the API's
   read model holds every event (a new or wiped projection rebuilt from the ledger);
2. **a second API**: started beside the first; the clock stops when it is ready (its
   `/health` holds every event);
3. **a worker restarted**: the projector is killed with SIGKILL and started again, then
   stopped with SIGTERM and started again; each clock stops when an event written after
   the restart has reached the read model (recovery from the changelog, or from RocksDB,
   and the group's join included: after a SIGKILL the broker first waits out the dead
   member's session timeout).

The read model is checked against the pure fold (the decision metrics) after each step.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.pipeline import cpu_s, history, more_projectors, wait_folded
from bench.pipeline import folded as events_folded
from bench.queries import UNTIL, peak_rss_mb
from events import from_mapping
from events.codec import subject_of
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_ledger_topics
from ledger.adapters.publisher import Publisher
from ledger.entrypoints.history import generate
from ledger.entrypoints.runner import start_api, start_worker, stop_process
from ledger.rules.policy import Policy
from projections import fold
from projections.views import metrics


async def same_metrics(settings: Settings, want: object) -> bool:
    url = settings.api_url + "/metrics/decisions"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return bool(orjson.loads(await r.read()) == want)


async def run(
    settings: Settings,
    requests: int,
    projectors: int = 1,
    regional: bool = False,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """The figures (`measure`'s): the replay's time, CPU (the broker's too, when its
    process is given) and peak RSS, whether its read model equals the fold, a second
    API's time to ready, and each restart's time."""
    assert settings.broker is not None
    result: dict[str, Any] = {"requests": requests, "projectors": projectors}
    raw = generate(requests=requests, until=UNTIL, seed=42, regional=regional)
    records = [(subject_of(from_mapping(e)).encode(), orjson.dumps(e)) for e in raw]
    n = len(records)
    want = orjson.loads(orjson.dumps(metrics(fold(from_mapping(e) for e in raw).requests.values(),
                                             UNTIL, Policy())))  # fmt: skip
    topics = await ensure_ledger_topics(settings, settings.broker)
    async with Publisher(settings, settings.broker) as publisher:
        await publisher.send_raw(topics.events, records)
    print(f"{requests:,} requests = {n:,} events in ledger.events; store {settings.store}")

    projector_settings = settings.model_copy(update={"worker_role": "projector"})
    broker_before = 0.0 if broker_pid is None else cpu_s(broker_pid)
    started = time.perf_counter()
    projector = start_worker(projector_settings, settings.broker)
    others = more_projectors(settings, settings.broker, projectors - 1)
    api = start_api(settings, settings.broker)
    second = None
    try:
        await wait_folded(settings, n, 3600)
        took = time.perf_counter() - started
        result.update(events=n, replay_s=took, cpu_projectors=[cpu_s(p.pid) for p in
                      (projector, *others)], cpu_api=cpu_s(api.pid))  # fmt: skip
        each = "+".join(f"{cpu_s(p.pid):.1f}" for p in (projector, *others))
        cpu = f"CPU projector {each} s, API {cpu_s(api.pid):.1f} s"
        if broker_pid is not None:
            result["cpu_broker"] = cpu_s(broker_pid) - broker_before
            cpu += f", broker {result['cpu_broker']:.1f} s"
        asked = time.perf_counter()
        ok = await same_metrics(settings, want)
        first = time.perf_counter() - asked
        result.update(fold_ok=ok, rss_projector=max(peak_rss_mb(p.pid) for p in
                      (projector, *others)), rss_api=peak_rss_mb(api.pid))  # fmt: skip
        print(f"  replay to the read model: {took:.1f} s ({n / took:,.0f} events/s; {cpu});"
              f" metrics {'=' if ok else '≠'} the fold's (the first /metrics/decisions took "
              f"{first * 1000:,.0f} ms); peak RSS projector "
              f"{peak_rss_mb(projector.pid):,.0f} MB, API "
              f"{peak_rss_mb(api.pid):,.0f} MB")  # fmt: skip

        port = free_port()
        other = settings.model_copy(update={"api_port": port,
                                            "api_url": f"http://127.0.0.1:{port}"})  # fmt: skip
        started = time.perf_counter()
        second = start_api(other, settings.broker)
        await wait_folded(other, n, 3600)
        result.update(second_api_s=time.perf_counter() - started,
                      rss_second_api=peak_rss_mb(second.pid))  # fmt: skip
        print(f"  a second API ready (every event folded): {time.perf_counter() - started:.1f} s;"
              f" its peak RSS {peak_rss_mb(second.pid):,.0f} MB")  # fmt: skip

        for how, sig in (("SIGKILLed", signal.SIGKILL), ("stopped (SIGTERM)", signal.SIGTERM)):
            projector.send_signal(sig)
            projector.wait()
            started = time.perf_counter()
            projector = start_worker(projector_settings, settings.broker)
            late = [(k, v) for k, v in history(3, f"late{uuid.uuid4().hex[:4]}")]
            async with Publisher(settings, settings.broker) as publisher:
                await publisher.send_raw(topics.events, late)
            n += len(late)
            await wait_folded(settings, n, 600)
            took = time.perf_counter() - started
            result["restart_kill_s" if sig == signal.SIGKILL else "restart_term_s"] = took
            print(
                f"  projector {how} and restarted: new events in the read model after "
                f"{took:.1f} s (API holds {await asyncio.to_thread(events_folded, settings):,})"
            )
    finally:
        for process in (projector, *others, api, second):
            if process is not None:
                stop_process(process)
    return result


def measure(
    requests: int = 100_000, store: str = "rocksdb", projectors: int = 1, regional: bool = False
) -> dict[str, Any]:
    """`run` on a broker of its own (embedded Tansu in a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        port = free_port()
        settings = Settings(
            broker=broker.bootstrap,
            topic_prefix=f"br{uuid.uuid4().hex[:6]}.",
            data_dir=Path(tmp) / "data",
            session_timeout_s=6,
            api_port=port,
            api_url=f"http://127.0.0.1:{port}",
            clock=UNTIL.isoformat(),
            store=store,
        )
        result = asyncio.run(run(settings, requests, projectors, regional, broker.pid))
    result["store"] = store
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    parser.add_argument("--projectors", type=int, default=1, help="projector processes")
    parser.add_argument(
        "--regional", action="store_true", help="each event in its CRM's own offset"
    )
    args = parser.parse_args()
    measure(args.requests, args.store, args.projectors, args.regional)


if __name__ == "__main__":
    main()
