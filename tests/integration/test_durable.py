"""The embedded ledger survives restarts: `ledger up` as a user runs it, stopped with
Ctrl-C and with SIGKILL of its processes, then started again on the same data directory.

Every check is against the pure fold of what was published: the views, each event once
in `ledger.events`, the alerts as they were, and the validator still knowing old ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from events import from_mapping
from ledger.adapters.broker import free_port
from ledger.adapters.config import Settings
from ledger.adapters.reader import collect
from ledger.adapters.topics import Topics
from projections import fold
from tests.integration.test_alerting import Receiver
from tests.integration.test_api import (
    assert_lists_match,
    get_json,
    known_history,
    wait_folded,
)

pytestmark = pytest.mark.integration
LEDGER = str(Path(sys.executable).with_name("ledger"))


class Ledger:
    """`ledger up` on one data directory and fixed ports, as a user would run it."""

    def __init__(self, tmp_path: Path, webhook: str = "") -> None:
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.port = free_port()
        api = free_port()
        self.settings = Settings(
            broker=f"127.0.0.1:{self.port}",  # for this test's own clients
            data_dir=self.data,
            api_port=api,
            api_url=f"http://127.0.0.1:{api}",
            clock="2026-06-30T09:00:00+00:00",
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
            "LEDGER_DATA_DIR": str(self.data),
            "LEDGER_EMBEDDED_PORT": str(self.port),
            "LEDGER_API_PORT": str(api),
            "LEDGER_API_URL": self.settings.api_url,
            "LEDGER_CLOCK": str(self.settings.clock),
            "LEDGER_SESSION_TIMEOUT_S": "6",
            "LEDGER_ALERT_INTERVAL": "1",
            "LEDGER_ALERT_WEBHOOKS": webhook,
            "LEDGER_ALERT_RETRY_BASE_S": "0.5",
            "LEDGER_ALERT_RETRY_CAP_S": "2",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def up(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        log = (self.tmp / f"up-{self.runs}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603
            [LEDGER, "up"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's job
            # SIGINT ignored, as a background job of a non-interactive shell inherits it
            # (CI): Ctrl-C to the group must still stop the ledger whole, exit code 0
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
        )
        return self.process

    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.data / "running.json").read_text())
        return pids

    async def started(self) -> dict[str, int]:
        assert self.process is not None
        for _ in range(300):
            try:
                pids = self.pids()
            except (OSError, ValueError):
                pids = {}
            if pids.get("runner") == self.process.pid:  # not what a killed one left
                return pids
            assert self.process is not None and self.process.poll() is None, self.logs()
            await asyncio.sleep(0.1)
        raise AssertionError(self.logs())

    def publish(self, events: list[dict[str, Any]], name: str) -> None:
        path = self.tmp / f"{name}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        env = {**self.env, "LEDGER_BROKER": self.settings.broker or ""}
        done = subprocess.run(  # noqa: S603
            [LEDGER, "publish", str(path)], env=env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def kill(self, *names: str) -> None:
        pids = self.pids()
        for name in names:
            os.kill(pids[name], signal.SIGKILL)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        if (self.data / "running.json").exists():  # what a killed `ledger up` left running
            for name, pid in self.pids().items():
                if name != "runner":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        out = [p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("up-*.log"))]
        return "\n".join(out)

    def journaled(self) -> int:
        with sqlite3.connect(self.data / "ledger.db") as db:
            (n,) = db.execute("SELECT COUNT(*) FROM journal").fetchone()
        return int(n)


@pytest.fixture
async def receiver() -> Any:
    receiver = Receiver()  # not listening until a test starts it
    yield receiver
    await receiver.stop()


@pytest.fixture
def ledger(tmp_path: Path, receiver: Receiver) -> Any:
    ledger = Ledger(tmp_path, receiver.url)
    yield ledger
    ledger.stop()


async def wait_delivered(receiver: Receiver, alerts: list[Any]) -> None:
    wanted = {a["alert_id"] for a in alerts}
    for _ in range(120):
        if set(receiver.unique()) >= wanted:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(wanted - set(receiver.unique()))} alerts never POSTed")


async def ledger_events(ledger: Ledger, expected: int) -> Counter[str]:
    """Every event_id in `ledger.events`, with how often it is there."""
    settings = ledger.settings
    assert settings.broker is not None
    topic = Topics().events
    out = await collect(settings, settings.broker, [topic], lambda c: c.total() >= expected, 30)
    out = await collect(settings, settings.broker, [topic], lambda c: False, 2.0)
    return Counter(orjson.loads(r.value)["event_id"] for r in out.records[topic])


async def views(ledger: Ledger) -> dict[str, Any]:
    paths = ("/pipeline", "/overdue", "/customers/abuse", "/metrics/decisions", "/alerts")
    return {p: await get_json(ledger.settings, p) for p in paths}


async def wait_alerts(ledger: Ledger) -> list[Any]:
    """/alerts once it has stopped growing (the alert timer runs every second)."""
    seen: list[Any] = []
    for _ in range(40):
        now = await get_json(ledger.settings, "/alerts")
        if now and now == seen:
            return now
        seen = now
        await asyncio.sleep(1.5)
    raise AssertionError(f"alerts never settled: {len(seen)}")


async def assert_whole(ledger: Ledger, events: list[dict[str, Any]], before: Any) -> None:
    """After a restart: every event once, the views of the fold, the alerts as before."""
    await wait_folded(ledger.settings, len(events), ledger, timeout=120)  # type: ignore[arg-type]
    counts = await ledger_events(ledger, len(events))
    assert set(counts) == {e["event_id"] for e in events}
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:5]
    await assert_lists_match(ledger.settings, fold(from_mapping(e) for e in events))
    if before is not None:
        assert await get_json(ledger.settings, "/alerts") == before


async def test_ctrl_c_then_up_again_keeps_everything(ledger: Ledger, receiver: Receiver) -> None:
    await receiver.start()
    events = known_history(60)
    ledger.up()
    await ledger.started()
    ledger.publish(events, "all")
    await wait_folded(ledger.settings, len(events), ledger)  # type: ignore[arg-type]
    alerts = await wait_alerts(ledger)
    assert alerts, "the history raises alerts"
    await wait_delivered(receiver, alerts)

    def all_delivered(listed: list[Any]) -> bool:
        return all(d["status"] == "delivered" for a in listed for d in a["deliveries"].values())

    for _ in range(60):  # until the delivery records have reached the API
        if all_delivered(await get_json(ledger.settings, "/alerts")):
            break
        await asyncio.sleep(0.5)
    before = await views(ledger)
    assert all_delivered(before["/alerts"])
    for _ in range(60):  # the SQL writer's lag is on /health once it has run
        backlog = (await get_json(ledger.settings, "/health"))["stream"]["backlog"]
        if backlog.get("sql") == 0:
            break
        await asyncio.sleep(0.5)
    assert backlog.get("sql") == 0, backlog

    assert ledger.process is not None
    os.killpg(ledger.process.pid, signal.SIGINT)  # Ctrl-C in the terminal
    assert ledger.wait() == 0, ledger.logs()
    assert not (ledger.data / "running.json").exists()

    ledger.up()
    await ledger.started()
    await assert_whole(ledger, events, alerts)
    await asyncio.sleep(3)  # three alert checks: nothing is raised a second time
    assert await views(ledger) == before
    posts = Counter(key for key, _ in receiver.deliveries)
    assert len(posts) == len(alerts) and max(posts.values()) == 1  # none POSTed again
    assert "restored from" in ledger.logs()

    # the validator still knows the old ids: a re-sent event is a duplicate
    ledger.publish(events[:1], "again")
    settings = ledger.settings
    assert settings.broker is not None
    rejected = Topics().rejected
    out = await collect(settings, settings.broker, [rejected], lambda c: c.total() >= 1, 30)
    reasons = [orjson.loads(r.value)["reasons"][0]["code"] for r in out.records[rejected]]
    assert reasons == ["duplicate_event_id"]


async def test_sigkill_of_everything_right_after_an_acknowledged_publish(
    ledger: Ledger, receiver: Receiver
) -> None:
    events = known_history(60)
    half = len(events) // 2
    ledger.up()
    pids = await ledger.started()
    ledger.publish(events[:half], "first")
    await wait_folded(ledger.settings, half, ledger)  # type: ignore[arg-type]
    # Freeze the mirror, so the copy lags what the broker holds: only the journal has
    # the second half when everything dies.
    os.kill(pids["mirror"], signal.SIGSTOP)
    three_quarters = (half + len(events)) // 2
    ledger.publish(events[half:three_quarters], "second")
    async with aiohttp.ClientSession() as http:
        posted = await http.post(
            ledger.settings.api_url + "/events", data=orjson.dumps(events[three_quarters:])
        )
        assert posted.status == 202, await posted.text()
    assert ledger.journaled() == len(events) - half
    ledger.kill("runner", "broker", "worker", "projector", "api", "mirror", "sql")  # power cut
    ledger.wait()

    ledger.up()
    await ledger.started()
    await assert_whole(ledger, events, None)
    assert f"{len(events) - half} journaled publishes" in ledger.logs()
    assert ledger.journaled() == 0  # the copy holds them now
    # the webhook was down all along: its deliveries were pending, and are made now
    alerts = await wait_alerts(ledger)
    assert alerts and not receiver.deliveries
    await receiver.start()
    await wait_delivered(receiver, alerts)


async def test_killed_runner_then_killed_broker(ledger: Ledger) -> None:
    events = known_history(40)
    third = len(events) // 3
    ledger.up()
    await ledger.started()
    ledger.publish(events[:third], "first")
    await wait_folded(ledger.settings, third, ledger)  # type: ignore[arg-type]

    # `ledger up` itself is SIGKILLed: its broker, workers, API and mirror live on
    ledger.kill("runner")
    ledger.wait()
    ledger.publish(events[third : 2 * third], "second")  # the orphans take it
    ledger.up()  # stops the orphans gracefully, the mirror's last sync included
    await ledger.started()
    await wait_folded(ledger.settings, 2 * third, ledger)  # type: ignore[arg-type]

    # the broker alone is SIGKILLed: `ledger up` notices, stops the rest, exits non-zero
    ledger.kill("broker")
    assert ledger.wait() == 1, ledger.logs()
    ledger.up()
    await ledger.started()
    ledger.publish(events[2 * third :], "third")
    await assert_whole(ledger, events, None)
