"""Alerting on a real broker with real HTTP receivers on loopback."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp import web

from events import from_mapping
from ledger.adapters.broker import free_port
from ledger.adapters.config import Settings
from ledger.adapters.reader import collect
from ledger.adapters.topics import Topics
from ledger.rules.policy import Policy
from projections.alerts import alerts_of_log
from tests.integration.conftest import Workers
from tests.integration.test_api import get_json, known_history, publish, wait_folded

pytestmark = pytest.mark.integration
CLOCK = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


class Receiver:
    """An alert webhook: records every POST; `refuse` answers 400 to everything."""

    def __init__(self, refuse: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.refuse = refuse
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.deliveries.append((request.headers["Idempotency-Key"], body))
        return web.Response(status=400 if self.refuse else 204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def unique(self) -> dict[str, dict[str, Any]]:
        """What a receiver that dedups by alert_id keeps."""
        out: dict[str, dict[str, Any]] = {}
        for key, body in self.deliveries:
            out.setdefault(key, body)
        return out


async def test_receiver_down_then_up_gets_every_alert_once_across_a_restart(
    settings: Settings, workers: Workers
) -> None:
    good, refusing = Receiver(), Receiver(refuse=True)
    await refusing.start()  # `good` is down (nothing listens) for the first deliveries
    settings = settings.model_copy(
        update={
            "alert_webhooks": f"{good.url},{refusing.url}",
            "alert_interval": 1.0,
            "alert_retry_base_s": 0.2,
            "alert_retry_cap_s": 2.0,
            "clock": CLOCK.isoformat(),
        }
    )
    workers.settings = settings
    events = known_history(60)
    expected = alerts_of_log((from_mapping(e) for e in events), CLOCK, Policy(), 10, "calendar")
    assert {a["kind"] for a in expected.values()} >= {"decision_overdue", "customer_abuse_flagged"}
    try:
        first = workers.start()
        workers.start("ledger.api")
        await publish(settings, events)
        await wait_folded(settings, len(events), workers)
        assert settings.broker is not None
        topics = Topics(settings.topic_prefix)
        await collect(
            settings,
            settings.broker,
            [topics.alerts],
            lambda c: c.total() >= len(expected) // 2,
            60,
        )
        first.send_signal(signal.SIGTERM)  # restart the alerting worker in the middle
        await asyncio.to_thread(first.wait, 60)
        workers.start()
        await asyncio.sleep(3)
        await good.start()  # the receiver comes back
        deadline = asyncio.get_running_loop().time() + 120
        while asyncio.get_running_loop().time() < deadline and (
            len(good.unique()) < len(expected) or len(refusing.unique()) < len(expected)
        ):  # each webhook has its own queue: wait for both
            await asyncio.sleep(0.5)

        got = good.unique()
        assert set(got) == set(expected), (
            [
                (a["kind"], a["subject_id"], a["details"].get("episode"))
                for i, a in got.items()
                if i not in expected
            ],
            [
                (a["kind"], a["subject_id"], a["details"].get("episode"))
                for i, a in expected.items()
                if i not in got
            ],
        )
        for alert_id, body in good.unique().items():
            assert body["alert_id"] == alert_id
            assert (body["kind"], body["subject_id"]) == (
                expected[alert_id]["kind"],
                expected[alert_id]["subject_id"],
            )
        # in order, per subject: a subject's alerts arrive as they were raised
        logged = await collect(settings, settings.broker, [topics.alerts], lambda c: False, 3.0)
        ids = Counter(orjson.loads(r.value)["alert_id"] for r in logged.records[topics.alerts])
        assert ids == Counter(set(expected)), "ledger.alerts must hold each alert exactly once"
        order: dict[str, list[str]] = {}
        for record in logged.records[topics.alerts]:
            alert = orjson.loads(record.value)
            order.setdefault(alert["subject_id"], []).append(alert["alert_id"])
        received: dict[str, list[str]] = {}
        for key, body in good.deliveries:
            if key not in received.get(body["subject_id"], []):
                received.setdefault(body["subject_id"], []).append(key)
        assert received == order

        # the refusing receiver was tried once per alert and each is marked undeliverable
        assert Counter(k for k, _ in refusing.deliveries) == Counter(set(expected))
        final = {"delivered", "undeliverable"}
        while asyncio.get_running_loop().time() < deadline:  # the API tails the records
            listed = await get_json(settings, "/alerts")
            statuses = [d["status"] for a in listed for d in a["deliveries"].values()]
            if len(listed) == len(expected) and set(statuses) <= final:
                break
            await asyncio.sleep(0.5)
        assert {a["alert_id"] for a in listed} == set(expected)
        for alert in listed:
            assert alert["deliveries"][good.url]["status"] == "delivered"
            assert alert["deliveries"][refusing.url]["status"] == "undeliverable"
    finally:
        await good.stop()
        await refusing.stop()
