"""Read models answered from folded states, as of an explicit instant (CONTRACT 5 and 6).

Pure functions of (states, as_of, policy): no clock, no I/O. Rows are plain dicts ready
for JSON or CSV, sorted so that the same states always give the same list, whichever
worker or how many workers folded them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from ledger.rules.calendar import BusinessCalendar, Unit, instant_key
from ledger.rules.policy import Policy, assess
from projections.metricsindex import Totals, part_of
from projections.state import CustomerState, RequestFacts, RequestState, request_as_of

Row = dict[str, Any]


def calendar_of(policy: Policy) -> BusinessCalendar:
    return BusinessCalendar.of(policy.decisions.holidays)


def known_requests(states: Iterable[RequestState], as_of: datetime) -> list[RequestState]:
    """Each request as the ledger knew it at `as_of` (requests not yet taken in are left out)."""
    return list(each_known_request(states, as_of))


def each_known_request(states: Iterable[RequestState], as_of: datetime) -> Iterator[RequestState]:
    """`known_requests` one at a time, for a view that reads each once: a walk over a big
    ledger then holds one parsed state at a time, not all of them (an API answering ten
    lists as of a past instant held 1.5 GB)."""
    for state in states:
        known = request_as_of(state, as_of)
        if known is not None:
            yield known


def known_customers(customers: Iterable[CustomerState], as_of: datetime) -> list[CustomerState]:
    return [c for c in (c.as_of(as_of) for c in customers) if c is not None]


def latest_assessment(state: RequestState, policy: Policy) -> tuple[float | None, str | None]:
    """The adjusted F.A.I.R. score of a request's latest score, and what it recommends."""
    if state.score is None:
        return None, None
    result = assess(state.score, state.intake, policy.fair)
    return result.adjusted, result.recommendation


def pipeline(
    states: Iterable[RequestState],
    as_of: datetime,
    policy: Policy,
    owner: str | None = None,
    kind: str | None = None,
    stage: str | None = None,
) -> list[Row]:
    """Open requests (undecided, or reopened), oldest first (by the instant their
    decision clock started, whatever its offset; ties by request)."""
    cal = calendar_of(policy)
    rows = []
    for s in each_known_request(states, as_of):
        if s.status != "open":
            continue
        if (owner and s.intake.owner != owner) or (kind and s.intake.kind != kind):
            continue
        if stage and s.stage != stage:
            continue
        adjusted, recommendation = latest_assessment(s, policy)
        i = s.intake
        started = s.clock_started_at
        row = pipeline_row(s.request_id, i.kind, i.title, i.owner, s.stage, started, as_of,
                           cal, adjusted, recommendation)  # fmt: skip
        rows.append(row)
    return sorted(rows, key=pipeline_order)


def pipeline_order(row: Row) -> tuple[int, str]:
    """A pipeline row's place: its decision clock's start as an instant (`opened_at`'s
    text in different offsets does not sort as the instants do), then its request."""
    opened = row.get("opened_key")  # an index's order carries it (ledger.api.app)
    if opened is None:
        opened = text_instant_key(row["opened_at"])
    return (opened, row["request_id"])


NOT_AN_INSTANT = -(1 << 62)  # sorts before every instant


def text_instant_key(text: Any) -> int:
    """`instant_key` of an RFC 3339 text with its offset: how lists order instants they
    hold as text (texts in different offsets do not sort as their instants do); one
    that is not such a text (an alert read off the topic, say) sorts first."""
    try:
        return instant_key(datetime.fromisoformat(text))
    except (TypeError, ValueError, OverflowError):
        return NOT_AN_INSTANT


def pipeline_row(
    request_id: str,
    kind: str,
    title: str,
    owner: str,
    stage: str,
    started: datetime,
    as_of: datetime,
    cal: BusinessCalendar,
    adjusted: float | None,
    recommendation: str | None,
    opened: str | None = None,
) -> Row:
    """One open request's row of the pipeline (`started`: when its decision clock did;
    `opened`: that instant's `isoformat()`, when the caller has it)."""
    return {
        "request_id": request_id,
        "kind": kind,
        "title": title,
        "owner": owner,
        "stage": stage,
        "opened_at": started.isoformat() if opened is None else opened,
        "age_days": math.floor(cal.age(started, as_of, "calendar")),
        "business_age_days": int(cal.age(started, as_of, "business")),
        "latest_adjusted_score": adjusted,
        "recommendation": recommendation,
    }


def days_over(cal: BusinessCalendar, deadline: datetime, as_of: datetime, unit: Unit) -> float:
    if unit == "business":
        return float(cal.business_days_between(deadline.date(), as_of.date()))
    return round((as_of - deadline).total_seconds() / 86400, 2)


def overdue_reasons(
    s: RequestState | RequestFacts, as_of: datetime, policy: Policy, days: int, unit: Unit
) -> list[tuple[str, datetime, float]]:
    """(reason, since, days_overdue) for each of the four request rules that holds."""
    cal = calendar_of(policy)
    found: list[tuple[str, datetime, float]] = []
    if s.status == "open":
        deadline = cal.deadline(s.clock_started_at, days, unit)
        if as_of > deadline:
            found.append(("decision_overdue", deadline, days_over(cal, deadline, as_of, unit)))
        return found
    last = s.last_decision
    if last is None:
        return found
    if last.outcome == "hold":
        deadline = cal.deadline(last.occurred_at, days, unit)
        if as_of > deadline:
            found.append(("hold_overdue", deadline, days_over(cal, deadline, as_of, unit)))
    if last.outcome in ("conditional_no", "hold") and last.revisit_on is not None:
        found.extend(past_date("revisit_overdue", last.revisit_on, as_of))
    if last.outcome == "provisional_yes" and last.review_on is not None:
        found.extend(past_date("pilot_review_overdue", last.review_on, as_of))
    return found


def past_date(reason: str, day: date, as_of: datetime) -> list[tuple[str, datetime, float]]:
    """Overdue from the day after `day` (a date is due through its whole day)."""
    if as_of.date() <= day:
        return []
    since = datetime.combine(day + timedelta(days=1), datetime.min.time(), as_of.tzinfo)
    return [(reason, since, float((as_of.date() - day).days))]


def overdue(
    states: Iterable[RequestState],
    as_of: datetime,
    policy: Policy,
    days: int | None = None,
    unit: Unit = "calendar",
) -> list[Row]:
    """Overdue "maybes", most overdue first."""
    threshold = policy.decisions.overdue_days if days is None else days
    rows = []
    for s in each_known_request(states, as_of):
        for reason, since, over in overdue_reasons(s, as_of, policy, threshold, unit):
            rows.append(
                {
                    "request_id": s.request_id,
                    "reason": reason,
                    "owner": s.intake.owner,
                    "title": s.intake.title,
                    "overdue_since": since.isoformat(),
                    "days_overdue": over,
                }
            )
    return sorted(rows, key=lambda r: (-r["days_overdue"], r["request_id"], r["reason"]))


def customer_pattern(c: CustomerState, policy: Policy) -> Row:
    """One customer's escalation pattern, flagged by the abuse thresholds."""
    by_kind = Counter(e.kind for e in c.escalations)
    partners = {e.partner_id for e in c.escalations}
    fired = {e.partner_id for e in c.escalations if e.kind == "partner_fired"}
    rules = policy.abuse
    reasons = []
    if len(fired) >= rules.partners_fired_at_least:
        reasons.append(f"{len(fired)} partners fired (>= {rules.partners_fired_at_least})")
    if len(partners) >= rules.distinct_partners_at_least:
        reasons.append(
            f"escalated against {len(partners)} partners (>= {rules.distinct_partners_at_least})"
        )
    abusive = by_kind.get("abusive_conduct", 0)
    if abusive >= rules.abusive_conduct_at_least:
        reasons.append(f"{abusive} abusive_conduct (>= {rules.abusive_conduct_at_least})")
    last = max((e.occurred_at for e in c.escalations), default=None)
    return {
        "customer_id": c.customer_id,
        "escalations": len(c.escalations),
        "by_kind": dict(sorted(by_kind.items())),
        "distinct_partners": len(partners),
        "partners_fired": len(fired),
        "severity_score": sum(e.severity for e in c.escalations),
        "last_escalation_at": last.isoformat() if last else None,
        "flagged": bool(reasons),
        "reasons": reasons,
    }


def abuse(
    customers: Iterable[CustomerState],
    as_of: datetime,
    policy: Policy,
    flagged: bool | None = None,
) -> list[Row]:
    """Per-customer patterns as of `as_of`, flagged and most severe first."""
    rows = [customer_pattern(c, policy) for c in known_customers(customers, as_of)]
    if flagged is not None:
        rows = [r for r in rows if r["flagged"] == flagged]
    return sorted(rows, key=lambda r: (not r["flagged"], -r["severity_score"], r["customer_id"]))


def percentile(values: list[int], q: float) -> float | None:
    """Linear-interpolation percentile (q in 0..1) of a non-empty list, else None."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def metrics(states: Iterable[RequestState], as_of: datetime, policy: Policy) -> Row:
    """Decision metrics over every decision up to `as_of`: the parts of the requests known
    then, added up (`projections.metricsindex`, which the API keeps as states change)."""
    totals = Totals(policy)
    for s in each_known_request(states, as_of):
        totals.add(part_of(s, policy))
    return totals.row(as_of)


class SupportAsk(NamedTuple):
    """A partner's support ask (a `vendor_support` request) and our answer to it: its first
    decision, and the business days from first contact to it (None: not answered)."""

    state: RequestState
    answered_at: datetime | None
    business_days: int | None


def support_asks(states: Iterable[RequestState], policy: Policy) -> list[SupportAsk]:
    """The support asks among `states`, measured like the vendors partners complain about."""
    cal = calendar_of(policy)
    asks = []
    for s in states:
        if s.intake.kind != "vendor_support":
            continue
        if not s.decisions:
            asks.append(SupportAsk(s, None, None))
            continue
        first = s.decisions[0].occurred_at
        days = cal.business_days_between(s.opened_at.date(), first.date())
        asks.append(SupportAsk(s, first, days))
    return asks


def request_view(state: RequestState, as_of: datetime, policy: Policy) -> Row | None:
    """One request's state and full timeline as of `as_of` (None: not taken in by then)."""
    s = request_as_of(state, as_of)
    if s is None:
        return None
    adjusted, recommendation = latest_assessment(s, policy)
    last = s.last_decision
    return {
        "request_id": s.request_id,
        "kind": s.intake.kind,
        "title": s.intake.title,
        "owner": s.intake.owner,
        "partner_id": s.intake.partner_id,
        "customer_id": s.intake.customer_id,
        "status": s.status,
        "stage": s.stage,
        "opened_at": s.opened_at.isoformat(),
        "clock_started_at": s.clock_started_at.isoformat(),
        "latest_adjusted_score": adjusted,
        "recommendation": recommendation,
        "last_outcome": last.outcome if last else None,
        "revisits": s.revisits,
        "overdue": [
            {"reason": r, "days_overdue": d}
            for r, _, d in overdue_reasons(
                s, as_of, policy, policy.decisions.overdue_days, "calendar"
            )
        ],
        "timeline": [e.model_dump(mode="json") for e in s.timeline],
    }


def customer_view(customer: CustomerState, as_of: datetime, policy: Policy) -> Row | None:
    """One customer's pattern and escalation history as of `as_of`."""
    c = customer.as_of(as_of)
    if c is None:
        return None
    return {
        **customer_pattern(c, policy),
        "history": [e.model_dump(mode="json") for e in c.escalations],
    }
