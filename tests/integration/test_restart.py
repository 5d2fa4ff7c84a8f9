"""A worker restarted after a SIGKILL removes its dead predecessor from the groups and
takes the partitions back at once, instead of waiting for the dead member's session to
time out (`ledger.adapters.membership`)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import orjson
import pytest

from ledger.adapters.config import Settings
from ledger.adapters.reader import collect
from ledger.adapters.topics import Topics
from tests.integration.conftest import Workers
from tests.integration.test_api import known_history, subject
from tests.integration.test_validator import publish

pytestmark = pytest.mark.integration
SESSION_S = 24.0  # long: without the eviction no restart could be back sooner


async def test_a_restart_after_sigkill_is_back_before_the_dead_members_session_ends(
    settings: Settings, workers: Workers
) -> None:
    workers.settings = settings = settings.model_copy(
        update={"session_timeout_s": SESSION_S, "worker_role": "validator"}
    )
    assert settings.broker is not None
    events = known_history(40)
    messages = [(subject(e).encode(), orjson.dumps(e)) for e in events]
    half = len(messages) // 2
    topics = Topics(settings.topic_prefix)
    loop = asyncio.get_running_loop()

    first = workers.start()
    await publish(settings, messages[:half])
    judged = await collect(
        settings, settings.broker, [topics.events, topics.rejected],
        lambda c: c.total() >= half, 90,
    )  # fmt: skip
    assert judged.total() >= half, workers.logs()
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 30)
    killed_at = loop.time()

    workers.start()
    await publish(settings, messages[half:])
    out = await collect(
        settings, settings.broker, [topics.events, topics.rejected],
        lambda c: c.total() >= len(messages), 90,
    )  # fmt: skip
    back_after = loop.time() - killed_at
    logs = workers.logs()
    assert out.total() >= len(messages), logs
    assert back_after < SESSION_S, f"judging again {back_after:.1f} s after the kill\n{logs}"
    # the dead member of each of the validator's two groups was removed, so the new
    # process did not wait for those sessions (24 s, and the join after them)
    assert logs.count("removed the dead member") == 2, logs

    out = await collect(settings, settings.broker, [topics.events], lambda c: False, 2.0)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[topics.events])
    assert max(ids.values()) == 1, "an event reached ledger.events twice"
    assert set(ids) == {e["event_id"] for e in events}
