"""Screening admits in the same step where this process owns the subject's state, and
forwards (re-keyed by subject) only what another process must judge; per subject and
inbox partition, messages are still judged in inbox order.

The ordering case is driven step by step against a real broker (the validator's two
handlers called in the order a rebalance can produce): an earlier owner of an inbox
partition forwarded messages admission has not handled yet, and a later message of the
same subject and partition reaches this process's screening first.
"""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_ledger_topics, ensure_topics, resend_only_unwritten
from ledger.adapters.reader import Collected, collect
from ledger.adapters.topics import Topics
from tests.factories import decision, intake, score
from tests.integration.conftest import Workers
from tests.integration.test_exactly_once import inbox_position
from tests.integration.test_validator import publish
from workers.runtime import read_since, send_all
from workers.validator import Validator

pytestmark = pytest.mark.integration


@dataclass
class Record:
    """The fields of a consumed inbox record that screening reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def positions(out: Collected, topics: Topics) -> dict[int, str]:
    """Each judged inbox offset (partition 0) and its verdict: the topic it went to."""
    found: dict[int, str] = {}
    for topic in (topics.events, topics.rejected):
        for record in out.records[topic]:
            headers = dict(record.headers)
            found[int(headers["ledger-inbox-offset"])] = topic
    return found


async def test_a_later_message_waits_for_those_forwarded_before_it(settings: Settings) -> None:
    assert settings.broker is not None
    bootstrap = settings.broker
    topics = await ensure_ledger_topics(settings, bootstrap)
    producer = resend_only_unwritten(
        AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    )
    await producer.start()
    try:
        validator = Validator(settings, bootstrap, producer)
        await ensure_topics(bootstrap, {validator.subjects.topic: -1}, settings.partitions,
                            settings.kafka_client_options())  # fmt: skip
        history = [intake("R-1"), score("R-1"), decision("R-1")]
        inbox = [
            Record(topics.inbox, 0, offset, b"R-1", orjson.dumps(event))
            for offset, event in enumerate(history)
        ]
        # an earlier owner of inbox partition 0 screened (forwarded) the intake and the
        # score, and committed; admission (a fresh group) has handled nothing yet
        await send_all(producer, [validator.screened(r) for r in inbox[:2]])
        admission = validator.processors[1]
        admission.assigned = set(range(settings.partitions))
        admission.handled = dict.fromkeys(admission.assigned, 0)
        # this process takes inbox partition 0 over and screens the decision first
        validator.processors[0].assigned = {0}
        await validator.screen_assigned({0})
        await validator.processors[0].handle_recovered([inbox[2]])  # type: ignore[list-item]
        # then admission handles the re-keyed stream
        records, _ = await read_since(
            settings, bootstrap, [topics.by_subject],
            {TopicPartition(topics.by_subject, p): 0 for p in admission.assigned},
        )  # fmt: skip
        await admission.handle_recovered(records)
        out = await collect(settings, bootstrap, [topics.events, topics.rejected],
                            lambda c: c.total() >= 3, 10)  # fmt: skip
        assert positions(out, topics) == dict.fromkeys([0, 1, 2], topics.events)
        # and now that admission has handled every forwarded message, it admits directly
        later = Record(topics.inbox, 0, 3, b"R-1", orjson.dumps(intake("R-2")))
        await validator.processors[0].handle_recovered([later])  # type: ignore[list-item]
        out = await collect(settings, bootstrap, [topics.events, topics.rejected],
                            lambda c: c.total() >= 4, 10)  # fmt: skip
        assert positions(out, topics)[3] == topics.events
        ends = (await read_since(settings, bootstrap, [topics.by_subject], {}, True))[1]
        assert sum(ends.values()) == 3, "the intake, the score and the decision only"
    finally:
        await producer.stop()


async def test_a_warm_validator_forwards_nothing(settings: Settings, workers: Workers) -> None:
    """One validator process owns every subject: once running, it admits every message
    where it screens it, whatever its inbox key (a wrong key is only a hint)."""
    assert settings.broker is not None
    topics = Topics(settings.topic_prefix)
    outputs = [topics.events, topics.rejected]
    workers.start(env={"LEDGER_WORKER_ROLE": "validator"})
    first = [(b"R-10", orjson.dumps(intake("R-10")))]
    await publish(settings, first)
    await collect(settings, settings.broker, outputs, lambda c: c.total() >= 1, 60)
    _, before = await read_since(settings, settings.broker, [topics.by_subject], {}, True)
    stream: list[tuple[bytes | None, Any]] = []
    for n in range(20):
        request = f"R-{100 + n}"
        key = b"wrong" if n % 3 == 0 else None if n % 3 == 1 else request.encode()
        stream += [(key, orjson.dumps(intake(request))), (key, orjson.dumps(score(request)))]
    stream.append((b"X", b"not json"))
    await publish(settings, stream)
    out = await collect(settings, settings.broker, outputs, lambda c: c.total() >= 42, 60)
    assert len(out.records[topics.events]) == 41 and len(out.records[topics.rejected]) == 1
    _, after = await read_since(settings, settings.broker, [topics.by_subject], {}, True)
    assert after == before, workers.logs()


async def test_validators_sharing_partitions_judge_each_message_once(
    settings: Settings, workers: Workers
) -> None:
    """Two validator processes split the subjects: each admits its own where it screens
    them and forwards the rest; one is killed mid-stream (SIGKILL) and a third joins, so
    partitions move while messages are forwarded both ways. Every inbox message gets one
    verdict, every event reaches the ledger once, and in its subject's order."""
    assert settings.broker is not None
    workers.settings = settings = settings.model_copy(update={"session_timeout_s": 4.0})
    topics = Topics(settings.topic_prefix)
    outputs = [topics.events, topics.rejected]
    env = {"LEDGER_WORKER_ROLE": "validator", "LEDGER_BATCH_SIZE": "50"}
    requests = [f"R-{n}" for n in range(300)]
    parts: list[list[tuple[bytes | None, bytes]]] = [[], []]
    for n, request in enumerate(requests):
        key = request.encode() if n % 2 else f"crm-{n % 7}".encode()  # half mis-keyed
        for part, event in enumerate([intake(request), score(request)]):
            parts[part].append((key, orjson.dumps(event)))
        parts[1].append((key, orjson.dumps(decision(request))))
    first = workers.start(env=env)
    workers.start(env=env)
    await publish(settings, parts[0])
    await collect(settings, settings.broker, outputs, lambda c: c.total() >= 100, 90)
    first.kill()  # SIGKILL, mid-stream
    workers.start(env=env)
    await publish(settings, parts[1])
    total = len(parts[0]) + len(parts[1])
    out = await collect(settings, settings.broker, outputs, lambda c: c.total() >= total, 180)
    out = await collect(settings, settings.broker, outputs, lambda c: False, 3.0)  # any extra
    inbox = await collect(
        settings, settings.broker, [topics.inbox], lambda c: c.total() >= total, 60
    )
    verdicts = [  # each verdict with the inbox position it names
        (inbox_position(r.headers), r)
        for r in out.records[topics.events] + out.records[topics.rejected]
    ]
    judged = [at for at, _ in verdicts]
    twice = {at for at, n in Counter(judged).items() if n > 1}
    seen = [  # what a failure is read by: each verdict of a position judged twice
        (r.topic, r.partition, r.offset, dict(r.headers), r.value[:120])
        for at, r in verdicts
        if at in twice
    ]
    sent = {(r.partition, r.offset) for r in inbox.records[topics.inbox]}
    unjudged = sorted(sent - set(judged))  # and the inbox messages without a verdict
    assert len(judged) == len(set(judged)) == total, (seen, unjudged, workers.logs())
    assert out.records[topics.rejected] == [], "each request's events in order, none refused"
    kinds: dict[str, list[str]] = {}
    for record in out.records[topics.events]:
        event = orjson.loads(record.value)
        kinds.setdefault(event["data"]["request_id"], []).append(event["type"])
    assert kinds == dict.fromkeys(requests, ["intake", "score", "decision"])


async def test_a_send_failing_after_verdicts_starts_afresh(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose verdicts were written but whose state write failed (a leader moving
    for longer than the retries) must not be redone in place: its state does not know
    the verdicts, which would be written again. The worker starts afresh instead (an
    outage, ridden out), and a fresh start recognises them."""
    from aiokafka.errors import NotLeaderForPartitionError

    import workers.validator as module
    from workers.runtime import StartAfresh
    from workers.worker import is_outage

    assert settings.broker is not None
    bootstrap = settings.broker
    topics = await ensure_ledger_topics(settings, bootstrap)
    producer = resend_only_unwritten(
        AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    )
    await producer.start()
    try:
        everything = set(range(settings.partitions))
        validator = Validator(settings, bootstrap, producer)
        await ensure_topics(bootstrap, {validator.subjects.topic: -1}, settings.partitions,
                            settings.kafka_client_options())  # fmt: skip
        validator.processors[1].assigned = everything
        await validator.complete_from_output(everything)  # as on assignment: its marks
        history = [intake("R-5"), score("R-5")]
        inbox = [
            Record(topics.inbox, 1, offset, b"R-5", orjson.dumps(event))
            for offset, event in enumerate(history)
        ]
        batch = [(o.key, o.value, o.headers, None) for o in map(validator.screened, inbox)]

        async def leader_moving(*args: Any, **kwargs: Any) -> None:
            raise NotLeaderForPartitionError()

        monkeypatch.setattr(module, "write_tables", leader_moving)
        with pytest.raises(StartAfresh) as failed:
            await validator.judge(batch)
        assert is_outage(failed.value)
        monkeypatch.undo()
        fresh = Validator(settings, bootstrap, producer)  # started afresh
        await fresh.subjects.recover(settings, bootstrap, everything)
        fresh.processors[1].assigned = everything
        await fresh.complete_from_output(everything)
        await fresh.judge(batch)  # the batch, redelivered
        out = await collect(settings, bootstrap, [topics.events, topics.rejected],
                            lambda c: False, 2)  # fmt: skip
        ids = [orjson.loads(r.value)["event_id"] for r in out.records[topics.events]]
        assert ids == [e["event_id"] for e in history], "each once"
        assert out.records[topics.rejected] == []
    finally:
        await producer.stop()


async def test_a_paused_validator_writes_nothing_once_its_partitions_moved(
    settings: Settings, workers: Workers
) -> None:
    """A validator paused (SIGSTOP) for longer than its session is removed from its
    groups, and the other takes its partitions over and judges what it left. Resumed
    (SIGCONT), the paused one still believes it owns them until its next heartbeat, and
    may hold records fetched before the pause: it must write no verdict and no state for
    them, or a message is judged twice (a "zombie" writer). Every inbox message gets one
    verdict, every event reaches the ledger once."""
    assert settings.broker is not None
    workers.settings = settings = settings.model_copy(update={"session_timeout_s": 4.0})
    topics = Topics(settings.topic_prefix)
    outputs = [topics.events, topics.rejected]
    env = {"LEDGER_WORKER_ROLE": "validator", "LEDGER_BATCH_SIZE": "20"}
    requests = [f"R-{n}" for n in range(200)]
    parts: list[list[tuple[bytes | None, bytes]]] = [[], []]
    for n, request in enumerate(requests):
        key = request.encode() if n % 2 else f"crm-{n % 5}".encode()  # half mis-keyed
        parts[0].append((key, orjson.dumps(intake(request))))
        parts[1] += [(key, orjson.dumps(score(request))), (key, orjson.dumps(decision(request)))]
    paused = workers.start(env=env)
    workers.start(env=env)
    await publish(settings, parts[0])
    await collect(settings, settings.broker, outputs, lambda c: c.total() >= 50, 90)
    paused.send_signal(signal.SIGSTOP)
    try:
        await publish(settings, parts[1])  # while its fetches are in flight
        total = len(parts[0]) + len(parts[1])
        # the other takes every partition over once the paused one's session ends
        await collect(settings, settings.broker, outputs, lambda c: c.total() >= total, 120)
    finally:
        paused.send_signal(signal.SIGCONT)
    out = await collect(settings, settings.broker, outputs, lambda c: False, 5.0)  # any extra
    verdicts = out.records[topics.events] + out.records[topics.rejected]
    judged = Counter(inbox_position(r.headers) for r in verdicts)
    twice = sorted(at for at, n in judged.items() if n > 1)
    assert twice == [] and len(judged) == total, (twice, workers.logs())
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out.records[topics.events])
    assert len(ids) == total and max(ids.values()) == 1
