"""The partner's side of the ledger (pure views over request and customer states).

A partner appears in a request's intake (`partner_id`) and in escalations customers raise
against it. For one partner: its requests and their decisions, the escalations against
it and which of those customers are flagged as abusive, and the support asks it sent us
(requests of kind `vendor_support`) with how long we took to answer.

**At risk** (our definition): a partner is at risk when a customer flagged for abusing
partners escalated against it and has not fired it yet (no `partner_fired` escalation from
that customer against it), or an open request pairs it with a flagged customer: the
channel manager can still step in.

A support ask is **answered** by its first decision; the time to answer is counted in
business days from first contact, against the policy's decision target.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ledger.rules.policy import Policy
from projections.metricsindex import ratio
from projections.state import CustomerState, RequestState
from projections.views import (
    calendar_of,
    customer_pattern,
    known_customers,
    known_requests,
    percentile,
    support_asks,
)

Row = dict[str, Any]


def _flagged(customers: Iterable[CustomerState], policy: Policy) -> set[str]:
    return {c.customer_id for c in customers if customer_pattern(c, policy)["flagged"]}


def partner_ids(requests: Iterable[RequestState], customers: Iterable[CustomerState]) -> set[str]:
    """Every partner the ledger has heard of."""
    ids = {r.intake.partner_id for r in requests if r.intake.partner_id}
    return ids | {e.partner_id for c in customers for e in c.escalations}


def partner_view(
    partner_id: str,
    requests: Iterable[RequestState],
    customers: Iterable[CustomerState],
    as_of: datetime,
    policy: Policy,
    flagged: set[str] | None = None,
) -> Row | None:
    """One partner as of `as_of` (None: the ledger had not heard of it by then);
    `flagged`: the customers flagged then, if the caller already knows them."""
    known = [r for r in known_requests(requests, as_of) if r.intake.partner_id == partner_id]
    people = known_customers(customers, as_of)
    if flagged is None:
        flagged = _flagged(people, policy)
    escalations = sorted(
        (
            (c.customer_id, e)
            for c in people
            for e in c.escalations
            if e.partner_id == partner_id
        ),
        key=lambda ce: (ce[1].occurred_at, ce[1].event_id),
    )  # fmt: skip
    if not known and not escalations:
        return None
    return {
        "partner_id": partner_id,
        **_risk(partner_id, known, escalations, flagged),
        "requests": [_request_row(r) for r in sorted(known, key=lambda r: r.opened_at)],
        "escalations": [
            {
                "customer_id": customer,
                "kind": e.kind,
                "severity": e.severity,
                "occurred_at": e.occurred_at.isoformat(),
                "request_id": e.request_id,
                "customer_flagged": customer in flagged,
            }
            for customer, e in escalations
        ],
        "support_asks": _support(known, as_of, policy),
    }


def partners(
    requests: Iterable[RequestState],
    customers: Iterable[CustomerState],
    as_of: datetime,
    policy: Policy,
    at_risk: bool | None = None,
) -> list[Row]:
    """One summary row per partner, at risk first, then by id."""
    states = known_requests(requests, as_of)
    people = known_customers(customers, as_of)
    flagged = _flagged(people, policy)
    rows = []
    for pid in sorted(partner_ids(states, people)):
        view = partner_view(pid, states, people, as_of, policy, flagged)
        if view is None:
            continue
        row = {
            "partner_id": pid,
            "at_risk": view["at_risk"],
            "flagged_customers": view["flagged_customers"],
            "requests": len(view["requests"]),
            "open_requests": sum(1 for r in view["requests"] if r["status"] == "open"),
            "escalations": len(view["escalations"]),
            "support_asks": view["support_asks"]["count"],
            "support_unanswered": view["support_asks"]["unanswered"],
        }
        if at_risk is None or row["at_risk"] == at_risk:
            rows.append(row)
    return sorted(rows, key=lambda r: (not r["at_risk"], r["partner_id"]))


def _risk(
    partner_id: str,
    known: list[RequestState],
    escalations: list[tuple[str, Any]],
    flagged: set[str],
) -> Row:
    against = {customer for customer, _ in escalations if customer in flagged}
    fired_by = {customer for customer, e in escalations if e.kind == "partner_fired"}
    serving = {
        r.intake.customer_id
        for r in known
        if r.status == "open" and r.intake.customer_id in flagged
    }  # fmt: skip
    still_serving = (against - fired_by) | serving
    return {
        "at_risk": bool(still_serving),
        "flagged_customers": sorted(against | serving),
        "still_serving_flagged": sorted(still_serving),
    }


def _request_row(r: RequestState) -> Row:
    last = r.last_decision
    return {
        "request_id": r.request_id,
        "kind": r.intake.kind,
        "title": r.intake.title,
        "customer_id": r.intake.customer_id,
        "status": r.status,
        "opened_at": r.opened_at.isoformat(),
        "last_outcome": last.outcome if last else None,
        "decided_at": last.occurred_at.isoformat() if last else None,
    }


def _support(known: list[RequestState], as_of: datetime, policy: Policy) -> Row:
    cal = calendar_of(policy)
    target = policy.decisions.target_business_days
    asks = support_asks(known, policy)
    days = [a.business_days for a in asks if a.business_days is not None]
    waiting = [
        (int(cal.age(a.state.opened_at, as_of, "business")), a.state.request_id)
        for a in asks
        if a.business_days is None
    ]
    oldest = max(waiting, default=None)
    return {
        "count": len(asks),
        "answered": len(days),
        "unanswered": len(waiting),
        "median_business_days_to_answer": percentile(days, 0.5),
        "share_answered_within_target": ratio(sum(1 for d in days if d <= target), len(days)),
        "target_business_days": target,
        "oldest_unanswered": (
            {"request_id": oldest[1], "business_days_waiting": oldest[0]} if oldest else None
        ),
    }
