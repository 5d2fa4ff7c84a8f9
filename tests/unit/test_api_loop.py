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


class Record:
    """A changelog record as the read model reads one."""

    def __init__(self, key: bytes, value: bytes) -> None:
        self.key, self.value, self.timestamp = key, value, 0


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


@pytest.mark.parametrize("shipped", [True, False], ids=["projector-records", "bare-states"])
async def test_a_whole_list_is_written_in_chunks_and_is_the_same_json(
    monkeypatch: pytest.MonkeyPatch, shipped: bool
) -> None:
    """A whole list longer than a chunk goes out as a JSON array written a chunk at a
    time (the event loop answers other requests between), and parses to the same rows;
    a page, or a short list, is one body as before. Its rows are read off the index's
    entries a slice at a time on the event loop (records as the projector writes them),
    or from the states in a thread (records without what the index reads)."""
    from datetime import datetime

    import orjson

    from events import from_mapping
    from ledger.api import app as app_module
    from ledger.entrypoints.history import generate
    from projections import fold
    from projections.records import policy_tag, request_record

    monkeypatch.setattr(app_module, "JSON_CHUNK", 7)
    monkeypatch.setattr(app_module, "FEW_STATES", 3)
    monkeypatch.setattr(app_module, "ROW_SLICE", 6)
    until = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
    folded = fold(from_mapping(e) for e in generate(requests=200, until=until))
    settings = Settings(clock=until.isoformat())
    api = Api(settings, Policy())
    app = web.Application()
    model = app[READ_MODEL] = ReadModel(settings, "127.0.0.1:1")
    app[STREAM] = StreamWatch(settings, "127.0.0.1:1")
    app.router.add_get("/pipeline", api.pipeline)

    tag = policy_tag(Policy())

    def record(state: Any) -> bytes:
        raw = state.model_dump_json().encode()
        return request_record(state, raw, Policy(), tag) if shipped else raw

    records = [Record(k.encode(), record(s)) for k, s in folded.requests.items()]
    walks: list[Any] = []
    walk = api.walk

    async def counted(view: Any, *args: Any, **kwargs: Any) -> Any:
        walks.append(view)
        return await walk(view, *args, **kwargs)

    monkeypatch.setattr(api, "walk", counted)
    model._apply(model.requests_topic, records)  # noqa: SLF001
    want = orjson.loads(orjson.dumps(views.pipeline(folded.requests.values(), until, Policy())))
    assert len(want) > 3 * 7
    async with TestClient(TestServer(app)) as client:
        whole = await client.get("/pipeline")
        assert whole.status == 200 and whole.headers["Content-Type"] == "application/json"
        assert "Content-Length" not in whole.headers  # streamed
        assert orjson.loads(await whole.read()) == want
        page = await client.get("/pipeline", params={"limit": "50"})
        assert page.headers.get("Content-Length") is not None
        assert orjson.loads(await page.read())["items"] == want[:50]
    if shipped:
        assert walks == []  # every row read off the index on the event loop
    else:  # each slice of states parsed in a thread
        assert set(walks) == {app_module.pipeline_rows} and len(walks) >= len(want) // 6


def pipeline_app(requests: int = 200) -> tuple[Api, web.Application]:
    """An API whose read model holds `requests` requests of generated history, as the
    projector writes them, serving `/pipeline`."""
    from datetime import datetime

    from events import from_mapping
    from ledger.entrypoints.history import generate
    from projections import fold
    from projections.records import policy_tag, request_record

    until = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
    folded = fold(from_mapping(e) for e in generate(requests=requests, until=until))
    settings = Settings(clock=until.isoformat())
    api = Api(settings, Policy())
    app = web.Application()
    model = app[READ_MODEL] = ReadModel(settings, "127.0.0.1:1")
    app[STREAM] = StreamWatch(settings, "127.0.0.1:1")
    app.router.add_get("/pipeline", api.pipeline)
    tag = policy_tag(Policy())
    records = [
        Record(k.encode(), request_record(s, s.model_dump_json().encode(), Policy(), tag))
        for k, s in folded.requests.items()
    ]
    model._apply(model.requests_topic, records)  # noqa: SLF001
    return api, app


async def test_whole_lists_are_built_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten whole pipelines asked at once are built `HEAVY_AT_ONCE` at a time (each holds
    its rows until it is written)."""
    from ledger.api import app as app_module

    monkeypatch.setattr(app_module, "ROW_SLICE", 5)
    _, app = pipeline_app()
    turns: list[object] = []  # which request built each slice, in order
    rows_of = app_module.pipeline_rows

    def counted(*args: Any) -> Any:
        turns.append(asyncio.current_task())
        return rows_of(*args)

    monkeypatch.setattr(app_module, "pipeline_rows", counted)
    async with TestClient(TestServer(app)) as client:
        answers = await asyncio.gather(*[client.get("/pipeline") for _ in range(10)])
        bodies = [await a.read() for a in answers]
    assert len(set(bodies)) == 1 and all(a.status == 200 for a in answers)
    spans = [(turns.index(t), len(turns) - turns[::-1].index(t)) for t in set(turns)]
    assert len(spans) == 10 and all(b - a >= 3 for a, b in spans)  # several slices each
    most = max(sum(a <= i < b for a, b in spans) for i in range(len(turns)))
    assert most == HEAVY_AT_ONCE


def abuse_app(settings: Settings) -> tuple[Api, ReadModel, web.Application]:
    api = Api(settings, Policy())
    app = web.Application()
    model = app[READ_MODEL] = ReadModel(settings, "127.0.0.1:1")
    app[STREAM] = StreamWatch(settings, "127.0.0.1:1")
    app.router.add_get("/customers/abuse", api.abuse)
    return api, model, app


async def test_a_walk_as_of_a_named_instant_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests asking the same view as of the same named instant of the same states share
    one walk over every state: one in flight, or one that has landed; a state changed,
    or a request as of now, walks afresh."""
    import threading

    walks: list[Any] = []
    release = threading.Event()

    def counted_abuse(customers: Any, as_of: Any, *_: Any) -> list[dict[str, Any]]:
        walks.append(as_of)
        release.wait(10)  # a walk over every state of a big ledger, still going
        return [{"customer_id": f"c-{len(walks)}"}]

    monkeypatch.setattr(views, "abuse", counted_abuse)
    api, model, app = abuse_app(Settings(clock="2026-06-30T09:00:00+00:00"))
    past = "/customers/abuse?as_of=2026-05-31T09:00:00Z"
    async with TestClient(TestServer(app)) as client:
        first = asyncio.create_task(client.get(past))
        while not walks:  # the first walk has started
            await asyncio.sleep(0.01)
        second = asyncio.create_task(client.get(past))
        while api.walks_joined < 1:  # the second request waits for the same walk
            await asyncio.sleep(0.01)
        release.set()
        answers = [await (await task).json() for task in (first, second)]
        assert answers == [[{"customer_id": "c-1"}]] * 2
        assert await (await client.get(past)).json() == [{"customer_id": "c-1"}]  # landed
        assert len(walks) == 1
        other = await client.get("/customers/abuse?as_of=2026-04-30T09:00:00Z")
        assert await other.json() == [{"customer_id": "c-2"}]  # another instant
        model.version += 1  # a state changed since
        assert await (await client.get(past)).json() == [{"customer_id": "c-3"}]
        for _ in range(2):  # as of now: asked afresh each time
            await client.get("/customers/abuse")
        assert len(walks) == 5


async def test_a_failed_shared_walk_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def failing_once(*_: Any) -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a walk that failed")
        return []

    monkeypatch.setattr(views, "abuse", failing_once)
    api, _, app = abuse_app(Settings())
    past = "/customers/abuse?as_of=2026-05-31T09:00:00Z"
    async with TestClient(TestServer(app)) as client:
        assert (await client.get(past)).status == 500
        assert (await client.get(past)).status == 200
        assert len(calls) == 2 and api.flights == {}
