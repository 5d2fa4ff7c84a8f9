"""Alert latency (issue 11, target 6): from the instant a request crosses its decision
deadline to the webhook's POST, on embedded Tansu with the wall clock.

    python -m bench.alerts [--crossings 6] [--interval 5] [--load 60000]

`--crossings` requests are taken in whose decision deadlines (10 calendar days from first
contact) fall 10 to 10 + 3·k seconds from now; a validator and a projector (whose
dispatcher POSTs the alerts) run as `ledger up` runs them, the alert timer every
`--interval` seconds; `--load` other events are published meanwhile, so the crossings
are found while the stream is busy. Reported: each crossing's latency against the
target, one interval + 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.pipeline import history, wait_folded
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.entrypoints.runner import start_api, start_stages, stop_process


class Receiver:
    """A webhook that notes when each alert first arrived (wall clock)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.arrived: dict[str, tuple[float, dict[str, Any]]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.arrived.setdefault(body.get("alert_id", ""), (time.time(), body))
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


def intake(request_id: str, first_contact: datetime) -> tuple[bytes, bytes]:
    now = datetime.now(UTC)
    payload = {
        "schema_version": 1, "source": "bench", "event_id": str(uuid.uuid4()),
        "type": "intake", "occurred_at": now.isoformat(),
        "data": {"request_id": request_id, "kind": "vendor_support", "title": "t",
                 "owner": "o", "first_contact_at": first_contact.isoformat()},
    }  # fmt: skip
    return request_id.encode(), orjson.dumps(payload)


async def run(settings: Settings, receiver: Receiver, crossings: int, load: int) -> dict[str, Any]:
    """Each crossing's latency in seconds (None: no alert within the wait), against the
    bound (one interval + 1 s)."""
    assert settings.broker is not None
    latencies: list[float | None] = []
    validator, projector = start_stages(settings, settings.broker)
    api = start_api(settings, settings.broker)
    try:
        async with Publisher(settings, settings.broker) as publisher:
            warm = history(3, "warm")
            await publisher.send_raw(publisher.topics.inbox, warm)
            await wait_folded(settings, len(warm), 120)
            now = datetime.now(UTC)
            due: dict[str, datetime] = {}
            for k in range(crossings):
                crossing = now + timedelta(seconds=10 + 3 * k)
                request_id = f"LAT-{uuid.uuid4().hex[:8]}-{k}"
                due[request_id] = crossing
                await publisher.send_raw(
                    publisher.topics.inbox, [intake(request_id, crossing - timedelta(days=10))]
                )
            if load:
                await publisher.send_raw(publisher.topics.inbox, history(load, "load"))
        deadline = time.time() + 10 + 3 * crossings + 3 * settings.alert_interval + 30
        found: dict[str, float] = {}
        while len(found) < crossings and time.time() < deadline:
            for at, body in receiver.arrived.values():
                if body.get("kind") == "decision_overdue" and body.get("subject_id") in due:
                    found[body["subject_id"]] = at
            await asyncio.sleep(0.1)
        bound = settings.alert_interval + 1
        for request_id, crossing in sorted(due.items(), key=lambda kv: kv[1]):
            posted = found.get(request_id)
            if posted is None:
                latencies.append(None)
                print(f"  {request_id}: no alert within the wait")
                continue
            latency = posted - crossing.timestamp()
            latencies.append(latency)
            verdict = "within" if latency <= bound else "OVER"
            print(
                f"  {request_id}: POSTed {latency:5.2f} s after the crossing ({verdict} {bound} s)"
            )
    finally:
        for process in (validator, projector, api):
            stop_process(process)
    return {"latencies": latencies, "bound": settings.alert_interval + 1,
            "interval": settings.alert_interval, "load": load}  # fmt: skip


async def main_async(args: argparse.Namespace, tmp: Path, bootstrap: str) -> dict[str, Any]:
    receiver = Receiver()
    runner = await receiver.start()
    port = free_port()
    settings = Settings(
        broker=bootstrap,
        topic_prefix=f"ba{uuid.uuid4().hex[:6]}.",
        data_dir=tmp / "data",
        session_timeout_s=6,
        api_port=port,
        api_url=f"http://127.0.0.1:{port}",
        alert_interval=args.interval,
        alert_webhooks=receiver.url,
    )
    print(f"{args.crossings} crossings, alert interval {args.interval} s, {args.load:,} events "
          "of load meanwhile")  # fmt: skip
    try:
        return await run(settings, receiver, args.crossings, args.load)
    finally:
        await runner.cleanup()


def measure(crossings: int = 6, interval: float = 5.0, load: int = 60_000) -> dict[str, Any]:
    """`run` on a broker of its own (embedded Tansu in a temporary directory)."""
    args = argparse.Namespace(crossings=crossings, interval=interval, load=load)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        return asyncio.run(main_async(args, Path(tmp), broker.bootstrap))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crossings", type=int, default=6)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--load", type=int, default=60_000)
    args = parser.parse_args()
    measure(args.crossings, args.interval, args.load)


if __name__ == "__main__":
    main()
