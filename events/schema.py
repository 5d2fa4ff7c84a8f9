"""Event schemas, v1: the envelope and the five event types of CONTRACT section 3.

Models are frozen and strict (a JSON string is not an integer), unknown fields are
rejected, and every limit rejects rather than truncates.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
MAX_MESSAGE_BYTES = 64 * 1024
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"


def _between(lo: float, hi: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not lo <= value <= hi:
            raise PydanticCustomError(
                "out_of_range", "must be between {lo} and {hi}", {"lo": lo, "hi": hi}
            )
        return value

    return check


Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ChecklistItem = Title
Text = Annotated[str, StringConstraints(max_length=5000)]
Rationale = Annotated[str, StringConstraints(min_length=1, max_length=5000)]
Summary = Annotated[str, StringConstraints(max_length=2000)]
Scope = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Metric = Annotated[str, StringConstraints(min_length=1, max_length=500)]
FlagText = Annotated[str, StringConstraints(min_length=1, max_length=100)]


def _bounds(lo: float, hi: float) -> Any:
    """The range in the JSON Schema too (the check itself words its own error)."""
    return Field(json_schema_extra={"minimum": lo, "maximum": hi})


Dimension = Annotated[int, AfterValidator(_between(0, 5)), _bounds(0, 5)]
Severity = Annotated[int, AfterValidator(_between(1, 5)), _bounds(1, 5)]
Percent = Annotated[float, AfterValidator(_between(0, 100)), _bounds(0, 100)]
Multiplier = Annotated[float, AfterValidator(_between(0.5, 1.2)), _bounds(0.5, 1.2)]


_ZONES: dict[timedelta, timezone] = {}  # one per offset met, up to `MAX_ZONES`
MAX_ZONES = 1024  # real offsets are a few dozen; a sender making up more gets no cache


def _stdlib_offset(value: datetime) -> datetime:
    """The same instant and offset with a `datetime.timezone` (pydantic's own tzinfo
    makes every comparison call back into it: ~1.6 us against ~0.05 us), one object per
    offset. An instant read by `_rfc3339` has one already: UTC's is returned as is."""
    zone = value.tzinfo
    if zone is None or zone is UTC:
        return value
    offset = value.utcoffset()
    assert offset is not None  # noqa: S101 - an aware instant has one
    shared = _ZONES.get(offset)
    if shared is zone:
        return value
    if shared is None:
        shared = timezone(offset)
        if len(_ZONES) < MAX_ZONES:
            _ZONES[offset] = shared
    return value.replace(tzinfo=shared)


# RFC 3339's own shape, as the ledger writes instants and CRMs send them: read by the
# stdlib, which gives a `datetime.timezone` at once (1.6 -> 0.9 us an instant, the
# offset's replacement by `_stdlib_offset` included; a request state holds ~8)
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)", re.ASCII)


def _rfc3339(value: Any) -> Any:
    """An instant in RFC 3339's shape read with `datetime.fromisoformat` (the same
    instant and offset pydantic reads), to pass on as a datetime; anything else (another
    shape pydantic accepts, or one it refuses, a day 32 among them) left to pydantic,
    which reads it or words the error as before."""
    if type(value) is str and _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _text_only(kind: str) -> Callable[[Any], Any]:
    """JSON gives instants and days as strings (RFC 3339); a number is not one, though
    pydantic's lax mode would read it as seconds since 1970."""

    def check(value: Any) -> Any:
        if isinstance(value, int | float):
            raise PydanticCustomError(f"{kind}_type", "must be an RFC 3339 string")
        return value

    if kind == "datetime":
        return lambda value: _rfc3339(check(value))

    return check


Timestamp = Annotated[
    AwareDatetime,
    Field(strict=False),
    BeforeValidator(_text_only("datetime")),
    AfterValidator(_stdlib_offset),
]
Instant = Annotated[  # for read-model states
    datetime, BeforeValidator(_rfc3339), AfterValidator(_stdlib_offset)
]
Day = Annotated[date, Field(strict=False), BeforeValidator(_text_only("date"))]

RequestKind = Literal["partner_proposal", "customer_demand", "vendor_support"]
Ask = Literal[
    "exclusivity",
    "price_parity",
    "mdf",
    "discount_without_scope_change",
    "unrealistic_timeline",
    "cost_cut_quality",
    "non_compliant",
    "co_sell",
    "co_market",
    "marketplace",
    "pilot",
]
RiskFactor = Literal["regulatory_exposure", "data_handling", "exclusivity", "channel_conflict"]
Outcome = Literal["provisional_yes", "conditional_no", "decline", "hold", "scaled", "withdrawn"]
Redirect = Literal["directory", "community", "api_guide", "office_hours", "none"]
RevisitTrigger = Literal["scheduled", "partner_returned", "pilot_review"]
EscalationKind = Literal[
    "complaint",
    "threat_to_churn",
    "partner_fired",
    "abusive_conduct",
    "unrealistic_demand",
    "discount_pressure",
    "non_compliant_request",
    "scope_creep",
]


_FIELDS_SETS: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}


def shared_fields_set(model: type[BaseModel], names: Any) -> set[str]:
    """One set object per model and set of field names, shared by every instance that
    has them. Pydantic gives each instance its own `__pydantic_fields_set__` (~700 bytes
    for a dozen fields), which was more than half of a request state's memory (18.3 KB
    parsed, 7.6 KB with the sets shared) and of its allocations; pydantic never changes
    a frozen model's set in place (`model_copy` changes a copy). Bounded: a model has
    few combinations of the optional fields it was given."""
    key = (model, frozenset(names))
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        shared = _FIELDS_SETS[key] = set(names)
    return shared


_EVERY_FIELD: dict[type[BaseModel], set[str]] = {}


class SharedFieldsSet(BaseModel):
    """Frozen models whose instances share their fields-set objects (`shared_fields_set`)."""

    def model_post_init(self, context: Any, /) -> None:
        model = type(self)
        given = self.__pydantic_fields_set__
        every = _EVERY_FIELD.get(model)
        if every is None:
            every = _EVERY_FIELD[model] = shared_fields_set(model, model.model_fields)
        # every field given, as in any JSON a model wrote (states read back): that one set
        shared = every if len(given) == len(every) else shared_fields_set(model, given)
        object.__setattr__(self, "__pydantic_fields_set__", shared)


class _Strict(SharedFieldsSet):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


def _required_for(field: str, outcome: str) -> PydanticCustomError:
    return PydanticCustomError(
        "required_for_outcome",
        "{field}: is required when outcome is {outcome}",
        {"field": field, "outcome": outcome},
    )


def _when(field: str, values: list[str], then: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema for a cross-field rule: when `field` is one of `values`, `then` holds."""
    return {"if": {"properties": {field: {"enum": values}}, "required": [field]}, "then": then}


def _present(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [field], "properties": {field: schema}}


class IntakeData(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _when("kind", ["customer_demand"], _present("customer_id", {"type": "string"}))
            ]
        }
    )
    request_id: Id
    kind: RequestKind
    title: Title
    description: Text | None = None
    owner: Id
    partner_id: Id | None = None
    customer_id: Id | None = None
    vendor_id: Id | None = None
    first_contact_at: Timestamp | None = None
    icp_overlap_pct: Percent | None = None
    asks: Annotated[tuple[Ask, ...], Field(strict=False)] = ()
    value_estimate: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _customer_demand_names_the_customer(self) -> IntakeData:
        if self.kind == "customer_demand" and self.customer_id is None:
            raise PydanticCustomError(
                "required_for_kind",
                "{field}: is required when kind is {kind}",
                {"field": "customer_id", "kind": "customer_demand"},
            )
        return self


class Risk(_Strict):
    factor: RiskFactor
    multiplier: Multiplier
    critical: bool = False


class RedFlag(_Strict):
    flag: FlagText
    severity: Literal["hard", "soft"]


class ScoreData(_Strict):
    request_id: Id
    fit: Dimension
    advantage: Dimension
    integrity: Dimension
    readiness: Dimension
    risks: Annotated[tuple[Risk, ...], Field(strict=False)] = ()
    red_flags: Annotated[tuple[RedFlag, ...], Field(strict=False)] = ()
    notes: Text | None = None


class Pilot(_Strict):
    scope: Scope
    success_metric: Metric
    review_on: Day | None = None


class DecisionData(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _when("outcome", ["conditional_no"], _present("checklist", {"type": "array"})),
                _when(
                    "outcome",
                    ["conditional_no", "hold"],
                    _present("revisit_on", {"type": "string"}),
                ),
                _when("outcome", ["provisional_yes"], _present("pilot", {"type": "object"})),
                {
                    "if": {"not": {"properties": {"outcome": {"const": "decline"}}}},
                    "then": {"properties": {"redirect": {"type": "null"}}},
                },
            ]
        }
    )
    request_id: Id
    outcome: Outcome
    rationale: Rationale
    checklist: (
        Annotated[tuple[ChecklistItem, ...], Field(strict=False, min_length=1, max_length=5)] | None
    ) = None
    revisit_on: Day | None = None
    pilot: Pilot | None = None
    redirect: Redirect | None = None

    @model_validator(mode="after")
    def _outcome_brings_what_it_needs(self) -> DecisionData:
        outcome = self.outcome
        if outcome == "conditional_no" and self.checklist is None:
            raise _required_for("checklist", outcome)
        if outcome in ("conditional_no", "hold") and self.revisit_on is None:
            raise _required_for("revisit_on", outcome)
        if outcome == "provisional_yes" and self.pilot is None:
            raise _required_for("pilot", outcome)
        if self.redirect is not None and outcome != "decline":
            raise PydanticCustomError(
                "only_for_decline",
                "{field}: is only allowed when outcome is decline",
                {"field": "redirect"},
            )
        return self


class RevisitData(_Strict):
    request_id: Id
    trigger: RevisitTrigger
    notes: Text | None = None


class EscalationData(_Strict):
    customer_id: Id
    partner_id: Id
    request_id: Id | None = None
    kind: EscalationKind
    severity: Severity
    summary: Summary | None = None


class _Envelope(_Strict):
    event_id: Annotated[UUID, Field(strict=False)]
    schema_version: Literal[1]
    occurred_at: Timestamp
    source: Id
    actor: Id | None = None
    correlation_id: Id | None = None


class Intake(_Envelope):
    """A request arrived."""

    type: Literal["intake"]
    data: IntakeData


class Score(_Envelope):
    """A F.A.I.R. score was given."""

    type: Literal["score"]
    data: ScoreData


class Decision(_Envelope):
    """A request was decided."""

    type: Literal["decision"]
    data: DecisionData


class Revisit(_Envelope):
    """A decided request was reopened."""

    type: Literal["revisit"]
    data: RevisitData


class Escalation(_Envelope):
    """A customer escalated against a partner."""

    type: Literal["escalation"]
    data: EscalationData


AnyEvent = Intake | Score | Decision | Revisit | Escalation
Event = Annotated[AnyEvent, Field(discriminator="type")]
EVENT_TYPES: dict[str, type[AnyEvent]] = {
    "intake": Intake,
    "score": Score,
    "decision": Decision,
    "revisit": Revisit,
    "escalation": Escalation,
}
