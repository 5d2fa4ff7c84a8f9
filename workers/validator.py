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
from ledger.kafka import Outgoing
from ledger.lifecycle import Fact, Refusal, SubjectState, admit
from ledger.rejections import Provenance, rejection_record
from ledger.topics import Topics
from workers.tables import each_batch, json_table, send_all, write_batch

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

    # Outputs go straight to the producer, sealed, once per batch (faust's send_soon
    # buffer manages a few hundred messages a second).
    def rejection(source: Provenance, reasons: list[FieldError], value: bytes) -> Outgoing:
        record = rejection_record(value, reasons, source, _now())
        return Outgoing(topics.rejected, source.key, record)

    async def screen_batch(batch: list[Any]) -> None:
        out: list[Outgoing] = []
        for event in batch:
            message = event.message
            try:
                valid = decode(event.value)
            except InvalidEvent as exc:
                source = Provenance(message.key, message.partition, message.offset)
                out.append(rejection(source, exc.errors, event.value))
                continue
            prefix_ = "c:" if valid.type == "escalation" else "r:"
            key = (prefix_ + subject_of(valid)).encode()
            out.append(Outgoing(topics.by_subject, key, event.value, _provenance_headers(message)))
        await send_all(app, out)

    @app.agent(inbox, name=f"{prefix}validator-screen")
    async def screen(stream: Any) -> None:  # Any: faust's StreamT stub lacks noack_take
        await each_batch(stream, settings.batch_size, BATCH_WINDOW_S, screen_batch)

    async def admit_batch(batch: list[Any]) -> None:
        touched: dict[bytes, SubjectState] = {}
        out: list[Outgoing] = []
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
                out.append(rejection(source, [reason], event.value))
                touched[key] = state.judging(source.partition, source.offset)
                continue
            touched[key] = verdict.judging(source.partition, source.offset)
            out.append(Outgoing(topics.events, fact.subject.encode(), event.value))
        await send_all(app, out)  # outputs are acknowledged before the state records them
        await write_batch(app, subjects, {k: s.to_json() for k, s in touched.items()})

    @app.agent(by_subject, name=f"{prefix}validator-admit")
    async def admit_events(stream: Any) -> None:
        await each_batch(stream, settings.batch_size, BATCH_WINDOW_S, admit_batch)
