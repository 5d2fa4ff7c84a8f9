"""Builders for event payloads (plain JSON-able dicts), deterministic by a name."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

_NS = uuid.UUID("6f1c2a3e-0000-4000-8000-00000000beef")


def eid(name: str) -> str:
    """A stable UUID for a readable name, so tests can refer to events by name."""
    return str(uuid.uuid5(_NS, name))


def envelope(kind: str, data: dict[str, Any], *, name: str, at: str) -> dict[str, Any]:
    return {
        "event_id": eid(name),
        "type": kind,
        "schema_version": 1,
        "occurred_at": at,
        "source": "crm-test",
        "actor": "tester",
        "data": data,
    }


def intake(
    request: str, *, name: str | None = None, at: str = "2026-03-02T09:00:00Z", **data: Any
) -> dict[str, Any]:
    body = {
        "request_id": request,
        "kind": "partner_proposal",
        "title": f"Proposal {request}",
        "owner": "owner-1",
        **data,
    }
    return envelope("intake", body, name=name or f"intake-{request}", at=at)


def score(
    request: str,
    fit: int = 4,
    advantage: int = 4,
    integrity: int = 4,
    readiness: int = 4,
    *,
    name: str | None = None,
    at: str = "2026-03-03T09:00:00Z",
    **data: Any,
) -> dict[str, Any]:
    body = {
        "request_id": request,
        "fit": fit,
        "advantage": advantage,
        "integrity": integrity,
        "readiness": readiness,
        **data,
    }
    return envelope("score", body, name=name or f"score-{request}", at=at)


def decision(
    request: str,
    outcome: str = "decline",
    *,
    name: str | None = None,
    at: str = "2026-03-04T09:00:00Z",
    **data: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request,
        "outcome": outcome,
        "rationale": f"because {outcome}",
    }
    if outcome == "conditional_no":
        body.update(checklist=["a plan"], revisit_on="2026-04-01")
    if outcome == "hold":
        body.update(revisit_on="2026-04-01")
    if outcome == "provisional_yes":
        body.update(pilot={"scope": "two deals", "success_metric": "one closed"})
    body.update(data)
    return envelope("decision", body, name=name or f"decision-{request}-{outcome}", at=at)


def revisit(
    request: str,
    trigger: str = "scheduled",
    *,
    name: str | None = None,
    at: str = "2026-04-01T09:00:00Z",
    **data: Any,
) -> dict[str, Any]:
    body = {"request_id": request, "trigger": trigger, **data}
    return envelope("revisit", body, name=name or f"revisit-{request}", at=at)


def escalation(
    customer: str,
    partner: str,
    kind: str = "complaint",
    severity: int = 3,
    *,
    name: str | None = None,
    at: str = "2026-03-05T09:00:00Z",
    **data: Any,
) -> dict[str, Any]:
    body = {
        "customer_id": customer,
        "partner_id": partner,
        "kind": kind,
        "severity": severity,
        **data,
    }
    return envelope("escalation", body, name=name or f"esc-{customer}-{partner}-{kind}", at=at)


def raw(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)
