"""Generated events: everything valid round-trips; any one broken rule is always caught."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from events import InvalidEvent, decode, decode_recorded, encode, from_mapping
from ledger.entrypoints.history import generate
from tests.unit.test_schema import CASES

ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z")
stamps = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(-12 * 60, 14 * 60).map(lambda m: m - m % 15),
)
text = st.text(max_size=50)


def envelope(kind: str, data: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str),
            "type": st.just(kind),
            "schema_version": st.just(1),
            "occurred_at": stamps,
            "source": ids,
            "data": data,
        },
        optional={"actor": ids, "correlation_id": ids},
    )


intakes = envelope(
    "intake",
    st.fixed_dictionaries(
        {
            "request_id": ids,
            "kind": st.sampled_from(["partner_proposal", "vendor_support"]),
            "title": st.text(min_size=1, max_size=200),
            "owner": ids,
        },
        optional={
            "description": text,
            "partner_id": ids,
            "customer_id": ids,
            "first_contact_at": stamps,
            "icp_overlap_pct": st.floats(0, 100),
            "asks": st.lists(st.sampled_from(["mdf", "co_sell", "pilot", "exclusivity"])),
            "value_estimate": st.floats(0, 1e9),
        },
    ),
)
dimension = st.integers(0, 5)
scores = envelope(
    "score",
    st.fixed_dictionaries(
        {
            "request_id": ids,
            "fit": dimension,
            "advantage": dimension,
            "integrity": dimension,
            "readiness": dimension,
        },
        optional={
            "risks": st.lists(
                st.fixed_dictionaries(
                    {
                        "factor": st.sampled_from(["regulatory_exposure", "data_handling"]),
                        "multiplier": st.floats(0.5, 1.2),
                        "critical": st.booleans(),
                    }
                ),
                max_size=3,
            ),
            "notes": text,
        },
    ),
)
escalations = envelope(
    "escalation",
    st.fixed_dictionaries(
        {
            "customer_id": ids,
            "partner_id": ids,
            "kind": st.sampled_from(["complaint", "partner_fired", "abusive_conduct"]),
            "severity": st.integers(1, 5),
        },
        optional={"request_id": ids, "summary": text},
    ),
)


@given(st.one_of(intakes, scores, escalations))
def test_generated_valid_events_decode_and_roundtrip(payload: dict[str, Any]) -> None:
    event = decode(orjson.dumps(payload))
    assert event.type == payload["type"]
    assert decode(encode(event)) == event
    assert decode_recorded(orjson.dumps(payload)) == event  # the projector's fast path
    assert event.occurred_at.tzinfo is not None
    assert datetime.fromisoformat(payload["occurred_at"]).astimezone(UTC) == event.occurred_at


@given(st.sampled_from(CASES), st.uuids(), ids)
def test_any_single_broken_rule_is_rejected_naming_its_field(
    case: tuple, event_id: Any, source: str
) -> None:
    from tests.unit.test_schema import VALID

    _, kind, mutate, field, words = case
    payload = copy.deepcopy(VALID[kind])
    payload["event_id"], payload["source"] = str(event_id), source
    mutate(payload)
    try:
        from_mapping(payload)
    except InvalidEvent as exc:
        assert any(e.field == field and words in e.message for e in exc.errors)
    else:
        raise AssertionError(f"{case[0]} was accepted")


@given(
    st.text(min_size=1).filter(
        lambda s: not all(c.isalnum() or c in "._:-" for c in s) or len(s) > 64
    )
)
def test_ids_outside_the_pattern_are_rejected(bad: str) -> None:
    payload = {
        "event_id": "0b9f6c1e-5d0e-4c2a-9a57-3f1d2b7c9e01",
        "type": "revisit",
        "schema_version": 1,
        "occurred_at": "2026-03-02T09:00:00Z",
        "source": "crm",
        "data": {"request_id": bad, "trigger": "scheduled"},
    }
    try:
        from_mapping(payload)
    except InvalidEvent as exc:
        assert [e.field for e in exc.errors] == ["data.request_id"]
    else:
        raise AssertionError(f"{bad!r} was accepted as an id")


def test_the_recorded_fast_path_reads_the_demo_history_as_decode_does() -> None:
    for event in generate(until=datetime(2026, 6, 30, tzinfo=UTC)):
        raw = orjson.dumps(event)
        assert decode_recorded(raw) == decode(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["intake", "score", "decision", "revisit", "escalation", 1, 2]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
envelope_keys = st.sampled_from(
    ["event_id", "type", "schema_version", "occurred_at", "source", "actor", "data"]
)
shaped_like_events = st.dictionaries(envelope_keys, json_values, max_size=7)


def _only_events_or_invalid(raw: bytes) -> None:
    try:
        decode(raw)
    except InvalidEvent as exc:
        assert exc.errors, "an InvalidEvent names at least one broken rule"


@given(st.binary(max_size=200))
def test_decode_judges_arbitrary_bytes(raw: bytes) -> None:
    _only_events_or_invalid(raw)


@given(json_values)
def test_decode_judges_json_of_any_shape(value: Any) -> None:
    _only_events_or_invalid(orjson.dumps(value))


@given(shaped_like_events, st.sampled_from([None, "intake", "decision", "escalation"]))
def test_decode_judges_envelopes_with_values_of_any_shape(obj: dict, kind: str | None) -> None:
    if kind is not None:
        obj = {**obj, "type": kind, "schema_version": 1}
    _only_events_or_invalid(orjson.dumps(obj))


def test_an_unhashable_type_is_a_schema_error_naming_the_field() -> None:
    for raw in (b'{"type":[]}', b'{"type":{}}', b'{"type":["intake"],"schema_version":1}'):
        try:
            decode(raw)
        except InvalidEvent as exc:
            assert [(e.code, e.field) for e in exc.errors] == [("schema", "type")]
        else:
            raise AssertionError(f"{raw!r} was accepted")


def test_a_number_is_not_an_instant_or_a_day() -> None:
    base = {
        "event_id": "e3e70682-c209-1cac-a29f-6fbed82c07cd",
        "type": "revisit",
        "schema_version": 1,
        "occurred_at": "2026-03-02T09:00:00Z",
        "source": "crm",
        "data": {"request_id": "R1", "trigger": "scheduled"},
    }
    decode(orjson.dumps(base))  # the string form is fine
    for field, value in (("occurred_at", 0), ("occurred_at", 1.7e9)):
        try:
            decode(orjson.dumps({**base, field: value}))
        except InvalidEvent as exc:
            assert [(e.field, e.message) for e in exc.errors] == [
                ("occurred_at", "must be an RFC 3339 timestamp")
            ]
        else:
            raise AssertionError(f"{field}={value!r} was accepted")
