"""The validator: inbox -> (screen) -> re-keyed by subject -> (admit) -> ledger.events.

Screening decodes and schema-checks each message once and re-keys it by its own
subject (`r:<request>` / `c:<customer>`): the inbox key is only a hint. Admission runs
the pure lifecycle rules of `ledger.rules.lifecycle` against a changelogged table keyed like
its stream, writes each touched key once per batch, and recognises a redelivered
message by its inbox position, so nothing is judged twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from events import InvalidEvent, decode, subject_of
from events.errors import FieldError
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing
from ledger.adapters.topics import Topics
from ledger.rules.lifecycle import Fact, Refusal, SubjectState, admit
from ledger.rules.rejections import Provenance, rejection_record
from workers.runtime import Processor, Table, send_all, write_tables

_KEY, _PARTITION, _OFFSET = "ledger-inbox-key", "ledger-inbox-partition", "ledger-inbox-offset"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _provenance_headers(record: Any) -> list[tuple[str, bytes]]:
    headers = [(_PARTITION, str(record.partition).encode()), (_OFFSET, str(record.offset).encode())]
    if record.key is not None:
        headers.append((_KEY, record.key))
    return headers


def _provenance_of(record: Any) -> Provenance:
    headers = dict(record.headers or ())
    return Provenance(
        key=headers.get(_KEY), partition=int(headers[_PARTITION]), offset=int(headers[_OFFSET])
    )


def _load_subject(raw: bytes) -> SubjectState:
    return SubjectState.from_json(orjson.loads(raw))


def _dump_subject(state: SubjectState) -> bytes:
    return orjson.dumps(state.to_json())


def subjects_table(settings: Settings) -> Table:
    return Table(
        settings.topic_prefix,
        f"{settings.topic_prefix}validator-subjects",
        settings.partitions,
        _load_subject,
        _dump_subject,
    )


def validator(settings: Settings, producer: AIOKafkaProducer) -> list[Processor]:
    topics = Topics(settings.topic_prefix)
    subjects = subjects_table(settings)

    def rejection(source: Provenance, reasons: list[FieldError], value: bytes) -> Outgoing:
        record = rejection_record(value, reasons, source, _now())
        return Outgoing(topics.rejected, source.key, record)

    async def screen(batch: list[Any]) -> None:
        out: list[Outgoing] = []
        for record in batch:
            value = record.value or b""
            try:
                valid = decode(value)
            except InvalidEvent as exc:
                source = Provenance(record.key, record.partition, record.offset)
                out.append(rejection(source, exc.errors, value))
                continue
            prefix = "c:" if valid.type == "escalation" else "r:"
            key = (prefix + subject_of(valid)).encode()
            out.append(Outgoing(topics.by_subject, key, value, _provenance_headers(record)))
        await send_all(producer, out)

    async def admit_batch(batch: list[Any]) -> None:
        touched: dict[bytes, SubjectState] = {}
        out: list[Outgoing] = []
        for record in batch:
            key = record.key
            state = touched.get(key) or subjects.get(key) or SubjectState()
            source = _provenance_of(record)
            if state.already_judged(source.partition, source.offset):
                continue  # a redelivery after a restart or rebalance: judged before
            fact = Fact.of_validated_json(orjson.loads(record.value))
            verdict = admit(state, fact)
            if isinstance(verdict, Refusal):
                reason = FieldError(verdict.code.value, None, verdict.message)
                out.append(rejection(source, [reason], record.value))
                touched[key] = state.judging(source.partition, source.offset)
                continue
            touched[key] = verdict.judging(source.partition, source.offset)
            out.append(Outgoing(topics.events, fact.subject.encode(), record.value))
        await send_all(producer, out)  # outputs are acknowledged before the state records them
        await write_tables(producer, [(subjects, touched)])

    return [
        Processor("validator-screen", topics.inbox, screen),
        Processor("validator-admit", topics.by_subject, admit_batch, [subjects]),
    ]
