"""The API's description (OpenAPI 3.1, served at `/openapi.json`): the parameters the routes
parse (their bounds and choices live here and the routes read them from here) and the
shapes they answer, as pydantic models whose JSON Schemas the document is built from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from events import json_schema as event_json_schema

# -- the parameters: what the routes accept -------------------------------------------
MAX_DAYS = 3650  # ten years: a threshold beyond it means nothing, and costs a walk
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)
STAGES = ("intake", "scored")
FORMATS = ("json", "csv")
BOOLEANS = ("true", "false")
MAX_BODY_BYTES = 1024 * 1024  # POST /events: about 2,000 typical events per request


def _param(name: str, schema: dict[str, Any], description: str, where: str = "query") -> Any:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


AS_OF = _param(
    "as_of",
    {"type": "string", "format": "date-time", "pattern": "^(19|2[0-9])[0-9][0-9]-"},
    "RFC 3339 with an offset, between 1900 and 2999 (default now): the ledger as it stood then",
)
FORMAT = _param("format", {"type": "string", "enum": list(FORMATS)}, "json (default) or csv")
MAX_LIMIT = 10_000
LIMIT = _param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    "a page of at most this many rows: the answer is then {items, total, next_cursor, as_of}",
)
CURSOR = _param(
    "cursor",
    {"type": "string"},
    "the previous page's next_cursor: the next rows of the same list, as of the same instant",
)
PARAMETERS: dict[str, list[Any]] = {
    "/pipeline": [
        _param("owner", {"type": "string"}, "only this owner's requests"),
        _param("kind", {"type": "string"}, "only requests of this kind"),
        _param("stage", {"type": "string", "enum": list(STAGES)}, "only this stage"),
    ],
    "/overdue": [
        _param(
            "days",
            {"type": "integer", "minimum": 0, "maximum": MAX_DAYS},
            "threshold in days (default LEDGER_OVERDUE_DAYS)",
        )
    ],
    "/customers/abuse": [
        _param("flagged", {"type": "string", "enum": list(BOOLEANS)}, "only (un)flagged")
    ],
    "/customers/{customer_id}": [_param("customer_id", {"type": "string"}, "the customer", "path")],
    "/partners": [
        _param("at_risk", {"type": "string", "enum": list(BOOLEANS)}, "only partners (not) at risk")
    ],
    "/partners/{partner_id}": [_param("partner_id", {"type": "string"}, "the partner", "path")],
    "/requests/{request_id}": [_param("request_id", {"type": "string"}, "the request", "path")],
    "/alerts": [_param("kind", {"type": "string"}, "only alerts of this kind")],
}


# -- the answers ----------------------------------------------------------------------
class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Shape):
    """Every error: a machine-readable `error` and a `detail` naming what was wrong."""

    error: str
    detail: Any = None


class StreamHealth(_Shape):
    status: str
    stalled_stages: list[str]
    backlog: dict[str, int]


class Health(_Shape):
    status: str
    ready: bool
    broker_reachable: bool
    stream: StreamHealth
    read_model_lag: dict[str, int]
    events_folded: int
    held: int
    requests: int
    customers: int
    newest_data_age_s: float | None


class PipelineRow(_Shape):
    request_id: str
    kind: str
    title: str
    owner: str
    stage: str
    opened_at: str
    age_days: int
    business_age_days: int
    latest_adjusted_score: float | None
    recommendation: str | None


class OverdueRow(_Shape):
    request_id: str
    reason: str
    owner: str
    title: str
    overdue_since: str
    days_overdue: float


class AbuseRow(_Shape):
    customer_id: str
    escalations: int
    by_kind: dict[str, int]
    distinct_partners: int
    partners_fired: int
    severity_score: int
    last_escalation_at: str | None
    flagged: bool
    reasons: list[str]


class PartnerRow(_Shape):
    partner_id: str
    at_risk: bool
    flagged_customers: list[str]
    requests: int
    open_requests: int
    escalations: int
    support_asks: int
    support_unanswered: int


class PartnerRequest(_Shape):
    request_id: str
    kind: str
    title: str
    customer_id: str | None
    status: str
    opened_at: str
    last_outcome: str | None
    decided_at: str | None


class PartnerEscalation(_Shape):
    customer_id: str
    kind: str
    severity: int
    occurred_at: str
    request_id: str | None
    customer_flagged: bool


class SupportAsks(_Shape):
    count: int
    answered: int
    unanswered: int
    median_business_days_to_answer: float | None
    share_answered_within_target: float | None
    target_business_days: int
    oldest_unanswered: dict[str, Any] | None


class PartnerView(_Shape):
    partner_id: str
    at_risk: bool
    flagged_customers: list[str]
    still_serving_flagged: list[str]
    requests: list[PartnerRequest]
    escalations: list[PartnerEscalation]
    support_asks: SupportAsks


class Metrics(_Shape):
    as_of: str
    decisions: int
    by_outcome: dict[str, int]
    median_business_days_to_decision: float | None
    p90_business_days_to_decision: float | None
    share_decided_within_target: float | None
    revisit_rate: float | None
    pilot_success_rate: float | None
    override_rate: float | None
    median_days_to_revisit: float | None
    declined_partners: int
    bridge_health: float | None
    support_asks_answered: int
    support_asks_unanswered: int
    median_business_days_to_answer_support: float | None
    share_support_answered_within_target: float | None


class TimelineEntry(_Shape):
    event_id: str
    type: str
    occurred_at: str
    actor: str | None
    summary: str


class OverdueReason(_Shape):
    reason: str
    days_overdue: float


class RequestView(_Shape):
    request_id: str
    kind: str
    title: str
    owner: str
    partner_id: str | None
    customer_id: str | None
    status: str
    stage: str
    opened_at: str
    clock_started_at: str
    latest_adjusted_score: float | None
    recommendation: str | None
    last_outcome: str | None
    revisits: int
    overdue: list[OverdueReason]
    timeline: list[TimelineEntry]


class EscalationEntry(_Shape):
    event_id: str
    occurred_at: str
    partner_id: str
    kind: str
    severity: int
    request_id: str | None
    summary: str | None


class CustomerView(AbuseRow):
    history: list[EscalationEntry]


class AlertRow(BaseModel):
    """An alert of `ledger.alerts` (its fields by kind, CONTRACT section 6) with its
    delivery status per webhook."""

    model_config = ConfigDict(extra="allow")
    alert_id: str
    kind: str
    subject_id: str
    raised_at: str
    details: dict[str, Any]
    deliveries: dict[str, dict[str, Any]]


class HeldRow(_Shape):
    subject: str
    type: str
    event_id: str
    reason: str
    inbox_partition: int
    inbox_offset: int
    inbox_key: str | None
    held_since: str
    age_s: float


class Accepted(_Shape):
    accepted: list[str]


class Message(_Shape):
    """The message to send with a request's latest decision; `gaps` names what the
    decision did not record (shown in the body as `[to fill: ...]`)."""

    request_id: str
    outcome: str
    subject: str
    body: str
    gaps: list[str]


SHAPES: list[type[BaseModel]] = [
    Problem, Health, PipelineRow, OverdueRow, AbuseRow, Metrics, RequestView, CustomerView,
    AlertRow, HeldRow, Accepted, Message, PartnerRow, PartnerView,
]  # fmt: skip


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref(Problem))}


def _get(
    summary: str, shape: type[BaseModel], many: bool = False, found: bool = False, csv: bool = True
) -> dict[str, Any]:
    schema: dict[str, Any] = _ref(shape)
    if many:
        rows = {"type": "array", "items": _ref(shape)}
        page = {
            "type": "object",
            "required": ["items", "total", "next_cursor", "as_of"],
            "properties": {
                "items": rows,
                "total": {"type": "integer", "minimum": 0},
                "next_cursor": {"type": ["string", "null"]},
                "as_of": {"type": "string", "format": "date-time"},
            },
        }
        schema = {"anyOf": [rows, page]}  # the whole list, or a page of it (`limit`)
    content = _json(schema)
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {
        "200": {"description": summary, "content": content},
        "400": _problem("a malformed request"),
        "401": _problem("LEDGER_API_TOKEN is set and the bearer token is missing or wrong"),
        "422": _problem("a parameter out of its range or choices (named in `detail`)"),
    }
    if found:
        responses["404"] = _problem("nothing of that id in the ledger")
    return {"summary": summary, "responses": responses}


ROUTES: dict[str, tuple[str, type[BaseModel], bool, bool]] = {
    # path: (summary, shape, a list, may be 404)
    "/pipeline": ("open requests with age and recommendation", PipelineRow, True, False),
    "/overdue": ("overdue requests, most overdue first", OverdueRow, True, False),
    "/customers/abuse": ("per-customer escalation patterns", AbuseRow, True, False),
    "/customers/{customer_id}": ("one customer's history", CustomerView, False, True),
    "/requests/{request_id}": ("one request's state and timeline", RequestView, False, True),
    "/metrics/decisions": ("decision metrics", Metrics, False, False),
    "/alerts": ("alerts, newest first, with delivery status", AlertRow, True, False),
    "/partners": ("partners, those at risk first", PartnerRow, True, False),
    "/partners/{partner_id}": ("one partner's side of the ledger", PartnerView, False, True),
    "/held": ("events held for an earlier event of their subject", HeldRow, True, False),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route, parameter, answer and error."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in SHAPES], ref_template="#/components/schemas/{model}"
    )
    schemas = dict(defs["$defs"])
    # the event schemas refer to their own `$defs`: point them at the components
    event = orjson.loads(
        orjson.dumps(event_json_schema()).replace(b'"#/$defs/', b'"#/components/schemas/')
    )
    clashes = set(event.get("$defs", {})) & set(schemas)
    assert not clashes, f"response and event schemas share names: {clashes}"  # noqa: S101
    schemas.update(event.pop("$defs", {}))
    schemas["Event"] = event
    paths: dict[str, Any] = {}
    for path, (summary, shape, many, found) in ROUTES.items():
        operation = _get(summary, shape, many, found)
        paging = [LIMIT, CURSOR] if many else []
        operation["parameters"] = [*PARAMETERS.get(path, []), AS_OF, FORMAT, *paging]
        paths[path] = {"get": operation}
    message = _get("the message to send with the request's latest decision", Message, csv=False)
    message["responses"]["200"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    message["responses"]["404"] = _problem("no such request, or it has no decision yet")
    message["responses"]["500"] = _problem("a team template (LEDGER_TEMPLATES_DIR) failed")
    message["parameters"] = [
        _param("request_id", {"type": "string"}, "the request", "path"),
        AS_OF,
        _param("format", {"type": "string", "enum": ["json", "text"]}, "json (default) or text"),
    ]
    paths["/requests/{request_id}/message"] = {"get": message}
    paths["/reports/nos-and-whys"] = {
        "get": {
            "summary": "the monthly Nos & Whys for executives",
            "parameters": [
                {
                    **_param(
                        "month",
                        {"type": "string", "pattern": "^(19|2[0-9])[0-9]{2}-(0[1-9]|1[0-2])$"},
                        "the month, as YYYY-MM",
                    ),
                    "required": True,
                },
                _param(
                    "format",
                    {"type": "string", "enum": ["html", "md", "json"]},
                    "html (default, self-contained), md or json",
                ),
            ],  # fmt: skip
            "responses": {
                "200": {
                    "description": "the report",
                    "content": {
                        "text/html": {"schema": {"type": "string"}},
                        "text/markdown": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "object"}},
                    },
                },
                "400": _problem("a malformed request"),
                "401": _problem("LEDGER_API_TOKEN is set and the bearer token is missing or wrong"),
                "422": _problem("a missing or malformed month, or an unknown format"),
            },
        }
    }
    health = _get("always open: readiness, the stream, the broker", Health, csv=False)
    del health["responses"]["401"], health["responses"]["422"]
    health["responses"]["503"] = {
        "description": "the broker is unreachable: no event can be accepted now (same body)",
        "content": _json(_ref(Health)),
    }
    paths["/health"] = {"get": health}
    event_ref = {"$ref": "#/components/schemas/Event"}
    paths["/events"] = {
        "post": {
            "summary": "publish one event or an array: all or nothing",
            "requestBody": {
                "required": True,
                "content": _json(
                    {"anyOf": [event_ref, {"type": "array", "items": event_ref, "minItems": 1}]}
                ),
            },
            "responses": {
                "202": {"description": "every event published", "content": _json(_ref(Accepted))},
                "400": _problem("a malformed request"),
                "401": _problem("the bearer token is missing or wrong"),
                "413": _problem(f"a body over {MAX_BODY_BYTES} bytes: send several requests"),
                "422": _problem("an error per item and field; nothing was published"),
                "503": {
                    **_problem("the broker is unreachable or did not acknowledge in time"),
                    "headers": {
                        "Retry-After": {
                            "description": "seconds to wait before sending the same events",
                            "schema": {"type": "string"},
                        }
                    },
                },
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "partner decision ledger", "version": "1.1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
