"""Nothing a sender does can stop the validator, and a stopped stream shows on /health."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import orjson
import pytest

from ledger.adapters.config import Settings
from ledger.adapters.topics import Topics
from tests.factories import decision, intake, score
from tests.integration.conftest import Workers
from tests.integration.test_api import get_json
from tests.integration.test_validator import keyed, publish, read_outputs

pytestmark = pytest.mark.integration

POISON: list[tuple[bytes | None, bytes]] = [
    (None, b'{"type":[]}'),
    (b"P1", b'[{"type":{}}]'),
    (b"P1", b'{"type":{}}'),
    (b"P1", b'{"type":["intake"],"schema_version":1}'),
    (b"P1", b'{"type":"intake","schema_version":[1],"data":[]}'),
    (b"P1", b'{"type":"intake","schema_version":1,"data":[],"occurred_at":{}}'),
    (b"P1", b'{"type":"decision","schema_version":1e308,"data":{"request_id":{}}}'),
    (b"P1", b'{"type":"intake","schema_version":99999999999999999999999}'),
    (b"P1", b"[" * 5000 + b"]" * 5000),
    (b"P1", b""),
    (b"P1", b"x" * (700 * 1024)),  # over the limit, and its refusal must still fit a topic
]


async def test_poison_messages_among_valid_ones_are_all_judged(
    settings: Settings, workers: Workers
) -> None:
    valid: list[tuple[bytes | None, bytes]] = []
    for i in range(40):
        request = f"V{i}"
        valid += [keyed(intake(request)), keyed(score(request)), keyed(decision(request, "hold"))]
    messages = [m for pair in zip(valid[:11], POISON, strict=True) for m in pair] + valid[11:]
    await publish(settings, messages)
    process = workers.start()
    out = await read_outputs(settings, len(messages), timeout=120)
    topics = Topics(settings.topic_prefix)

    accepted = sorted(r.value for r in out.records[topics.events])
    assert accepted == sorted(v for _, v in valid), workers.logs()
    rejected = [orjson.loads(r.value) for r in out.records[topics.rejected]]
    assert len(rejected) == len(POISON)
    codes = Counter(r["reasons"][0]["code"] for r in rejected)
    assert codes == {"schema": 5, "unsupported_schema_version": 3, "undecodable": 2, "too_large": 1}
    by_text = {r["original_text"][:60]: r["reasons"][0] for r in rejected}
    for text in ('{"type":[]}', '{"type":{}}', '{"type":["intake"],"schema_version":1}'):
        assert (by_text[text]["code"], by_text[text]["field"]) == ("schema", "type")
    assert process.poll() is None, "the worker stopped on a poison message"


async def _health(settings: Settings) -> dict[str, Any]:
    health: dict[str, Any] = await get_json(settings, "/health")
    return health


async def _wait_health(settings: Settings, check: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    health: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        try:
            health = await _health(settings)
        except (OSError, AssertionError):
            health = {}
        if health and check(health):
            return health
        await asyncio.sleep(0.5)
    raise AssertionError(f"/health never got there: {health}")


async def test_health_tells_a_stopped_stream_from_a_healthy_one(
    settings: Settings, workers: Workers
) -> None:
    workers.settings = settings = settings.model_copy(update={"stall_after_s": 6.0})
    worker = workers.start()
    workers.start("ledger.api")
    await publish(settings, [keyed(intake("H1"))])
    healthy = await _wait_health(
        settings, lambda h: h["events_folded"] == 1 and h["stream"]["status"] == "idle"
    )
    assert healthy["status"] == "ok" and healthy["ready"] and healthy["broker_reachable"]

    worker.send_signal(signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 30)
    await publish(settings, [keyed(intake("H2")), keyed(score("H2"))])
    stalled = await _wait_health(
        settings, lambda h: "validator-screen" in h["stream"]["stalled_stages"]
    )
    assert stalled["status"] == "stalled" and not stalled["ready"]
    assert stalled["stream"]["backlog"]["validator-screen"] == 2

    workers.start()
    # The read model may fold the new events a watch poll before /health sees the
    # validator's offsets move again, so wait for both rather than assert at the first.
    recovered = await _wait_health(
        settings, lambda h: h["events_folded"] == 3 and h["status"] == "ok", timeout=90
    )
    assert recovered["ready"] and not recovered["stream"]["stalled_stages"]
