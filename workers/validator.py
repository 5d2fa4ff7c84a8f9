"""The validator: inbox -> (screen) -> re-keyed by subject -> (admit) -> ledger.events.

Screening decodes and schema-checks each message once. Admission runs the pure
lifecycle rules against a changelogged table keyed like its stream (by subject), and
writes each touched key once per batch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from events import InvalidEvent, decode, subject_of
from events.errors import FieldError
from ledger.config import Settings
from ledger.lifecycle import Fact, Refusal, SubjectState, admit
from ledger.rejections import Provenance, rejection_record
from ledger.topics import Topics
from workers.tables import json_table, write_batch

BATCH_WINDOW_S = 0.05
_KEY, _PARTITION, _OFFSET = "ledger-inbox-key", "ledger-inbox-partition", "ledger-inbox-offset"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _provenance_headers(message: Any) -> list[tuple[str, bytes]]:
    headers = [
        (_PARTITION, str(message.partition).encode()),
        (_OFFSET, str(message.offset).encode()),
    ]
    if message.key is not None:
        headers.append((_KEY, message.key))
    return headers


def _provenance_of(message: Any) -> Provenance:
    headers = dict(message.headers or ())
    return Provenance(
        key=headers.get(_KEY),
        partition=int(headers[_PARTITION]),
        offset=int(headers[_OFFSET]),
    )


def register_validator(app: faust.App, topics: Topics, settings: Settings) -> None:
    prefix = settings.topic_prefix
    inbox = app.topic(topics.inbox, key_serializer="raw", value_serializer="raw")
    by_subject = app.topic(topics.by_subject, key_serializer="raw", value_serializer="raw")
    subjects = json_table(app, f"{prefix}validator-subjects", settings.partitions)

    async def send(topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        # Straight to the producer: faust's send_soon buffer manages a few hundred
        # messages a second, and faust flushes this producer before committing offsets.
        await app.producer.send(topic, key, value, None, None, headers)

    async def reject(source: Provenance, reasons: list[FieldError], value: bytes) -> None:
        record = rejection_record(value, reasons, source, _now())
        await send(topics.rejected, source.key, record)

    @app.agent(inbox, name=f"{prefix}validator-screen")
    async def screen(stream: Any) -> None:  # Any: faust's StreamT stub lacks take_events
        async for batch in stream.take_events(settings.batch_size, within=BATCH_WINDOW_S):
            for event in batch:
                message = event.message
                try:
                    valid = decode(event.value)
                except InvalidEvent as exc:
                    source = Provenance(message.key, message.partition, message.offset)
                    await reject(source, exc.errors, event.value)
                    continue
                prefix_ = "c:" if valid.type == "escalation" else "r:"
                await send(
                    topics.by_subject,
                    (prefix_ + subject_of(valid)).encode(),
                    event.value,
                    _provenance_headers(message),
                )

    @app.agent(by_subject, name=f"{prefix}validator-admit")
    async def admit_events(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=BATCH_WINDOW_S):
            touched: dict[bytes, SubjectState] = {}
            for event in batch:
                key = event.key
                state = touched.get(key) or SubjectState.from_json(subjects.data.get(key))
                source = _provenance_of(event.message)
                if state.already_judged(source.partition, source.offset):
                    continue  # a redelivery after a restart or rebalance: judged before
                fact = Fact.of_validated_json(orjson.loads(event.value))
                verdict = admit(state, fact)
                if isinstance(verdict, Refusal):
                    reason = FieldError(verdict.code.value, None, verdict.message)
                    await reject(source, [reason], event.value)
                    touched[key] = state.judging(source.partition, source.offset)
                    continue
                touched[key] = verdict.judging(source.partition, source.offset)
                await send(topics.events, fact.subject.encode(), event.value)
            await write_batch(app, subjects, {k: s.to_json() for k, s in touched.items()})
