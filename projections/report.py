"""The monthly "Nos & Whys": what partner ops decided in a month, and why (pure figures).

`nos_and_whys(requests, customers, month, policy)` returns plain data; `ledger.api.report`
renders it as a self-contained HTML page (charts inline) and as Markdown. Definitions:

- a month is [first day 00:00 UTC, first day of the next month); "at month end" is its end;
- days to decide: business days from the start of a decision cycle (first contact or the
  last revisit) to its first decision, counted for cycles whose first decision falls in
  the month, against the policy's target (10);
- the whys: for the month's decisions, the F.A.I.R. dimensions scored 2 or less in the
  score at the time, the red flags, the hard and soft stops the policy derives, and the
  redirect offered with each decline;
- open maybes: requests undecided at month end (stage intake or scored), oldest first;
- revisits: the month's revisits, the days since the decision they reopened, and how many
  came back qualified (the next decision after the revisit is a provisional yes or scaled);
- pilots: provisional yeses whose success window (90 days) ended in the month or that
  scaled in the month, and the share scaled within the window;
- overrides: the month's decisions that went against the F.A.I.R. recommendation;
- customers flagged for abusing partners at month end, with the partners affected;
- support asks (`vendor_support`) first answered in the month, in business days.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from events.schema import Decision
from ledger.rules.policy import Policy, assess
from projections.metricsindex import RECOMMENDABLE, ratio
from projections.state import CustomerState, RequestState
from projections.views import (
    abuse,
    calendar_of,
    known_customers,
    known_requests,
    percentile,
    support_asks,
    text_instant_key,
)

Row = dict[str, Any]
WEAK = 2


def _p(values: list[int], q: float) -> float | None:
    found = percentile(values, q)
    return None if found is None else round(found, 1)


TREND_MONTHS = 6


def stop_label(stop: str) -> str:
    """A stop as the report counts it, by rule: "ask: exclusivity" reads "asks for
    exclusivity", "icp_overlap_pct 31 < 40" reads "ICP overlap below 40%" (whatever the
    overlap), a red flag keeps its text."""
    if stop.startswith("ask: "):
        return f"asks for {stop.removeprefix('ask: ')}"
    if stop.startswith("icp_overlap_pct ") and " < " in stop:
        return f"ICP overlap below {stop.rsplit(' < ', 1)[1]}%"
    return stop


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """`YYYY-MM` -> [start, end) in UTC; ValueError if it is not a month."""
    try:
        first = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError("must be a month as YYYY-MM") from None
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first, nxt


def _month_of(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m")


def _previous(month: str, n: int) -> list[str]:
    start, _ = month_bounds(month)
    months = [month]
    for _ in range(n - 1):
        start = (start - timedelta(days=1)).replace(day=1)
        months.append(start.strftime("%Y-%m"))
    return list(reversed(months))


def _days_to_decide(states: list[RequestState], policy: Policy) -> dict[str, list[int]]:
    """Per month of the decision: business days of each cycle's first decision."""
    cal = calendar_of(policy)
    out: dict[str, list[int]] = {}
    for s in states:
        seen: set[datetime] = set()
        for d in s.decisions:
            if d.cycle_started_at in seen:
                continue
            seen.add(d.cycle_started_at)
            days = cal.business_days_between(d.cycle_started_at.date(), d.occurred_at.date())
            out.setdefault(_month_of(d.occurred_at), []).append(days)
    return out


def nos_and_whys(
    requests: Iterable[RequestState],
    customers: Iterable[CustomerState],
    month: str,
    policy: Policy,
) -> Row:
    start, end = month_bounds(month)
    as_of = end - timedelta(microseconds=1)
    states = known_requests(requests, as_of)
    people = known_customers(customers, as_of)
    cal = calendar_of(policy)
    target = policy.decisions.target_business_days

    outcomes: Counter[str] = Counter()
    weak: Counter[str] = Counter()
    red_flags: Counter[str] = Counter()
    hard_stops: Counter[str] = Counter()
    soft_stops: Counter[str] = Counter()
    redirects: Counter[str] = Counter()
    overrides: list[Row] = []
    for s in states:
        data = {str(e.event_id): e.data for e in s.history if isinstance(e, Decision)}
        for d in s.decisions:
            if not start <= d.occurred_at < end:
                continue
            outcomes[d.outcome] += 1
            if d.outcome == "decline":
                redirect = data[d.event_id].redirect if d.event_id in data else None
                redirects[redirect or "none recorded"] += 1
            if d.score is None:
                continue
            for dim in ("fit", "advantage", "integrity", "readiness"):
                if getattr(d.score, dim) <= WEAK:
                    weak[dim] += 1
            red_flags.update(f.flag for f in d.score.red_flags)
            assessed = assess(d.score, s.intake, policy.fair)
            hard_stops.update(stop_label(stop) for stop in assessed.hard_stops)
            soft_stops.update(stop_label(stop) for stop in assessed.soft_stops)
            if d.outcome in RECOMMENDABLE and assessed.recommendation != d.outcome:
                overrides.append(
                    {
                        "request_id": s.request_id,
                        "title": s.intake.title,
                        "owner": s.intake.owner,
                        "decided_at": d.occurred_at.isoformat(),
                        "outcome": d.outcome,
                        "recommendation": assessed.recommendation,
                        "rationale": d.rationale,
                    }
                )

    by_month = _days_to_decide(states, policy)
    days = by_month.get(month, [])
    trend = [
        {
            "month": m,
            "median_business_days": _p(by_month.get(m, []), 0.5),
            "p90_business_days": _p(by_month.get(m, []), 0.9),
            "cycles": len(by_month.get(m, [])),
        }
        for m in _previous(month, TREND_MONTHS)
    ]

    maybes: list[Row] = sorted(
        (
            {
                "request_id": s.request_id,
                "owner": s.intake.owner,
                "title": s.intake.title,
                "stage": s.stage,
                "business_days_open": int(cal.age(s.clock_started_at, as_of, "business")),
            }
            for s in states
            if s.status == "open"
        ),
        key=lambda r: (-int(r["business_days_open"]), str(r["request_id"])),
    )
    by_owner = Counter(r["owner"] for r in maybes)

    return {
        "month": month,
        "from": start.isoformat(),
        "until": end.isoformat(),
        "decisions": sum(outcomes.values()),
        "by_outcome": dict(sorted(outcomes.items())),
        "whys": {
            "weak_dimensions": dict(weak.most_common()),
            "red_flags": dict(red_flags.most_common()),
            "hard_stops": dict(hard_stops.most_common()),
            "soft_stops": dict(soft_stops.most_common()),
            "redirects_with_declines": dict(redirects.most_common()),
        },
        "days_to_decide": {
            "target_business_days": target,
            "cycles": len(days),
            "median": _p(days, 0.5),
            "p90": _p(days, 0.9),
            "share_within_target": ratio(sum(1 for d in days if d <= target), len(days)),
            "trend": trend,
        },
        "open_maybes": {
            "count": len(maybes),
            "by_owner": dict(sorted(by_owner.items(), key=lambda kv: (-kv[1], kv[0]))),
            "oldest_first": maybes,
        },
        "revisits": _revisits(states, start, end),
        "pilots": _pilots(states, start, end, policy),
        "overrides": sorted(
            overrides, key=lambda r: (text_instant_key(r["decided_at"]), r["request_id"])
        ),
        "flagged_customers": [
            {
                "customer_id": row["customer_id"],
                "reasons": row["reasons"],
                "partners_affected": sorted(
                    {
                        e.partner_id
                        for c in people
                        if c.customer_id == row["customer_id"]
                        for e in c.escalations
                    }
                ),  # fmt: skip
            }
            for row in abuse(people, as_of, policy, flagged=True)
        ],
        "support_asks": _support(states, start, end, policy),
    }


def _revisits(states: list[RequestState], start: datetime, end: datetime) -> Row:
    days: list[int] = []
    qualified = 0
    count = 0
    for s in states:
        for entry in s.history:
            if entry.type != "revisit" or not start <= entry.occurred_at < end:
                continue
            count += 1
            before = [d.occurred_at for d in s.decisions if d.occurred_at <= entry.occurred_at]
            if before:
                days.append((entry.occurred_at - max(before)).days)
            after = [d for d in s.decisions if d.occurred_at > entry.occurred_at]
            if after and after[0].outcome in ("provisional_yes", "scaled"):
                qualified += 1
    decided = sum(1 for s in states if s.decisions)
    return {
        "count": count,
        "rate": ratio(count, decided),  # the month's revisits per request decided so far
        "median_days_since_decision": _p(days, 0.5),
        "came_back_qualified": qualified,
    }


def _pilots(states: list[RequestState], start: datetime, end: datetime, policy: Policy) -> Row:
    window = timedelta(days=policy.decisions.pilot_success_days)
    judged = scaled = 0
    for s in states:
        for yes in (d for d in s.decisions if d.outcome == "provisional_yes"):
            scaled_at = next(
                (
                    d.occurred_at
                    for d in s.decisions
                    if d.outcome == "scaled"
                    and yes.occurred_at <= d.occurred_at <= yes.occurred_at + window
                ),
                None,
            )  # fmt: skip
            closes = scaled_at or yes.occurred_at + window
            if start <= closes < end:
                judged += 1
                scaled += scaled_at is not None
    return {
        "window_days": window.days,
        "judged": judged,
        "scaled": scaled,
        "success_rate": ratio(scaled, judged),
    }


def _support(states: list[RequestState], start: datetime, end: datetime, policy: Policy) -> Row:
    target = policy.decisions.target_business_days
    asks = support_asks(states, policy)
    days = [
        a.business_days
        for a in asks
        if a.business_days is not None and a.answered_at and start <= a.answered_at < end
    ]
    waiting = [a for a in asks if a.business_days is None]
    return {
        "answered": len(days),
        "median_business_days": _p(days, 0.5),
        "share_within_target": ratio(sum(1 for d in days if d <= target), len(days)),
        "unanswered_at_month_end": len(waiting),
    }
