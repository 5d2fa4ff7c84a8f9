"""Alert rules (CONTRACT section 6): which alerts the read models call for, as of an instant.

Pure. An alert is raised once per *crossing*: each crossing has a stable identity (its
episode), and `alert_id` is derived from (kind, subject, episode), so evaluating the
same states again, on another worker or after a restart, yields the same ids.

Episodes: `decision_overdue` - the open cycle (first contact, or the revisit that
reopened the request); `hold_overdue`, `revisit_overdue`, `pilot_review_overdue` - the
decision they concern; `customer_abuse_flagged` - the customer (flags only grow).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from events.schema import AnyEvent
from ledger.rules.calendar import Unit
from ledger.rules.policy import Policy
from projections.state import (
    CustomerState,
    RequestFacts,
    RequestState,
    apply_customer,
    apply_request,
    newest_event_at,
    request_as_of,
)
from projections.views import calendar_of, customer_pattern, overdue_reasons

ALERT_NAMESPACE = uuid.UUID("a1e7a1e7-0000-4000-8000-00000000a1e7")
Alert = dict[str, Any]


def alert_id(kind: str, subject: str, episode: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{subject}|{episode}"))


def request_alerts(
    state: RequestState | RequestFacts, as_of: datetime, policy: Policy, days: int, unit: Unit
) -> list[Alert]:
    """The alerts a request calls for at `as_of` (raised or not). Its facts
    (`RequestFacts`) say the same as its state, as of an instant not before its newest
    event."""
    if isinstance(state, RequestFacts):
        _not_before(state, as_of)
    else:
        known = request_as_of(state, as_of)
        if known is None:
            return []
        state = known
    out: list[Alert] = []
    last = state.last_decision
    for reason, since, over in overdue_reasons(state, as_of, policy, days, unit):
        # decision_overdue: the open cycle; the others concern the standing decision
        if reason == "decision_overdue" or last is None:
            episode = state.clock_started_at.isoformat()
        else:
            episode = last.event_id
        out.append(
            {
                "alert_id": alert_id(reason, state.request_id, episode),
                "kind": reason,
                "subject_id": state.request_id,
                "raised_at": as_of.isoformat(),
                "details": {
                    "owner": state.intake.owner,
                    "title": state.intake.title,
                    "overdue_since": since.isoformat(),
                    "days_overdue": over,
                    "threshold": f"{days} {unit} days",
                    "episode": episode,
                },
            }
        )
    return out


def customer_alerts(state: CustomerState, as_of: datetime, policy: Policy) -> list[Alert]:
    """`customer_abuse_flagged` once the customer's pattern is flagged as of `as_of`."""
    known = state.as_of(as_of)
    if known is None:
        return []
    pattern = customer_pattern(known, policy)
    if not pattern["flagged"]:
        return []
    return [
        {
            "alert_id": alert_id("customer_abuse_flagged", state.customer_id, "flagged"),
            "kind": "customer_abuse_flagged",
            "subject_id": state.customer_id,
            "raised_at": as_of.isoformat(),
            "details": {k: v for k, v in pattern.items() if k != "customer_id"},
        }
    ]


JUST_AFTER = timedelta(microseconds=1)  # "overdue" holds strictly after a deadline


def _not_before(facts: RequestFacts, as_of: datetime) -> None:
    if as_of < facts.newest_at:
        raise ValueError(f"{facts.request_id}: its facts hold only from its newest event")


def next_check(
    state: RequestState | RequestFacts | CustomerState,
    after: datetime,
    policy: Policy,
    days: int,
    unit: Unit,
) -> datetime | None:
    """The earliest instant after `after` at which checking `state` (`request_alerts` or
    `customer_alerts`) could find a crossing that checking it at `after` does not: when a
    deadline of the state as known at `after` passes, or when a later-dated event of its
    history comes into view. None: nothing can change without a new event. The alert
    timer checks a state only then (a deadline index), not every state every tick."""
    if isinstance(state, CustomerState):
        return min((e.occurred_at for e in state.escalations if e.occurred_at > after),
                   default=None)  # fmt: skip
    view: RequestState | RequestFacts | None = state  # the usual case: nothing later-dated
    candidates: list[datetime] = []
    if isinstance(state, RequestFacts):
        _not_before(state, after)
    elif newest_event_at(state) > after:
        candidates = [e.occurred_at for e in state.history if e.occurred_at > after]
        view = request_as_of(state, after)
    if view is not None:
        cal = calendar_of(policy)
        last = view.last_decision
        if view.status == "open":
            candidates.append(cal.deadline(view.clock_started_at, days, unit) + JUST_AFTER)
        elif last is not None:
            if last.outcome == "hold":
                candidates.append(cal.deadline(last.occurred_at, days, unit) + JUST_AFTER)
            if last.outcome in ("conditional_no", "hold") and last.revisit_on is not None:
                candidates.append(_day_after(last.revisit_on, after))
            if last.outcome == "provisional_yes" and last.review_on is not None:
                candidates.append(_day_after(last.review_on, after))
    return min((c for c in candidates if c > after), default=None)


def _day_after(day: date, like: datetime) -> datetime:
    """The first instant past `day`, in `like`'s offset (a date is due through its day)."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), like.tzinfo)


def new_alerts(candidates: list[Alert], raised: set[str]) -> list[Alert]:
    """The candidates not raised before (each crossing once)."""
    return [a for a in candidates if a["alert_id"] not in raised]


def event_alerts(
    prior: RequestState | CustomerState | None,
    posterior: RequestState | CustomerState | None,
    at: datetime,
    policy: Policy,
    days: int,
    unit: Unit,
) -> list[Alert]:
    """What one event reveals, as of its own time: crossings the subject made before it
    (the prior state), and those its new state makes at once (the posterior state)."""
    out: list[Alert] = []
    for state in (prior, posterior):
        if isinstance(state, RequestState):
            out.extend(request_alerts(state, at, policy, days, unit))
        elif isinstance(state, CustomerState):
            out.extend(customer_alerts(state, at, policy))
    return out


def alerts_of_log(
    events: Iterable[AnyEvent], now: datetime, policy: Policy, days: int, unit: Unit
) -> dict[str, Alert]:
    """Every alert a log raises, by alert_id (first raise wins): each event checked as of
    its own time, then every state as of `now`. The reference the worker is held to."""
    requests: dict[str, RequestState] = {}
    customers: dict[str, CustomerState] = {}
    raised: dict[str, Alert] = {}

    def keep(alerts: list[Alert]) -> None:
        for alert in alerts:
            raised.setdefault(alert["alert_id"], alert)

    for event in events:
        at = min(event.occurred_at, now)
        if event.type == "escalation":
            key = event.data.customer_id
            prior_c = customers.get(key)
            posterior_c = apply_customer(prior_c, event)
            if posterior_c is not None and posterior_c is not prior_c:
                customers[key] = posterior_c
                keep(event_alerts(None, posterior_c, at, policy, days, unit))
            continue
        key = event.data.request_id
        prior_r = requests.get(key)
        posterior_r = apply_request(prior_r, event)
        if posterior_r is not None and posterior_r is not prior_r:
            requests[key] = posterior_r
            keep(event_alerts(prior_r, posterior_r, at, policy, days, unit))
    for state in requests.values():
        keep(request_alerts(state, now, policy, days, unit))
    for customer in customers.values():
        keep(customer_alerts(customer, now, policy))
    return raised
