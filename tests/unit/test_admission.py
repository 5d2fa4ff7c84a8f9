"""Screening hands admission an event's facts in a header, so admission does not parse
the event again; the verdicts are the same with or without it, and never carry it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from ledger.adapters.config import Settings
from ledger.rules.lifecycle import Fact, SubjectState
from tests.factories import decision, intake
from workers.validator import _FACT, Validator, _provenance_of


@dataclass
class Record:
    """The fields of a consumed record that the validator reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
def validator() -> Validator:
    return Validator(Settings(topic_prefix="t."), "127.0.0.1:1", producer=None)  # type: ignore[arg-type]


def screened(validator: Validator, event: dict[str, Any], offset: int) -> Record:
    inbox = Record(validator.topics.inbox, 2, offset, b"crm-key", orjson.dumps(event))
    out = validator.screened(inbox)
    assert out.topic == validator.topics.by_subject and out.key is not None
    assert out.value is not None
    return Record(out.topic, 0, offset, out.key, out.value, list(out.headers or ()))


def judge(validator: Validator, state: SubjectState, record: Record) -> tuple[SubjectState, Any]:
    found = dict(record.headers)
    return validator.verdict(state, record, found, _provenance_of(found))


def comparable(out: Any) -> Any:
    """An output without its refusal's time of writing."""
    value = orjson.loads(out.value)
    value.pop("rejected_at", None)
    return out.topic, out.key, value, out.headers


def test_the_fact_header_names_what_the_event_says(validator: Validator) -> None:
    event = decision("R-7", outcome="provisional_yes")
    record = screened(validator, event, 5)
    fact = Fact.from_json(orjson.loads(dict(record.headers)[_FACT]))
    assert fact == Fact.of_validated_json(event)
    assert fact == Fact(str(event["event_id"]), "decision", "R-7", "provisional_yes")


def test_verdicts_with_and_without_the_header_are_the_same_and_never_carry_it(
    validator: Validator,
) -> None:
    history = [
        intake("R-8"),
        decision("R-8", outcome="provisional_yes"),
        intake("R-8", name="intake-again"),
    ]
    with_header = [screened(validator, e, i) for i, e in enumerate(history)]
    # a record screened before the header existed
    without = [
        Record(r.topic, r.partition, r.offset, r.key, r.value,
               [(k, v) for k, v in r.headers if k != _FACT])
        for r in with_header
    ]  # fmt: skip
    results = []
    for records in (with_header, without):
        state, outputs = SubjectState(), []
        for record in records:
            state, out = judge(validator, state, record)
            outputs += out
        results.append((state, outputs))
    assert results[0][0] == results[1][0]
    assert [comparable(o) for o in results[0][1]] == [comparable(o) for o in results[1][1]]
    state, outputs = results[0]
    assert state.status == "decided" and state.had_provisional_yes
    assert [o.topic for o in outputs] == [validator.topics.events] * 2 + [validator.topics.rejected]
    for out in outputs:
        assert _FACT not in dict(out.headers or ())
    assert outputs[0].value == with_header[0].value  # recorded as sent
    refusal = orjson.loads(outputs[2].value)
    assert refusal["reasons"][0]["code"] == "duplicate_intake", refusal
