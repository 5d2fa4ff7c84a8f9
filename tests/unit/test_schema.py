"""Every rule of CONTRACT section 3, one case each: the error names the field and the rule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from events import InvalidEvent, decode, encode, from_mapping, json_schema, subject_of
from events.schema import MAX_MESSAGE_BYTES
from tests.factories import decision, escalation, intake, revisit, score

Mutation = Callable[[dict[str, Any]], None]


def errors_of(event: dict[str, Any]) -> list[tuple[str | None, str]]:
    with pytest.raises(InvalidEvent) as info:
        from_mapping(event)
    return [(e.field, e.message) for e in info.value.errors]


def _set(path: str, value: Any) -> Mutation:
    def mutate(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for p in parents:
            target = target[p]
        del target[last]

    return mutate


VALID = {
    "intake": intake(
        "REQ-1",
        customer_id="acme",
        partner_id="p1",
        icp_overlap_pct=50,
        asks=["co_sell"],
        value_estimate=10.5,
        description="d",
    ),
    "score": score(
        "REQ-1",
        risks=[{"factor": "data_handling", "multiplier": 0.9, "critical": False}],
        red_flags=[{"flag": "late", "severity": "soft"}],
        notes="n",
    ),
    "decision": decision("REQ-1", "conditional_no"),
    "revisit": revisit("REQ-1", "partner_returned", notes="back"),
    "escalation": escalation("acme", "p1", "partner_fired", 5, request_id="REQ-1", summary="s"),
}

# (case id, event type, mutation, field named in the error, words in the reason)
CASES: list[tuple[str, str, Mutation, str | None, str]] = [
    # envelope
    ("event_id missing", "intake", _drop("event_id"), "event_id", "is required"),
    ("event_id not a uuid", "intake", _set("event_id", "abc"), "event_id", "must be a UUID"),
    (
        "naive timestamp",
        "intake",
        _set("occurred_at", "2026-03-02T09:00:00"),
        "occurred_at",
        "UTC offset",
    ),
    ("timestamp garbage", "intake", _set("occurred_at", "yesterday"), "occurred_at", "RFC 3339"),
    ("source missing", "score", _drop("source"), "source", "is required"),
    ("source bad id", "score", _set("source", "has space"), "source", "1-64 characters"),
    ("actor too long id", "score", _set("actor", "a" * 65), "actor", "1-64 characters"),
    ("unknown top-level field", "intake", _set("priority", 1), "priority", "not a known field"),
    (
        "unknown data field",
        "intake",
        _set("data.colour", "red"),
        "data.colour",
        "not a known field",
    ),
    (
        "unknown schema_version",
        "intake",
        _set("schema_version", 2),
        "schema_version",
        "supported versions: 1",
    ),
    (
        "schema_version as string",
        "intake",
        _set("schema_version", "1"),
        "schema_version",
        "supported versions: 1",
    ),
    ("schema_version missing", "intake", _drop("schema_version"), "schema_version", "is required"),
    ("unknown type", "intake", _set("type", "poke"), "type", "must be one of"),
    # intake
    ("request_id missing", "intake", _drop("data.request_id"), "data.request_id", "is required"),
    (
        "request_id bad chars",
        "intake",
        _set("data.request_id", "REQ/1"),
        "data.request_id",
        "1-64 characters",
    ),
    (
        "request_id empty",
        "intake",
        _set("data.request_id", ""),
        "data.request_id",
        "1-64 characters",
    ),
    ("kind unknown", "intake", _set("data.kind", "gossip"), "data.kind", "must be one of"),
    (
        "title too long",
        "intake",
        _set("data.title", "t" * 201),
        "data.title",
        "at most 200 characters",
    ),
    ("title empty", "intake", _set("data.title", ""), "data.title", "must not be empty"),
    (
        "description too long",
        "intake",
        _set("data.description", "d" * 5001),
        "data.description",
        "at most 5000 characters",
    ),
    ("owner missing", "intake", _drop("data.owner"), "data.owner", "is required"),
    (
        "customer demand without customer",
        "intake",
        lambda e: (e["data"].update(kind="customer_demand"), e["data"].pop("customer_id")),
        "data.customer_id",
        "required when kind is customer_demand",
    ),
    (
        "icp over 100",
        "intake",
        _set("data.icp_overlap_pct", 100.5),
        "data.icp_overlap_pct",
        "between 0 and 100",
    ),
    (
        "icp negative",
        "intake",
        _set("data.icp_overlap_pct", -1),
        "data.icp_overlap_pct",
        "between 0 and 100",
    ),
    ("ask unknown", "intake", _set("data.asks", ["bribe"]), "data.asks.0", "must be one of"),
    (
        "value negative",
        "intake",
        _set("data.value_estimate", -1),
        "data.value_estimate",
        "at least 0",
    ),
    (
        "first contact naive",
        "intake",
        _set("data.first_contact_at", "2026-03-01T00:00:00"),
        "data.first_contact_at",
        "UTC offset",
    ),
    # score
    ("fit above 5", "score", _set("data.fit", 7), "data.fit", "between 0 and 5"),
    ("readiness below 0", "score", _set("data.readiness", -1), "data.readiness", "between 0 and 5"),
    (
        "integrity as string",
        "score",
        _set("data.integrity", "4"),
        "data.integrity",
        "must be an integer",
    ),
    (
        "advantage as float",
        "score",
        _set("data.advantage", 3.5),
        "data.advantage",
        "must be an integer",
    ),
    ("advantage missing", "score", _drop("data.advantage"), "data.advantage", "is required"),
    (
        "risk factor unknown",
        "score",
        _set("data.risks.0.factor", "weather"),
        "data.risks.0.factor",
        "must be one of",
    ),
    (
        "risk multiplier high",
        "score",
        _set("data.risks.0.multiplier", 1.3),
        "data.risks.0.multiplier",
        "between 0.5 and 1.2",
    ),
    (
        "risk multiplier low",
        "score",
        _set("data.risks.0.multiplier", 0.4),
        "data.risks.0.multiplier",
        "between 0.5 and 1.2",
    ),
    (
        "risk critical not bool",
        "score",
        _set("data.risks.0.critical", "yes"),
        "data.risks.0.critical",
        "true or false",
    ),
    (
        "red flag too long",
        "score",
        _set("data.red_flags.0.flag", "f" * 101),
        "data.red_flags.0.flag",
        "at most 100 characters",
    ),
    (
        "red flag severity",
        "score",
        _set("data.red_flags.0.severity", "medium"),
        "data.red_flags.0.severity",
        "must be one of",
    ),
    (
        "notes too long",
        "score",
        _set("data.notes", "n" * 5001),
        "data.notes",
        "at most 5000 characters",
    ),
    # decision
    (
        "outcome unknown",
        "decision",
        _set("data.outcome", "maybe"),
        "data.outcome",
        "must be one of",
    ),
    (
        "rationale empty",
        "decision",
        _set("data.rationale", ""),
        "data.rationale",
        "must not be empty",
    ),
    ("rationale missing", "decision", _drop("data.rationale"), "data.rationale", "is required"),
    (
        "conditional_no without checklist",
        "decision",
        _drop("data.checklist"),
        "data.checklist",
        "required when outcome is conditional_no",
    ),
    (
        "conditional_no without revisit_on",
        "decision",
        _drop("data.revisit_on"),
        "data.revisit_on",
        "required when outcome is conditional_no",
    ),
    (
        "checklist empty",
        "decision",
        _set("data.checklist", []),
        "data.checklist",
        "at least 1 item",
    ),
    (
        "checklist too long",
        "decision",
        _set("data.checklist", ["x"] * 6),
        "data.checklist",
        "at most 5 items",
    ),
    (
        "checklist item too long",
        "decision",
        _set("data.checklist", ["x" * 201]),
        "data.checklist.0",
        "at most 200 characters",
    ),
    (
        "revisit_on not a date",
        "decision",
        _set("data.revisit_on", "soon"),
        "data.revisit_on",
        "must be a date",
    ),
    (
        "redirect on conditional_no",
        "decision",
        _set("data.redirect", "directory"),
        "data.redirect",
        "only allowed when outcome is decline",
    ),
    # revisit
    ("trigger unknown", "revisit", _set("data.trigger", "whim"), "data.trigger", "must be one of"),
    (
        "revisit notes too long",
        "revisit",
        _set("data.notes", "n" * 5001),
        "data.notes",
        "at most 5000 characters",
    ),
    # escalation
    (
        "escalation kind unknown",
        "escalation",
        _set("data.kind", "rude"),
        "data.kind",
        "must be one of",
    ),
    ("severity 0", "escalation", _set("data.severity", 0), "data.severity", "between 1 and 5"),
    ("severity 6", "escalation", _set("data.severity", 6), "data.severity", "between 1 and 5"),
    ("partner missing", "escalation", _drop("data.partner_id"), "data.partner_id", "is required"),
    (
        "summary too long",
        "escalation",
        _set("data.summary", "s" * 2001),
        "data.summary",
        "at most 2000 characters",
    ),
]


@pytest.mark.parametrize("kind", sorted(VALID))
def test_the_valid_example_of_each_type_is_accepted(kind: str) -> None:
    event = from_mapping(copy.deepcopy(VALID[kind]))
    assert event.type == kind


@pytest.mark.parametrize(
    ("kind", "mutate", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_rule_is_enforced_and_named(
    kind: str, mutate: Mutation, field: str | None, words: str
) -> None:
    event = copy.deepcopy(VALID[kind])
    mutate(event)
    errors = errors_of(event)
    assert any(f == field and words in m for f, m in errors), errors


def test_decision_rules_for_each_outcome() -> None:
    yes = decision("R", "provisional_yes")
    del yes["data"]["pilot"]
    assert errors_of(yes) == [("data.pilot", "is required when outcome is provisional_yes")]
    hold = decision("R", "hold")
    del hold["data"]["revisit_on"]
    assert errors_of(hold) == [("data.revisit_on", "is required when outcome is hold")]
    for outcome in ("decline", "scaled", "withdrawn"):
        from_mapping(decision("R", outcome))
    from_mapping(decision("R", "decline", redirect="office_hours"))


def test_pilot_review_on_is_optional_and_a_date() -> None:
    yes = decision("R", "provisional_yes")
    yes["data"]["pilot"]["review_on"] = "2026-05-01"
    assert str(from_mapping(yes).data.pilot.review_on) == "2026-05-01"  # type: ignore[union-attr]
    yes["data"]["pilot"]["review_on"] = "next month"
    assert errors_of(yes) == [("data.pilot.review_on", "must be a date (YYYY-MM-DD)")]


def test_boundaries_are_inclusive() -> None:
    from_mapping(
        score(
            "R",
            0,
            5,
            0,
            5,
            risks=[
                {"factor": "exclusivity", "multiplier": 0.5},
                {"factor": "exclusivity", "multiplier": 1.2},
            ],
        )
    )
    from_mapping(escalation("c", "p", severity=1))
    from_mapping(escalation("c", "p", severity=5))
    from_mapping(intake("R", icp_overlap_pct=0))
    from_mapping(intake("x" * 64, icp_overlap_pct=100, title="t" * 200))


def test_several_broken_rules_are_all_reported() -> None:
    event = score("R", fit=9, readiness=-2)
    del event["source"]
    fields = {f for f, _ in errors_of(event)}
    assert fields == {"source", "data.fit", "data.readiness"}


def test_bytes_over_64_kib_are_rejected_not_truncated() -> None:
    event = intake("R", description="d" * 4000)
    raw = orjson.dumps(event)
    padding = b" " * (MAX_MESSAGE_BYTES - len(raw) + 1)
    with pytest.raises(InvalidEvent) as info:
        decode(raw + padding)
    assert info.value.errors[0].code == "too_large"
    assert decode(raw + padding[:-1]).data.description == "d" * 4000  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "undecodable"),
        (b"\xff\xfe", "undecodable"),
        (b"[1, 2]", "schema"),
        (b"42", "schema"),
    ],
)
def test_bytes_that_are_not_an_event_object(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(raw)
    assert info.value.errors[0].code == code


def test_codec_roundtrip_and_subject() -> None:
    for payload in VALID.values():
        event = from_mapping(copy.deepcopy(payload))
        assert decode(encode(event)) == event
    assert subject_of(from_mapping(VALID["escalation"])) == "acme"
    assert subject_of(from_mapping(VALID["score"])) == "REQ-1"


def test_offsets_are_kept_and_first_contact_is_optional() -> None:
    event = from_mapping(intake("R", at="2026-03-02T09:15:00+01:00"))
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.isoformat() == "2026-03-02T09:15:00+01:00"
    assert event.data.first_contact_at is None  # type: ignore[union-attr]


def test_instants_carry_a_stdlib_zone_however_many_offsets_senders_make_up() -> None:
    """Each instant keeps its offset in a `datetime.timezone` (one kept per offset met),
    and a sender spelling more offsets than any clock has cannot grow what is kept."""
    from datetime import timezone

    from events import schema

    offsets = [(sign, hours, minutes) for sign in "+-" for hours in range(24)
               for minutes in range(60)]  # fmt: skip
    assert len(offsets) > schema.MAX_ZONES
    for sign, hours, minutes in offsets:
        at = f"2026-03-02T09:15:00{sign}{hours:02}:{minutes:02}"
        event = decode(orjson.dumps(intake("R", at=at)))
        assert type(event.occurred_at.tzinfo) is timezone
        assert event.occurred_at.isoformat() == at.replace("-00:00", "+00:00")
    assert len(schema._ZONES) <= schema.MAX_ZONES  # noqa: SLF001


def test_json_schema_covers_every_type() -> None:
    schema = json_schema()
    text = orjson.dumps(schema).decode()
    for name in ("IntakeData", "ScoreData", "DecisionData", "RevisitData", "EscalationData"):
        assert name in text
    assert schema["discriminator"]["propertyName"] == "type"
