"""`ledger.events` holds each event once, however often the worker is killed (SIGKILL):
half the kills land, by a failpoint, exactly between a batch's verdicts and its state.

`LEDGER_SOAK_KILLS` sets the number of kills (10 here; `make soak` runs 50).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
from collections import Counter
from typing import Any

import orjson
import pytest

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.adapters.membership import wait_members
from ledger.adapters.reader import Collected, collect
from ledger.adapters.topics import Topics
from projections import fold
from tests.integration.conftest import Workers
from tests.integration.test_api import assert_lists_match, known_history, subject, wait_folded
from tests.integration.test_api import publish as publish_events
from tests.integration.test_validator import publish
from workers.runtime import group_id

pytestmark = pytest.mark.integration
KILLS = int(os.environ.get("LEDGER_SOAK_KILLS", "10"))


def inbox_position(headers: tuple[tuple[str, bytes], ...]) -> tuple[int, int]:
    found = dict(headers)
    return int(found["ledger-inbox-partition"]), int(found["ledger-inbox-offset"])


async def test_sigkills_at_random_points_leave_each_event_once(
    settings: Settings, workers: Workers
) -> None:
    # a shorter session: a killed member is noticed sooner, so each restart is quicker
    workers.settings = settings = settings.model_copy(update={"session_timeout_s": 4.0})
    rng = random.Random(20261201)
    history = known_history(1000)
    valid = [(subject(e).encode(), orjson.dumps(e)) for e in history]
    resent = rng.sample(valid, 300)  # a CRM retrying: each is a duplicate_event_id
    poison = [(None, b'{"type":[]}'), (b"X", b"not json"), (b"X", b'{"type":"intake"}')] * 10
    rng.shuffle(poison)
    stream = valid + resent
    for message in poison:
        stream.insert(rng.randrange(len(stream)), message)
    # each worker finds a backlog: the messages left by the killed one, and a new part
    size = -(-len(stream) // (KILLS + 1))
    parts = [stream[i * size : (i + 1) * size] for i in range(KILLS + 1)]
    assert settings.broker is not None
    topics = Topics(settings.topic_prefix)
    outputs = [topics.events, topics.rejected]
    published = 0
    for kill in range(KILLS):
        await publish(settings, parts[kill])
        published += len(parts[kill])
        if kill % 2 == 0:
            # it kills itself between its first batch's verdicts and the state recording them
            process = workers.start(env={"LEDGER_FAILPOINT": "admit:verdicts-sent@1"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, 60)
            assert process.poll() == -signal.SIGKILL, workers.logs()
            continue
        process = workers.start()  # killed from outside, at a random point
        judged = (await collect(settings, settings.broker, outputs, lambda c: False, 0.5)).total()
        target = rng.randint(min(judged + 1, published), published)

        def progressed(c: Collected, target: int = target, process: Any = process) -> bool:
            return c.total() >= target or process.poll() is not None

        await collect(settings, settings.broker, outputs, progressed, 60)
        await asyncio.sleep(rng.uniform(0, 0.2))
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
    await publish(settings, parts[KILLS])
    workers.start()

    def verdicts(c: Collected) -> Counter[tuple[int, int]]:
        positions = Counter(inbox_position(r.headers) for r in c.records[topics.events])
        for record in c.records[topics.rejected]:
            inbox = orjson.loads(record.value)["inbox"]
            positions[(inbox["partition"], inbox["offset"])] += 1
        return positions

    def all_judged(c: Collected) -> bool:
        return len(verdicts(c)) >= len(stream)

    out = await collect(settings, settings.broker, outputs, all_judged, 180)
    out = await collect(settings, settings.broker, outputs, lambda c: False, 3.0)  # any extra

    ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[topics.events])
    assert [i for i, n in ids.items() if n > 1] == [], "an event reached ledger.events twice"
    assert set(ids) == {e["event_id"] for e in history}, workers.logs()
    positions = verdicts(out)
    assert len(positions) == len(stream), "every inbox message has a verdict"
    assert max(positions.values()) == 1, "an inbox message has two verdicts"
    codes = Counter(
        orjson.loads(r.value)["reasons"][0]["code"] for r in out.records[topics.rejected]
    )
    assert codes == {"duplicate_event_id": 300, "schema": 20, "undecodable": 10}

    workers.start("ledger.api")
    await wait_folded(settings, len(history), workers)
    await assert_lists_match(settings, fold(from_mapping(e) for e in history))


async def test_a_paused_projector_leaves_the_read_model_to_the_partitions_new_owner(
    settings: Settings, workers: Workers
) -> None:
    """Two projectors share `ledger.events`; one is paused (SIGSTOP) past its session, the
    other takes its partitions over and folds the rest. Resumed (SIGCONT), the paused one
    must not write the states it folded from records fetched before the pause: they are
    older than the new owner's, and the newest changelog record is what a restart and
    the API read. The read model stays the fold of the log."""
    assert settings.broker is not None
    workers.settings = settings = settings.model_copy(update={"session_timeout_s": 4.0})
    history = known_history(300)
    half = len(history) // 2
    workers.start(env={"LEDGER_WORKER_ROLE": "validator"})
    projector = {"LEDGER_WORKER_ROLE": "projector", "LEDGER_BATCH_SIZE": "20"}
    paused = workers.start(env=projector)
    workers.start(env=projector)
    workers.start("ledger.api")
    group = group_id(settings.topic_prefix, "projector")
    await wait_members(settings, group, 2)
    await publish_events(settings, history[:half])
    await wait_folded(settings, half // 2, workers)
    paused.send_signal(signal.SIGSTOP)
    try:
        await publish_events(settings, history[half:])  # while its fetches are in flight
        await wait_folded(settings, len(history), workers)  # the other folds it all
    finally:
        paused.send_signal(signal.SIGCONT)
    await wait_members(settings, group, 2)  # it is back in the group, with its partitions
    await wait_folded(settings, len(history), workers)
    await assert_lists_match(settings, fold(from_mapping(e) for e in history))
