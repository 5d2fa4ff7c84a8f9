"""The API's event loop stays free while views walk every state (issue 11): /health, the
broker check and one request's view must not wait behind a heavy list or the metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ledger.adapters.config import Settings
from ledger.api.app import HEAVY_AT_ONCE, READ_MODEL, STREAM, Api
from ledger.api.readmodel import ReadModel
from ledger.api.stream import StreamWatch
from ledger.rules.policy import Policy
from projections import views


async def test_health_answers_while_heavy_views_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_abuse(*_: Any) -> list[dict[str, Any]]:
        time.sleep(1.0)  # a walk over every state of a big ledger
        return []

    monkeypatch.setattr(views, "abuse", slow_abuse)
    settings = Settings()
    api = Api(settings, Policy())
    app = web.Application()
    app[READ_MODEL] = ReadModel(settings, "127.0.0.1:1")
    app[STREAM] = StreamWatch(settings, "127.0.0.1:1")
    app.router.add_get("/health", api.health)
    app.router.add_get("/customers/abuse", api.abuse)
    async with TestClient(TestServer(app)) as client:
        heavy = [
            asyncio.create_task(client.get("/customers/abuse")) for _ in range(HEAVY_AT_ONCE + 1)
        ]
        while not api.heavy.locked():  # as many walks running as may run at once
            await asyncio.sleep(0.01)
        health = await client.get("/health")
        assert health.status == 200
        assert not any(task.done() for task in heavy)  # answered while the walks went on
        for response in await asyncio.gather(*heavy):
            assert response.status == 200
