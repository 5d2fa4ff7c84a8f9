"""The validator: inbox -> (screen) -> [re-keyed by subject -> (admit)] -> ledger.events.

Screening decodes and schema-checks each message once and finds its own subject
(`r:<request>` / `c:<customer>`): the inbox key is only a hint. Admission runs the pure
lifecycle rules of `ledger.rules.lifecycle` against a changelogged table keyed by
subject, writes each touched key once per batch, and recognises a redelivered message by
its inbox position, so nothing is judged twice.

A subject's state belongs to whichever process the admission group gave its partition.
Where that is this process, and admission has handled every message forwarded to that
partition before, screening admits the message in the same step (`direct`); otherwise
it forwards it re-keyed by subject, for admission to judge. One validator process owns
every partition, so it forwards nothing after its first batches. Per subject and inbox
partition, messages are still judged in inbox order (what `SubjectState.judged` relies
on): a partition admits directly only once admission has handled everything forwarded to
it, by this process or by the inbox partitions' earlier owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from events import InvalidEvent, decode
from events.errors import FieldError
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing, key_in_partition, partition_for
from ledger.adapters.topics import Topics
from ledger.rules.lifecycle import (
    Fact,
    Held,
    Refusal,
    SubjectState,
    admit,
    expire,
    hold,
    may_hold,
    release,
)
from ledger.rules.rejections import Provenance, rejection_record
from workers.failpoints import failpoint
from workers.runtime import (
    Fenced,
    Processor,
    StartAfresh,
    Table,
    read_since,
    send_all,
    write_tables,
)

log = logging.getLogger(__name__)
_KEY, _PARTITION, _OFFSET = "ledger-inbox-key", "ledger-inbox-partition", "ledger-inbox-offset"
_SUBJECT, _REFUSED = "ledger-subject", "ledger-refused"  # the admission key; refused by screen
# what the lifecycle needs of a screened event ([event_id, type, subject, outcome]), so
# admission does not parse the event again; only on the re-keyed topic, never an output
_FACT = "ledger-fact"
_MARK = b"\x00output-mark:"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _provenance_headers(record: Any) -> list[tuple[str, bytes]]:
    headers = [(_PARTITION, str(record.partition).encode()), (_OFFSET, str(record.offset).encode())]
    if record.key is not None:
        headers.append((_KEY, record.key))
    return headers


def _provenance_of(headers: dict[str, bytes]) -> Provenance:
    return Provenance(
        key=headers.get(_KEY), partition=int(headers[_PARTITION]), offset=int(headers[_OFFSET])
    )


def _fact_header(fact: Fact) -> tuple[str, bytes]:
    return _FACT, orjson.dumps(fact.to_json())


def _fact_of(headers: dict[str, bytes], value: bytes) -> Fact:
    """The screened event's facts: from its header, or (a record screened before the
    header existed) from the event itself."""
    found = headers.get(_FACT)
    if found is None:
        return Fact.of_validated_json(orjson.loads(value))
    return Fact.from_json(orjson.loads(found))


def _held_headers(held: Held, subject: bytes) -> list[tuple[str, bytes]]:
    headers = [(_PARTITION, str(held.partition).encode()), (_OFFSET, str(held.offset).encode())]
    if held.key is not None:
        headers.append((_KEY, held.key.encode()))
    return [*headers, (_SUBJECT, subject)]


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode(errors="replace")


def _bytes(key: str | None) -> bytes | None:
    return None if key is None else key.encode()


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


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
        self.grace_s = settings.reorder_grace_s
        self.holding: set[bytes] = set()  # subjects holding events, for the timer
        self.forwarded: dict[int, int] = {}  # re-keyed partition -> past our last forward
        self.backlog: dict[int, int] = {}  # re-keyed partition -> its end when we took inbox
        self.processors = [
            Processor(
                "validator-screen", self.topics.inbox, self.screen,
                on_assigned=self.screen_assigned,
            ),
            Processor(
                "validator-admit", self.topics.by_subject, self.admit_batch, [self.subjects],
                on_assigned=self.complete_from_output,
            ),
        ]  # fmt: skip

    # -- screen: decode once, find the subject; admit here or forward -------------------
    def screened(self, record: Any) -> Outgoing:
        """The message as forwarded to admission: re-keyed by its subject, with its
        provenance and facts in headers (a refusal of screening, under a per-inbox-
        partition subject, `x:<partition>`)."""
        return self._screen(record)[0]

    def _screen(self, record: Any) -> tuple[Outgoing, Fact | None]:
        value = record.value or b""
        headers = _provenance_headers(record)
        try:
            valid = decode(value)
            fact = Fact.of(valid)
            prefix = "c:" if valid.type == "escalation" else "r:"
            key = (prefix + fact.subject).encode()
        except Exception as exc:  # noqa: BLE001 - every message gets a verdict
            # refused here, written by admission under a per-inbox-partition subject
            source = Provenance(record.key, record.partition, record.offset)
            refusal = rejection_record(value, _reasons(exc), source, _now())
            key = b"x:%d" % record.partition
            out = Outgoing(self.topics.by_subject, key, refusal, [*headers, (_REFUSED, b"1")])
            return out, None
        return Outgoing(self.topics.by_subject, key, value, [*headers, _fact_header(fact)]), fact

    async def screen(self, batch: list[Any]) -> None:
        screened = [self._screen(record) for record in batch]
        admission = self.processors[1]
        async with admission.lock:  # admission's partitions stay as they are meanwhile
            ready = self.direct_partitions()
            n = self.subjects.partitions
            forward: list[Outgoing] = []
            direct: list[tuple[Outgoing, Fact | None]] = []
            for out, fact in screened:
                if ready and partition_for(out.key, n) in ready:
                    direct.append((out, fact))
                else:
                    forward.append(out)
            for where in await send_all(self.producer, forward):
                self.forwarded[where.partition] = max(
                    self.forwarded.get(where.partition, 0), where.offset + 1
                )
            if direct:
                await self.judge((o.key, o.value, o.headers, fact) for o, fact in direct)

    def direct_partitions(self) -> set[int]:
        """The admission partitions this process may admit to while screening (call
        under admission's lock): those it owns whose every message forwarded before
        (by this process, or by the earlier owners of its inbox partitions, up to
        `backlog`) admission has handled."""
        admission = self.processors[1]
        if admission.failure is not None:
            return set()  # its next batch stops the worker
        handled = admission.handled
        return {
            p
            for p in admission.assigned
            if handled.get(p, -1) >= max(self.backlog.get(p, 0), self.forwarded.get(p, 0))
        }

    async def screen_assigned(self, partitions: set[int]) -> None:
        """On taking over inbox partitions: where the re-keyed stream really ends (a
        batch a killed screen left unsealed read whole), so no message of theirs is
        admitted directly before those their earlier owners forwarded."""
        topic = [self.topics.by_subject]
        _, ends = await read_since(self.settings, self.bootstrap, topic, {}, ends_only=True)
        last = {tp: end - 1 for tp, end in ends.items() if end > 0}
        _, ends = await read_since(self.settings, self.bootstrap, topic, last)
        for tp, end in ends.items():
            self.backlog[tp.partition] = max(self.backlog.get(tp.partition, 0), end)

    # -- admit: the lifecycle rules, against the subject's state ------------------------
    def verdict(
        self, state: SubjectState, record: Any, found: dict[str, bytes], source: Provenance
    ) -> tuple[SubjectState, list[Outgoing]]:
        """The subject's next state and what to write: the event to the ledger (with any
        held events it made admissible), a refusal, or a note that it is held. `record`
        is as forwarded (`screened`), `found` its headers, `source` its inbox position."""
        return self._verdict(state, record.key, record.value, record.headers, found, source)

    def _verdict(
        self,
        state: SubjectState,
        subject: bytes,
        value: bytes,
        given: Any,
        found: dict[str, bytes],
        source: Provenance,
        fact: Fact | None = None,
    ) -> tuple[SubjectState, list[Outgoing]]:
        headers = [(k, v) for k, v in given or () if k != _FACT]
        headers.append((_SUBJECT, subject))
        if found.get(_REFUSED):
            return state, [Outgoing(self.topics.rejected, source.key, value, headers)]
        try:
            facts = fact if fact is not None else _fact_of(found, value)
            verdict: SubjectState | Refusal | Exception = admit(state, facts)
        except Exception as exc:  # noqa: BLE001 - every message gets a verdict
            verdict = exc
        if isinstance(verdict, SubjectState):
            accepted = Outgoing(self.topics.events, facts.subject.encode(), value, headers)
            return self.released(verdict, subject, [accepted])
        if isinstance(verdict, Refusal) and self.grace_s > 0 and may_hold(state, verdict):
            occurred = orjson.loads(value)["occurred_at"]
            held = Held(
                facts, _epoch(occurred), value.decode(), _text(source.key),
                source.partition, source.offset, time.time(), verdict.code,
            )  # fmt: skip
            return hold(state, held), [self.held_note(subject, held)]
        reasons = (
            [FieldError(verdict.code.value, None, verdict.message)]
            if isinstance(verdict, Refusal)
            else _reasons(verdict)
        )
        refusal = rejection_record(value, reasons, source, _now())
        return state, [Outgoing(self.topics.rejected, source.key, refusal, headers)]

    def released(
        self, state: SubjectState, subject: bytes, out: list[Outgoing]
    ) -> tuple[SubjectState, list[Outgoing]]:
        """`state` after judging its held events again, and `out` with their verdicts."""
        if not state.held:
            return state, out
        state, admitted, refused = release(state)
        for held in admitted:
            value = held.value.encode()
            headers = _held_headers(held, subject)
            out.append(Outgoing(self.topics.events, held.fact.subject.encode(), value, headers))
            out.append(self.held_note(subject, held, done=True))
        for held, refusal in refused:
            out += self.refused(
                subject, held, FieldError(refusal.code.value, None, refusal.message)
            )
        return state, out

    def refused(self, subject: bytes, held: Held, reason: FieldError) -> list[Outgoing]:
        source = Provenance(_bytes(held.key), held.partition, held.offset)
        record = rejection_record(held.value.encode(), [reason], source, _now())
        rejected = Outgoing(self.topics.rejected, source.key, record, _held_headers(held, subject))
        return [rejected, self.held_note(subject, held, done=True)]

    def held_note(self, subject: bytes, held: Held, done: bool = False) -> Outgoing:
        """A record of `ledger.held` (for `GET /held`): the held event, or a tombstone."""
        key = f"{held.partition}:{held.offset}".encode()
        if done:
            return Outgoing(self.topics.held, key, None)
        note = {
            "subject": subject.decode(errors="replace"),
            "event_id": held.fact.event_id,
            "type": held.fact.type,
            "reason": held.reason.value,
            "inbox": {"partition": held.partition, "offset": held.offset, "key": held.key},
            "held_since": datetime.fromtimestamp(held.since, UTC).isoformat(),
        }
        return Outgoing(self.topics.held, key, orjson.dumps(note))

    async def admit_batch(self, batch: list[Any]) -> None:
        await self.judge((r.key, r.value, r.headers, None) for r in batch)

    async def judge(self, messages: Iterable[tuple[Any, Any, Any, Fact | None]]) -> None:
        """Judge screened messages (subject, value, headers as screening made them, and
        the facts where at hand), write the verdicts and then the states."""
        touched: dict[bytes, SubjectState] = {}
        out: list[Outgoing] = []
        for key, value, headers, fact in messages:
            state = touched.get(key) or self.subjects.get(key) or SubjectState()
            found = dict(headers or ())
            source = _provenance_of(found)
            if state.already_judged(source.partition, source.offset):
                continue  # a redelivery after a restart or rebalance: judged before
            state, outputs = self._verdict(state, key, value, headers, found, source, fact)
            touched[key] = state.judging(source.partition, source.offset)
            out += outputs
        await self.write(touched, out)

    async def write(self, states: dict[bytes, SubjectState], out: list[Outgoing]) -> None:
        # verdicts are acknowledged before the state records them; a crash in between is
        # repaired on the next assignment by `complete_from_output`. So is a send that
        # fails in between (or half-way through the verdicts): the batch is not redone in
        # place, against a state that does not know the verdicts already written
        await self.processors[1].fence()  # nothing written once the partitions moved
        try:
            self.advance(await send_all(self.producer, out))
            failpoint("admit:verdicts-sent")
            await write_tables(self.producer, [(self.subjects, {**states, **self.marks()})])
        except KafkaError as exc:
            if not out:
                raise  # nothing judged was written: the batch can be redone
            raise StartAfresh("verdicts may be written that no state records yet") from exc
        for key, state in states.items():
            if state.held:
                self.holding.add(key)
            else:
                self.holding.discard(key)

    # -- the grace period's end: a timer, not only the next event of the subject ---------
    async def expire_held(self, stop: asyncio.Event) -> None:
        """Refuse the events held longer than the grace period, every second or so."""
        every = max(0.2, min(1.0, self.grace_s / 4)) if self.grace_s > 0 else 1.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if self.holding and not stop.is_set():
                async with self.processors[1].lock:
                    try:
                        await self.expire_due(time.time())
                    except Fenced:  # their new owner expires them
                        log.info("not expiring held events: the partitions are moving")

    async def expire_due(self, now: float) -> None:
        states: dict[bytes, SubjectState] = {}
        out: list[Outgoing] = []
        for key in list(self.holding):
            state = self.subjects.get(key)
            if not isinstance(state, SubjectState):  # its partition was revoked
                self.holding.discard(key)
                continue
            state, expired = expire(state, now, self.grace_s)
            for held in expired:
                waited = round(now - held.since)
                message = (
                    f"{held.reason.value}: held {waited} s for an earlier event of its subject"
                )
                reason = FieldError(held.reason.value, None, message)
                out += self.refused(key, held, reason)
            if expired:
                states[key] = state
        if states:
            await self.write(states, out)

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
        message is recognised as judged and nothing reaches the ledger twice; and take
        the events their states hold into the grace timer's care."""
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
            position = int(headers[_PARTITION]), int(headers[_OFFSET])
            completed[key] = state.judging(*position).without_held(*position)
        for tp, end in ends.items():
            self.outputs[tp] = max(self.outputs.get(tp, 0), end)
        if completed:
            log.warning("completed %d subject states from verdicts already written", len(completed))
        await self.processors[1].fence()
        await write_tables(
            self.producer, [(self.subjects, {**completed, **self.marks(partitions)})]
        )
        # the events they hold (a killed or rebalanced owner's) expire here now: without
        # the timer, only another event of their subject would judge them again
        for partition, key, state in self.subjects.owned():
            if partition in partitions and isinstance(state, SubjectState) and state.held:
                self.holding.add(key)
