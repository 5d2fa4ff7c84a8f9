"""The SQL projection's tables (issue 9): their columns and meaning, and the rows the folds
give for them. Pure: no database here; `ledger.adapters.sql` writes these rows into DuckDB
or PostgreSQL, one code path for both.

Every row comes from the same folds and views as the API (`projections.state`,
`projections.views`), so a SQL query and a route answer alike. Instants are aware
datetimes (TIMESTAMPTZ), days are dates, JSON columns hold JSON text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from events.schema import AnyEvent, Decision
from ledger.rules.calendar import Unit
from ledger.rules.policy import Policy, assess
from projections.metricsindex import RECOMMENDABLE
from projections.state import CustomerState, RequestState
from projections.views import calendar_of, customer_pattern

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # text, int, bigint, float, bool, ts, date, json
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    key: tuple[str, ...]  # what identifies a row (a row is replaced by its key)
    columns: tuple[Column, ...]
    source: str  # which topic feeds it (documentation)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _cols(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


_SCORE = (
    ("fit", "int", "F.A.I.R. fit, 0-5"),
    ("advantage", "int", "F.A.I.R. advantage, 0-5"),
    ("integrity", "int", "F.A.I.R. integrity, 0-5"),
    ("readiness", "int", "F.A.I.R. readiness, 0-5"),
    ("adjusted_score", "float", "the F.A.I.R. average after the risk multipliers"),
    ("recommendation", "text", "what the policy recommends for that score"),
)

EVENTS = Table(
    "events",
    "Every accepted event, once, as recorded in ledger.events.",
    ("event_id",),
    _cols(
        ("event_id", "text", "the event's UUID"),
        ("type", "text", "intake, score, decision, revisit or escalation"),
        ("subject_id", "text", "its key in ledger.events: the request, or the customer"),
        ("request_id", "text", "the request it concerns (null: an escalation without one)"),
        ("occurred_at", "ts", "when it happened, as the CRM said"),
        ("source", "text", "the system that sent it"),
        ("actor", "text", "who did it, when the CRM said"),
        ("correlation_id", "text", "the CRM's correlation id, when given"),
        ("log_partition", "int", "its partition of ledger.events"),
        ("log_offset", "bigint", "its offset in that partition"),
        ("payload", "json", "the event as recorded (envelope and data; payload->'data')"),
    ),
    "ledger.events",
)

REQUESTS = Table(
    "requests",
    "One row per request: where it stands now (the pipeline's columns and more).",
    ("request_id",),
    _cols(
        ("request_id", "text", "the request"),
        ("kind", "text", "the intake's kind (partner_proposal, customer_demand, ...)"),
        ("title", "text", "the intake's title"),
        ("owner", "text", "who owns the decision"),
        ("partner_id", "text", "the partner it involves"),
        ("customer_id", "text", "the customer it involves"),
        ("vendor_id", "text", "the vendor it involves"),
        ("value_estimate", "float", "the intake's value estimate"),
        ("icp_overlap_pct", "float", "the intake's ICP overlap, percent"),
        ("status", "text", "open (undecided or reopened by a revisit) or decided"),
        ("stage", "text", "intake, scored or decided"),
        ("opened_at", "ts", "first contact"),
        ("clock_started_at", "ts", "when the decision clock started: first contact or revisit"),
        ("decision_due_at", "ts", "open: when it becomes overdue (LEDGER_OVERDUE_DAYS/UNIT)"),
        *_SCORE,
        ("scored_at", "ts", "when the latest score was given"),
        ("last_outcome", "text", "the latest decision's outcome"),
        ("last_decided_at", "ts", "when the latest decision was made"),
        ("hold_due_at", "ts", "a standing hold: when it becomes overdue"),
        ("revisit_on", "date", "the standing decision's revisit date"),
        ("review_on", "date", "a provisional yes: the pilot's review date"),
        ("revisits", "int", "how many times it was reopened"),
        ("decisions", "int", "how many decisions it has had"),
        ("events", "int", "how many events it has had"),
        ("updated_at", "ts", "its latest event's occurred_at"),
    ),
    "ledger.events",
)

DECISIONS = Table(
    "decisions",
    "One row per decision, with the score and recommendation it was made against.",
    ("event_id",),
    _cols(
        ("event_id", "text", "the decision event"),
        ("request_id", "text", "the request decided"),
        ("decided_at", "ts", "when"),
        ("outcome", "text", "provisional_yes, conditional_no, decline, hold, scaled, withdrawn"),
        ("rationale", "text", "the why, as written"),
        ("kind", "text", "the request's kind"),
        ("owner", "text", "the request's owner"),
        ("partner_id", "text", "the request's partner"),
        ("customer_id", "text", "the request's customer"),
        ("cycle_started_at", "ts", "when this decision's clock started (first contact or revisit)"),
        ("first_of_cycle", "bool", "the first decision of its cycle (what time-to-decide counts)"),
        ("business_days_to_decide", "int", "business days from the cycle's start to it"),
        ("within_target", "bool", "first of its cycle and within the target business days"),
        *_SCORE,
        ("overrode_recommendation", "bool", "went against the recommendation (null: none)"),
        ("revisit_on", "date", "the revisit date it set"),
        ("review_on", "date", "a provisional yes: the pilot's review date"),
        ("redirect", "text", "a decline: the redirect offered"),
        ("checklist", "json", "a conditional no: the readiness checklist"),
        ("pilot", "json", "a provisional yes: the pilot"),
    ),
    "ledger.events",
)

ESCALATIONS = Table(
    "escalations",
    "One row per customer escalation against a partner.",
    ("event_id",),
    _cols(
        ("event_id", "text", "the escalation event"),
        ("customer_id", "text", "the customer who escalated"),
        ("partner_id", "text", "the partner escalated against"),
        ("request_id", "text", "the request it concerns, if any"),
        ("kind", "text", "what kind of escalation"),
        ("severity", "int", "1-5"),
        ("summary", "text", "the CRM's summary"),
        ("occurred_at", "ts", "when"),
    ),
    "ledger.events",
)

CUSTOMERS = Table(
    "customers",
    "One row per customer with escalations: the abuse pattern, flagged and why.",
    ("customer_id",),
    _cols(
        ("customer_id", "text", "the customer"),
        ("escalations", "int", "how many escalations"),
        ("distinct_partners", "int", "partners escalated against"),
        ("partners_fired", "int", "partners it fired"),
        ("abusive_conduct", "int", "escalations of kind abusive_conduct"),
        ("severity_score", "int", "the sum of the severities"),
        ("last_escalation_at", "ts", "its latest escalation"),
        ("flagged", "bool", "the abuse thresholds hold"),
        ("reasons", "json", "which thresholds, in words (a JSON array)"),
        ("by_kind", "json", "escalations by kind (a JSON object)"),
    ),
    "ledger.events",
)

ALERTS = Table(
    "alerts",
    "Every alert raised (ledger.alerts), once per crossing.",
    ("alert_id",),
    _cols(
        ("alert_id", "text", "the crossing's stable id"),
        ("kind", "text", "decision_overdue, hold_overdue, revisit_overdue, ..."),
        ("subject_id", "text", "the request or customer"),
        ("raised_at", "ts", "when it was raised"),
        ("details", "json", "the alert's details"),
    ),
    "ledger.alerts",
)

DELIVERIES = Table(
    "alert_deliveries",
    "Each alert's delivery to each webhook: its latest status.",
    ("alert_id", "webhook"),
    _cols(
        ("alert_id", "text", "the alert"),
        ("webhook", "text", "the webhook's URL"),
        ("status", "text", "delivered, failed, or given_up"),
        ("attempts", "int", "POSTs so far"),
        ("http_status", "int", "the last HTTP status"),
        ("error", "text", "the last error"),
        ("recorded_at", "ts", "when the status was recorded"),
    ),
    "ledger.alert-deliveries",
)

REJECTIONS = Table(
    "rejections",
    "Every inbox message that was not accepted (ledger.rejected), with why.",
    ("log_partition", "log_offset"),
    _cols(
        ("log_partition", "int", "its partition of ledger.rejected"),
        ("log_offset", "bigint", "its offset there"),
        ("rejected_at", "ts", "when"),
        ("code", "text", "the first reason's code (schema, out_of_range, ...)"),
        ("field", "text", "the first reason's field"),
        ("message", "text", "the first reason, in words"),
        ("reasons", "json", "every reason (a JSON array of {code, field, message})"),
        ("inbox_partition", "int", "where the message was in ledger.inbox"),
        ("inbox_offset", "bigint", "its offset there"),
        ("inbox_key", "text", "its key"),
        ("original_text", "text", "the message as sent (null: not UTF-8)"),
        ("original_bytes", "int", "its size"),
        ("original_sha256", "text", "its SHA-256"),
    ),
    "ledger.rejected",
)

TABLES: tuple[Table, ...] = (
    EVENTS, REQUESTS, DECISIONS, ESCALATIONS, CUSTOMERS, ALERTS, DELIVERIES, REJECTIONS,
)  # fmt: skip


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _score(score: Any, intake: Any, policy: Policy) -> tuple[Any, ...]:
    if score is None:
        return (None,) * 6
    result = assess(score, intake, policy.fair)
    return (
        score.fit, score.advantage, score.integrity, score.readiness,
        result.adjusted, result.recommendation,
    )  # fmt: skip


def event_row(event: AnyEvent, partition: int, offset: int, raw: bytes) -> Row:
    data: Any = event.data
    subject = data.customer_id if event.type == "escalation" else data.request_id
    return (
        str(event.event_id), event.type, subject, data.request_id, event.occurred_at,
        event.source, event.actor, event.correlation_id, partition, offset, raw.decode(),
    )  # fmt: skip


def escalation_row(event: AnyEvent) -> Row:
    e: Any = event.data
    return (
        str(event.event_id), e.customer_id, e.partner_id, e.request_id, e.kind, e.severity,
        e.summary, event.occurred_at,
    )  # fmt: skip


def request_rows(s: RequestState, policy: Policy, days: int, unit: Unit) -> tuple[Row, list[Row]]:
    """The request's row and one row per decision."""
    cal = calendar_of(policy)
    intake = s.intake
    last = s.last_decision
    due = cal.deadline(s.clock_started_at, days, unit) if s.status == "open" else None
    hold_due = None
    if s.status == "decided" and last is not None and last.outcome == "hold":
        hold_due = cal.deadline(last.occurred_at, days, unit)
    request = (
        s.request_id, intake.kind, intake.title, intake.owner, intake.partner_id,
        intake.customer_id, intake.vendor_id, intake.value_estimate, intake.icp_overlap_pct,
        s.status, s.stage, s.opened_at, s.clock_started_at, due,
        *_score(s.score, intake, policy), s.scored_at,
        last.outcome if last else None, last.occurred_at if last else None, hold_due,
        last.revisit_on if last else None, last.review_on if last else None,
        s.revisits, len(s.decisions), len(s.history), max(e.occurred_at for e in s.history),
    )  # fmt: skip
    data = {str(e.event_id): e.data for e in s.history if isinstance(e, Decision)}
    target = policy.decisions.target_business_days
    rows = []
    cycles: set[datetime] = set()
    for d in s.decisions:
        first = d.cycle_started_at not in cycles
        cycles.add(d.cycle_started_at)
        days_to = cal.business_days_between(d.cycle_started_at.date(), d.occurred_at.date())
        scored = _score(d.score, intake, policy)
        overrode = None
        if d.outcome in RECOMMENDABLE and d.score is not None:
            overrode = scored[5] != d.outcome
        body = data.get(d.event_id)
        rows.append(
            (
                d.event_id,
                s.request_id,
                d.occurred_at,
                d.outcome,
                d.rationale,
                intake.kind,
                intake.owner,
                intake.partner_id,
                intake.customer_id,
                d.cycle_started_at,
                first,
                days_to,
                first and days_to <= target,
                *scored,
                overrode,
                d.revisit_on,
                d.review_on,
                body.redirect if body else None,
                _json(list(body.checklist)) if body and body.checklist else None,
                _json(body.pilot.model_dump(mode="json")) if body and body.pilot else None,
            )  # fmt: skip
        )
    return request, rows


def customer_row(c: CustomerState, policy: Policy) -> Row:
    p = customer_pattern(c, policy)
    last = max((e.occurred_at for e in c.escalations), default=None)
    return (
        c.customer_id, p["escalations"], p["distinct_partners"], p["partners_fired"],
        p["by_kind"].get("abusive_conduct", 0), p["severity_score"], last, p["flagged"],
        _json(p["reasons"]), _json(p["by_kind"]),
    )  # fmt: skip


# The side topics (alerts, deliveries, rejections) are written by the ledger, but any
# Kafka client can write to them: whatever a record holds, its row is typed as its
# table says (a value of another type is null) and building it never raises.
INT_MAX = 2**31 - 1


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value)
        return instant if instant.tzinfo is not None else None
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, limit: int = INT_MAX) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= limit
    return value if ok else None


def alert_row(raw: bytes) -> Row | None:
    """A record of ledger.alerts (None: not an alert, left out)."""
    a = _parsed(raw)
    if a is None or not isinstance(a.get("alert_id"), str):
        return None
    return (
        a["alert_id"], _text(a.get("kind")), _text(a.get("subject_id")),
        _instant(a.get("raised_at")), _json(a.get("details")),
    )  # fmt: skip


def delivery_row(raw: bytes) -> Row | None:
    d = _parsed(raw)
    if d is None or not isinstance(d.get("alert_id"), str) or not _text(d.get("webhook")):
        return None
    return (
        d["alert_id"], d["webhook"], _text(d.get("status")), _int(d.get("attempts")),
        _int(d.get("http_status")), _text(d.get("error")), _instant(d.get("at")),
    )  # fmt: skip


def rejection_row(raw: bytes, partition: int, offset: int) -> Row:
    """A record of ledger.rejected; one the ledger did not write still gets a row."""
    r = _parsed(raw) or {}
    reasons = r.get("reasons")
    reasons = reasons if isinstance(reasons, list) else []
    first = reasons[0] if reasons and isinstance(reasons[0], dict) else {}
    inbox = r.get("inbox")
    inbox = inbox if isinstance(inbox, dict) else {}
    text = _text(r.get("original_text"))
    if text is None and r.get("original_base64") is None and not r:
        text = raw.decode("utf-8", "replace")
    size = _int(r.get("original_bytes"))
    return (
        partition, offset, _instant(r.get("rejected_at")), _text(first.get("code")),
        _text(first.get("field")), _text(first.get("message")), _json(reasons),
        _int(inbox.get("partition")), _int(inbox.get("offset"), 2**63 - 1),
        _text(inbox.get("key")), text, len(raw) if size is None else size,
        _text(r.get("original_sha256")),
    )  # fmt: skip


def _parsed(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def column_docs() -> Iterator[tuple[str, str, str, str]]:
    """(table, column, type, meaning) for every column: the README's reference."""
    for table in TABLES:
        for column in table.columns:
            yield table.name, column.name, column.type, column.doc
