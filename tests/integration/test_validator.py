"""The validator on a real broker: what lands in ledger.events and ledger.rejected."""

from __future__ import annotations

import asyncio
import base64
import signal
from collections import Counter

import orjson
import pytest

from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.adapters.reader import Collected, collect
from ledger.adapters.topics import Topics
from tests.factories import decision, eid, escalation, intake, raw, revisit, score
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration


async def publish(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    assert settings.broker is not None
    async with Publisher(settings, settings.broker) as publisher:
        await publisher.send_raw(publisher.topics.inbox, messages)


async def read_outputs(settings: Settings, expected: int, timeout: float = 90) -> Collected:
    """Wait until `expected` records are out, then keep reading to catch any extra ones."""
    assert settings.broker is not None
    topics = Topics(settings.topic_prefix)
    names = [topics.events, topics.rejected]
    await collect(settings, settings.broker, names, lambda c: c.total() >= expected, timeout)
    return await collect(settings, settings.broker, names, lambda c: False, 3.0)


def keyed(event: dict, key: str | None = "auto") -> tuple[bytes | None, bytes]:
    if key == "auto":
        key = event["data"].get("request_id") or event["data"]["customer_id"]
    return (key.encode() if key else None, raw(event))


async def test_mixed_stream_is_split_exactly(settings: Settings, workers: Workers) -> None:
    # events whose predecessor never comes are held for the grace period, then refused
    workers.settings = settings = settings.model_copy(update={"reorder_grace_s": 2.0})
    fit_seven = score("R2", name="bad-score")
    fit_seven["data"]["fit"] = 7
    naive = decision("R2", "decline", name="naive")
    naive["occurred_at"] = "2026-03-04T09:00:00"
    messages = [
        keyed(intake("R1")),
        keyed(score("R1")),
        keyed(decision("R1", "provisional_yes")),
        keyed(decision("R1", "scaled")),  # accepted: after provisional_yes
        keyed(score("R1")),  # duplicate, same key
        keyed(score("R3", name="early")),  # before its intake: held, admitted after it
        keyed(intake("R3")),
        keyed(revisit("R3")),  # revisit of undecided
        keyed(intake("R3", name="second-intake")),  # second intake
        # a wrong key or none: checked against its own subject all the same (nothing else
        # of R2 or beta is sent, since order across inbox partitions is not guaranteed)
        keyed(intake("R2"), key="WRONG-KEY"),
        keyed(escalation("beta", "p3"), key=None),
        keyed(fit_seven),
        keyed(naive),  # schema violations
        keyed(decision("R4", "scaled")),  # unknown request
        keyed(intake("R5")),
        keyed(decision("R5", "decline")),
        keyed(decision("R5", "scaled", name="no-yes")),  # scaled without yes
        keyed(escalation("acme", "p1", "partner_fired")),
        keyed(escalation("acme", "p2", "abusive_conduct")),
        keyed(escalation("acme", "p1", "partner_fired")),  # duplicate escalation
        (b"R9", b"this is not json"),
        (None, b"\xff\xfe\x00"),
        (b"R9", b'{"type": "intake", "schema_version": 2}'),
    ]
    await publish(settings, messages)
    workers.start()
    out = await read_outputs(settings, len(messages))
    topics = Topics(settings.topic_prefix)

    accepted = out.records[topics.events]
    accepted_ids = Counter(orjson.loads(r.value)["event_id"] for r in accepted)
    assert accepted_ids == Counter(
        {
            eid(n): 1
            for n in [
                "intake-R1",
                "score-R1",
                "decision-R1-provisional_yes",
                "decision-R1-scaled",
                "intake-R3",
                "early",
                "intake-R2",
                "esc-beta-p3-complaint",
                "intake-R5",
                "decision-R5-decline",
                "esc-acme-p1-partner_fired",
                "esc-acme-p2-abusive_conduct",
            ]
        }
    ), workers.logs()
    for record in accepted:  # ledger.events is keyed by the event's own subject
        data = orjson.loads(record.value)["data"]
        assert record.key == (data.get("request_id") or data["customer_id"]).encode()

    rejected = [orjson.loads(r.value) for r in out.records[topics.rejected]]
    codes = Counter((r["reasons"][0]["code"], r["reasons"][0]["field"]) for r in rejected)
    assert codes == Counter(
        {
            ("duplicate_event_id", None): 2,
            ("unknown_request", None): 1,
            ("revisit_of_undecided_request", None): 1,
            ("duplicate_intake", None): 1,
            ("schema", "data.fit"): 1,
            ("schema", "occurred_at"): 1,
            ("scaled_without_provisional_yes", None): 1,
            ("undecodable", None): 2,
            ("unsupported_schema_version", "schema_version"): 1,
        }
    )
    assert len(accepted) + len(rejected) == len(messages)
    originals = sorted(base64.b64decode(r["original_base64"]) for r in rejected)
    accepted_bytes = sorted(r.value for r in accepted)
    assert sorted(originals + accepted_bytes) == sorted(v for _, v in messages)
    by_code = {r["reasons"][0]["code"]: r for r in rejected}
    assert by_code["unsupported_schema_version"]["inbox"]["key"] == "R9"
    assert "supported versions: 1" in by_code["unsupported_schema_version"]["reasons"][0]["message"]


async def test_restart_mid_stream_lets_no_duplicate_through(
    settings: Settings, workers: Workers
) -> None:
    requests = [f"Q{i}" for i in range(1500)]
    first = [keyed(intake(r)) for r in requests] + [keyed(score(r)) for r in requests]
    # redeliveries of the first half, and lifecycle steps that depend on earlier state
    second = first[:1500] + [keyed(decision(r, "decline")) for r in requests]
    await publish(settings, first)
    process = workers.start()
    topics = Topics(settings.topic_prefix)
    assert settings.broker is not None
    await collect(settings, settings.broker, [topics.events], lambda c: c.total() >= 1000, 90)
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 60)
    assert process.returncode is not None
    await publish(settings, second)
    workers.start()
    out = await read_outputs(settings, len(first) + len(second), timeout=180)

    ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[topics.events])
    assert max(ids.values()) == 1, "an event reached ledger.events twice"
    assert len(ids) == 3 * len(requests)
    rejected = [orjson.loads(r.value) for r in out.records[topics.rejected]]
    assert Counter(r["reasons"][0]["code"] for r in rejected) == {"duplicate_event_id": 1500}


async def test_sigkill_mid_stream_loses_nothing(settings: Settings, workers: Workers) -> None:
    """A killed validator redoes its unfinished batch: every message is still judged, and
    every valid event is in ledger.events. (Unlike a graceful restart, an event of the
    batch in flight may be written twice; projections dedupe by event_id. See README.)"""
    requests = [f"K{i}" for i in range(2000)]
    messages = [keyed(intake(r)) for r in requests] + [keyed(score(r)) for r in requests]
    messages += messages[:500]  # redelivered duplicates
    await publish(settings, messages)
    process = workers.start()
    topics = Topics(settings.topic_prefix)
    assert settings.broker is not None
    await collect(settings, settings.broker, [topics.events], lambda c: c.total() >= 1500, 90)
    process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(process.wait, 30)
    workers.start()
    expected_ids = {orjson.loads(v)["event_id"] for _, v in messages}
    names = [topics.events, topics.rejected]

    def all_judged(c: Collected) -> bool:
        ids = {orjson.loads(r.value)["event_id"] for r in c.records[topics.events]}
        return ids == expected_ids and len(c.records[topics.rejected]) >= 500

    out = await collect(settings, settings.broker, names, all_judged, 180)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[topics.events])
    assert set(ids) == expected_ids, workers.logs()
    rejected = [orjson.loads(r.value) for r in out.records[topics.rejected]]
    assert {r["reasons"][0]["code"] for r in rejected} == {"duplicate_event_id"}
