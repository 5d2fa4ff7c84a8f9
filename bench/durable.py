"""The embedded ledger's durable copy: what the journal costs a publish, how fast the
mirror keeps up, and how long `ledger up` takes to come back with N events on disk.

    python -m bench.durable [--events N]

1. journal: the same events published to the embedded broker with and without the
   journal (one fsynced SQLite transaction per chunk of up to 10,000 events);
2. restart: `ledger up` on a fresh data directory, N events published and folded, stopped
   with SIGTERM, then `ledger up` again; timed until the broker is restored and the
   processes started, and until the API has folded all N events again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pipeline import history, wait_folded
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.durable import DurableStore
from ledger.adapters.publisher import Publisher


async def journal_cost(events: int, root: Path) -> None:
    with EmbeddedBroker(root / "tansu.log") as broker:
        for journaled in (False, True, False, True):
            data = root / f"journal-{journaled}-{time.monotonic_ns()}"
            settings = Settings(broker=broker.bootstrap, data_dir=data, topic_prefix=data.name)
            if journaled:
                DurableStore.in_dir(data).set_meta("bootstrap", broker.bootstrap)
            messages = history(events, data.name)
            async with Publisher(settings, broker.bootstrap) as publisher:
                assert publisher.journaled == journaled
                started = time.perf_counter()
                journal = publisher._journal  # noqa: SLF001 - the path publish() takes
                for at in range(0, len(messages), 100):  # requests of 100, as an API sees
                    await publisher.send_raw(
                        publisher.topics.inbox, messages[at : at + 100], journal=journal
                    )
                took = time.perf_counter() - started
            label = "journaled" if journaled else "not journaled"
            print(
                f"  publish {events:,} events in sends of 100, {label:<14} {took:6.2f} s "
                f"{took / events * 1e6:7.1f} us/event"
            )


async def restart(events: int, root: Path, interval: float) -> None:
    data = root / "ledger"
    port, api = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
        "LEDGER_DATA_DIR": str(data),
        "LEDGER_EMBEDDED_PORT": str(port),
        "LEDGER_API_PORT": str(api),
        "LEDGER_API_URL": f"http://127.0.0.1:{api}",
        "LEDGER_CLOCK": "2026-06-30T09:00:00+00:00",
        "LEDGER_SESSION_TIMEOUT_S": "6",
        "COLUMNS": "200",
        "LEDGER_MIRROR_INTERVAL_S": str(interval),  # one line per message in the logs
    }
    settings = Settings(broker=f"127.0.0.1:{port}", api_url=env["LEDGER_API_URL"])
    ledger = str(Path(sys.executable).with_name("ledger"))

    def up(log: str) -> subprocess.Popen[bytes]:
        out = (root / log).open("wb")
        return subprocess.Popen([ledger, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603

    first = up("up-1.log")
    await wait_folded(settings, 0, timeout=60)
    started = time.perf_counter()
    async with Publisher(settings, f"127.0.0.1:{port}") as publisher:
        await publisher.send_raw(publisher.topics.inbox, history(events, "r"))
    at = await wait_folded(settings, events)
    print(f"  {events:,} events folded (first run)         {at - started:6.2f} s")
    first.send_signal(signal.SIGTERM)
    first.wait(120)
    size = (data / "ledger.db").stat().st_size
    store = DurableStore.in_dir(data)
    records = store.count()
    store.close()
    print(f"  copy on disk: {records:,} records, {size / 1e6:,.1f} MB")

    started = time.perf_counter()
    second = up("up-2.log")
    while not (data / "running.json").exists():
        await asyncio.sleep(0.05)
    restored = time.perf_counter()
    at = await wait_folded(settings, events)
    print(f"  restored and processes started           {restored - started:6.2f} s")
    print(f"  all {events:,} events in the API again      {at - started:6.2f} s")
    print("  " + (root / "up-2.log").read_text().split("\n")[1].strip())
    second.send_signal(signal.SIGTERM)
    second.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--journal-events", type=int, default=20_000)
    parser.add_argument("--mirror-interval", type=float, default=Settings().mirror_interval_s)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("journal cost")
        asyncio.run(journal_cost(args.journal_events, root))
        print(f"restart with {args.events:,} events, mirror every {args.mirror_interval} s")
        asyncio.run(restart(args.events, root, args.mirror_interval))


if __name__ == "__main__":
    main()
