"""Events published in order but unkeyed (or keyed by an unrelated id) reach admission in
any order: each is held until its predecessor arrives, and all are recorded once."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from typing import Any

import orjson
import pytest

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing, partition_for, send_sealed
from ledger.adapters.publisher import Publisher
from ledger.adapters.topics import Topics
from projections import fold
from tests.factories import revisit, score
from tests.integration.conftest import Workers
from tests.integration.test_api import assert_lists_match, get_json, known_history, wait_folded
from tests.integration.test_validator import keyed, publish, read_outputs

pytestmark = pytest.mark.integration


async def publish_spread(settings: Settings, messages: list[tuple[bytes | None, int, bytes]]):
    """Each message to the partition given, in order (a producer that ignores keys)."""
    assert settings.broker is not None
    async with Publisher(settings, settings.broker) as publisher:
        inbox = publisher.topics.inbox
        out = [Outgoing(inbox, key, value, None, partition) for key, partition, value in messages]
        await send_sealed(publisher._producer, out)


async def wait_held(settings: Settings, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    """`GET /held` once it lists `n` events (or what it lists when `timeout` passes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    held: list[dict[str, Any]] = []
    while asyncio.get_running_loop().time() < deadline and len(held) < n:
        try:
            held = await get_json(settings, "/held")
        except Exception:  # noqa: BLE001 - the API may not listen yet
            held = []
        await asyncio.sleep(0.3)
    return held


def _history() -> list[dict[str, Any]]:
    events = known_history(300)
    assert len({e["data"]["customer_id"] for e in events if e["type"] == "escalation"}) >= 4
    return events


@pytest.mark.parametrize("keying", ["unkeyed", "keyed by account"])
async def test_events_overtaking_their_predecessor_are_all_recorded_once(
    settings: Settings, workers: Workers, keying: str
) -> None:
    rng = random.Random(keying)
    history = _history()
    messages = []
    for event in history:  # in order, but scattered over the inbox's partitions
        value = orjson.dumps(event)
        if keying == "unkeyed":
            messages.append((None, rng.randrange(settings.partitions), value))
        else:
            account = f"acct-{rng.randrange(40)}".encode()
            messages.append((account, partition_for(account, range(settings.partitions)), value))
    await publish_spread(settings, messages)
    workers.start()
    workers.start("ledger.api")
    out = await read_outputs(settings, len(history), timeout=120)
    topics = Topics(settings.topic_prefix)

    rejected = [orjson.loads(r.value)["reasons"] for r in out.records[topics.rejected]]
    assert rejected == []
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[topics.events])
    assert ids == Counter(e["event_id"] for e in history)
    await wait_folded(settings, len(history), workers)
    await assert_lists_match(settings, fold(from_mapping(e) for e in history))
    health = await get_json(settings, "/health")
    assert health["held"] == 0


async def test_an_event_whose_predecessor_never_comes_is_refused_when_its_grace_ends(
    settings: Settings, workers: Workers
) -> None:
    workers.settings = settings = settings.model_copy(update={"reorder_grace_s": 6.0})
    orphans = [keyed(score("ORPHAN-1")), keyed(revisit("ORPHAN-2"))]
    await publish(settings, orphans)
    workers.start()
    workers.start("ledger.api")
    held = await wait_held(settings, 2)
    assert sorted(h["subject"] for h in held) == ["r:ORPHAN-1", "r:ORPHAN-2"]
    assert {h["reason"] for h in held} == {"unknown_request"}
    assert all(h["age_s"] >= 0 for h in held)
    assert (await get_json(settings, "/health"))["held"] == 2

    out = await read_outputs(settings, len(orphans), timeout=60)
    topics = Topics(settings.topic_prefix)
    assert out.records[topics.events] == []
    refusals = [orjson.loads(r.value)["reasons"][0] for r in out.records[topics.rejected]]
    assert sorted(r["code"] for r in refusals) == ["unknown_request", "unknown_request"]
    waited = [int(re.search(r"held (\d+) s", r["message"]).group(1)) for r in refusals]  # type: ignore[union-attr]
    assert all(6 <= w <= 8 for w in waited), refusals
    for _ in range(50):
        if not await get_json(settings, "/held"):
            break
        await asyncio.sleep(0.2)
    assert await get_json(settings, "/held") == []


async def test_events_held_by_a_killed_worker_are_refused_by_the_next_when_their_grace_ends(
    settings: Settings, workers: Workers
) -> None:
    """A worker killed (SIGKILL) while it holds events: the one that takes its partitions
    over finds them in the recovered states and refuses them when their grace ends (it
    must not wait for another event of their subjects, which may never come)."""
    workers.settings = settings = settings.model_copy(
        update={"reorder_grace_s": 6.0, "session_timeout_s": 4.0}
    )
    orphans = [keyed(score("ORPHAN-3")), keyed(revisit("ORPHAN-4"))]
    await publish(settings, orphans)
    first = workers.start()
    workers.start("ledger.api")
    held = await wait_held(settings, 2)
    assert len(held) == 2, workers.logs()
    first.kill()  # SIGKILL, holding both
    first.wait()
    workers.start()
    out = await read_outputs(settings, len(orphans), timeout=60)
    topics = Topics(settings.topic_prefix)
    assert out.records[topics.events] == []
    refusals = [orjson.loads(r.value)["reasons"][0] for r in out.records[topics.rejected]]
    assert sorted(r["code"] for r in refusals) == ["unknown_request", "unknown_request"]
