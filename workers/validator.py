"""The validator: inbox -> (screen) -> re-keyed by subject -> (admit) -> ledger.events.

Screening decodes and schema-checks each message once and re-keys it by its own
subject (`r:<request>` / `c:<customer>`): the inbox key is only a hint. Admission runs
the pure lifecycle rules of `ledger.rules.lifecycle` against a changelogged table keyed like
its stream, writes each touched key once per batch, and recognises a redelivered
message by its inbox position, so nothing is judged twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from events import InvalidEvent, decode, subject_of
from events.errors import FieldError
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing, key_in_partition, partition_for
from ledger.adapters.topics import Topics
from ledger.rules.lifecycle import Fact, Refusal, SubjectState, admit
from ledger.rules.rejections import Provenance, rejection_record
from workers.failpoints import failpoint
from workers.runtime import Processor, Table, read_since, send_all, write_tables

log = logging.getLogger(__name__)
_KEY, _PARTITION, _OFFSET = "ledger-inbox-key", "ledger-inbox-partition", "ledger-inbox-offset"
_SUBJECT, _REFUSED = "ledger-subject", "ledger-refused"  # the admission key; refused by screen
_MARK = b"\x00output-mark:"


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


def _reasons(exc: Exception) -> list[FieldError]:
    """Why a message is refused: its schema errors, or what went wrong judging it."""
    if isinstance(exc, InvalidEvent):
        return exc.errors
    log.error("refusing a message that raised %r while being judged", exc, exc_info=exc)
    return [FieldError("internal_error", None, f"{type(exc).__name__}: {exc}")]


@dataclass(frozen=True, slots=True)
class OutputMark:
    """Where this partition's next verdicts will land, at the latest write of its state:
    every verdict its state does not reflect yet is at or after these offsets."""

    positions: dict[str, int]  # "<topic>/<partition>" -> offset


def _load_value(raw: bytes) -> SubjectState | OutputMark:
    obj = orjson.loads(raw)
    if "outputs" in obj:
        return OutputMark(obj["outputs"])
    return SubjectState.from_json(obj)


def _dump_value(value: SubjectState | OutputMark) -> bytes:
    if isinstance(value, OutputMark):
        return orjson.dumps({"outputs": value.positions})
    return orjson.dumps(value.to_json())


def subjects_table(settings: Settings) -> Table:
    return Table(
        settings.topic_prefix,
        f"{settings.topic_prefix}validator-subjects",
        settings.partitions,
        _load_value,
        _dump_value,
    )


class Validator:
    """Screen and admit. Every verdict (an event to `ledger.events`, a refusal to
    `ledger.rejected`) is written by admission, carrying its subject and inbox position
    in headers, so a partition's state can be completed from its own output."""

    def __init__(self, settings: Settings, bootstrap: str, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.producer = producer
        self.topics = Topics(settings.topic_prefix)
        self.subjects = subjects_table(settings)
        self.outputs: dict[TopicPartition, int] = {}  # lower bounds of the next verdicts
        self.processors = [
            Processor("validator-screen", self.topics.inbox, self.screen),
            Processor(
                "validator-admit", self.topics.by_subject, self.admit_batch, [self.subjects],
                on_assigned=self.complete_from_output,
            ),
        ]  # fmt: skip

    # -- screen: decode once, re-key by subject ----------------------------------------
    def screened(self, record: Any) -> Outgoing:
        value = record.value or b""
        headers = _provenance_headers(record)
        try:
            valid = decode(value)
            prefix = "c:" if valid.type == "escalation" else "r:"
            key = (prefix + subject_of(valid)).encode()
        except Exception as exc:  # noqa: BLE001 - every message gets a verdict
            # refused here, written by admission under a per-inbox-partition subject
            source = Provenance(record.key, record.partition, record.offset)
            refusal = rejection_record(value, _reasons(exc), source, _now())
            key = b"x:%d" % record.partition
            return Outgoing(self.topics.by_subject, key, refusal, [*headers, (_REFUSED, b"1")])
        return Outgoing(self.topics.by_subject, key, value, headers)

    async def screen(self, batch: list[Any]) -> None:
        await send_all(self.producer, [self.screened(record) for record in batch])

    # -- admit: the lifecycle rules, against the subject's state ------------------------
    def verdict(self, state: SubjectState, record: Any) -> tuple[SubjectState, Outgoing]:
        source = _provenance_of(record)
        headers = [*(record.headers or ()), (_SUBJECT, record.key)]
        if dict(record.headers or ()).get(_REFUSED):
            return state, Outgoing(self.topics.rejected, source.key, record.value, headers)
        try:
            fact = Fact.of_validated_json(orjson.loads(record.value))
            verdict: SubjectState | Refusal | Exception = admit(state, fact)
        except Exception as exc:  # noqa: BLE001 - every message gets a verdict
            verdict = exc
        if isinstance(verdict, SubjectState):
            return verdict, Outgoing(
                self.topics.events, fact.subject.encode(), record.value, headers
            )
        reasons = (
            [FieldError(verdict.code.value, None, verdict.message)]
            if isinstance(verdict, Refusal)
            else _reasons(verdict)
        )
        refusal = rejection_record(record.value, reasons, source, _now())
        return state, Outgoing(self.topics.rejected, source.key, refusal, headers)

    async def admit_batch(self, batch: list[Any]) -> None:
        touched: dict[bytes, SubjectState] = {}
        out: list[Outgoing] = []
        for record in batch:
            key = record.key
            state = touched.get(key) or self.subjects.get(key) or SubjectState()
            source = _provenance_of(record)
            if state.already_judged(source.partition, source.offset):
                continue  # a redelivery after a restart or rebalance: judged before
            state, output = self.verdict(state, record)
            touched[key] = state.judging(source.partition, source.offset)
            out.append(output)
        # verdicts are acknowledged before the state records them; a crash in between is
        # repaired on the next assignment by `complete_from_output`
        self.advance(await send_all(self.producer, out))
        failpoint("admit:verdicts-sent")
        await write_tables(self.producer, [(self.subjects, {**touched, **self.marks()})])

    # -- completing a recovered state from what was already written --------------------
    def advance(self, acked: list[Any]) -> None:
        for where in acked:
            tp = TopicPartition(where.topic, where.partition)
            self.outputs[tp] = max(self.outputs.get(tp, 0), where.offset + 1)

    def marks(self, partitions: set[int] | None = None) -> dict[bytes, OutputMark]:
        """An output mark for each owned partition (of the admission stream)."""
        owned = self.processors[1].assigned if partitions is None else partitions
        mark = OutputMark({f"{tp.topic}/{tp.partition}": o for tp, o in self.outputs.items()})
        n = len(self.subjects.partitions)
        return {key_in_partition(_MARK, p, n): mark for p in owned}

    async def complete_from_output(self, partitions: set[int]) -> None:
        """Fold into the newly assigned partitions' states the verdicts written after
        their last changelog write (a worker killed between the two), so a redelivered
        message is recognised as judged and nothing reaches the ledger twice."""
        n = len(self.subjects.partitions)
        starts: dict[TopicPartition, int] = {}
        for p in partitions:
            mark = self.subjects.get(key_in_partition(_MARK, p, n))
            for name, offset in (mark.positions if mark else {}).items():
                topic, _, partition = name.rpartition("/")
                tp = TopicPartition(topic, int(partition))
                starts[tp] = min(starts.get(tp, offset), offset)
        topics = [self.topics.events, self.topics.rejected]
        # a partition without a mark was never handled (one is written before its first
        # batch), so it has no verdicts to read
        records, ends = await read_since(
            self.settings, self.bootstrap, topics, starts, ends_only=not starts
        )
        completed: dict[bytes, SubjectState] = {}
        for record in records:
            headers = dict(record.headers or ())
            key = headers.get(_SUBJECT)
            if key is None or partition_for(key, self.subjects.partitions) not in partitions:
                continue
            state = completed.get(key) or self.subjects.get(key) or SubjectState()
            if record.topic == self.topics.events:
                state = state.recording(Fact.of_validated_json(orjson.loads(record.value)))
            completed[key] = state.judging(int(headers[_PARTITION]), int(headers[_OFFSET]))
        for tp, end in ends.items():
            self.outputs[tp] = max(self.outputs.get(tp, 0), end)
        if completed:
            log.warning("completed %d subject states from verdicts already written", len(completed))
        await write_tables(
            self.producer, [(self.subjects, {**completed, **self.marks(partitions)})]
        )


def validator(settings: Settings, bootstrap: str, producer: AIOKafkaProducer) -> list[Processor]:
    return Validator(settings, bootstrap, producer).processors
